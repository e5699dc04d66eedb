"""edgecls on the device: LiteRT runtime, pre/post-processing, sources and the live loop.

Never imports TensorFlow or Keras: it must run with only ``pip install edgecls[edge]``.
"""

__version__ = "0.1.0"

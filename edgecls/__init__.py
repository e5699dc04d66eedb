"""The ``edgecls`` command: one entry point over trainer, converter, edge_app and benchmarks."""

from edge_app import __version__

__all__ = ["__version__"]

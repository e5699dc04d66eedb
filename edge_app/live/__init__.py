"""``edgecls run``, the composition: its settings, the loop, the live model swap, and the app that wires a
source, a model and the outputs of ``frames``, ``kiosk`` and ``link`` together."""

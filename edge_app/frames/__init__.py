"""Frames in and results out: sources (one module per kind), feeds, smoothing, and the sink interface with the
outputs that only write what the loop hands them (log, window, saved frames)."""

"""Sinks: where the live loop's results go (see :mod:`edge_app.frames.sinks.base`)."""

from edge_app.frames.sinks.base import UNCERTAIN, UNKNOWN, UNKNOWN_TEXT, Result, Sink, StopRequested
from edge_app.frames.sinks.jsonl import JsonlLog
from edge_app.frames.sinks.saver import FrameSaver
from edge_app.frames.sinks.window import OverlayWindow, draw_overlay
from edge_app.runtime.errors import DisplayError

__all__ = ["UNCERTAIN", "UNKNOWN", "UNKNOWN_TEXT", "DisplayError", "FrameSaver", "JsonlLog", "OverlayWindow", "Result", "Sink", "StopRequested",
           "draw_overlay"]

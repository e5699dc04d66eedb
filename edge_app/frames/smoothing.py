"""Small, allocation-free helpers of the live loop: score smoothing and a frame-rate meter."""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class Smoother:
    """The mean of the last ``n`` score vectors, so a label does not flicker between frames.

    A ring of preallocated rows and a running sum: one subtraction and one addition per frame,
    whatever ``n`` is. ``n = 1`` passes scores through.

    Example:
        >>> smoother = Smoother(5, num_classes=3)
        >>> smoother.update(np.array([0.2, 0.7, 0.1], np.float32))
        array([0.2, 0.7, 0.1], dtype=float32)
    """

    def __init__(self, n: int, num_classes: int):
        if n < 1:
            raise ValueError(f"smoothing window must be 1 or more, got {n}")
        self.n = n
        self._ring = np.zeros((n, num_classes), np.float32)
        # float64: a months-long run adds and subtracts billions of times; float32 would drift.
        self._sum = np.zeros(num_classes, np.float64)
        self._out = np.zeros(num_classes, np.float32)
        self._next = 0
        self._count = 0

    def update(self, scores: np.ndarray) -> np.ndarray:
        """Add one frame's scores; return the smoothed scores (a buffer reused by the next call)."""
        if self.n == 1:
            return scores
        row = self._ring[self._next]
        self._sum -= row
        row[:] = scores
        self._sum += row
        self._next = (self._next + 1) % self.n
        self._count = min(self._count + 1, self.n)
        np.divide(self._sum, self._count, out=self._out, casting="unsafe")
        return self._out

    def reset(self) -> None:
        """Forget the past (after the camera was lost: old frames say nothing about the new scene)."""
        self._ring[:] = 0
        self._sum[:] = 0
        self._next = self._count = 0


class RateMeter:
    """Events per second over the last ``window`` events (the FPS shown and logged)."""

    def __init__(self, window: int = 30):
        self._times: deque[float] = deque(maxlen=window)

    def tick(self, now: float | None = None) -> float:
        self._times.append(time.monotonic() if now is None else now)
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

"""The callbacks every training stage shares: LR schedule, early stop, best checkpoint, timing, CSV.

One :class:`TrainingCallbacks` lives for the whole run, so the best checkpoint and the history span
both stages (the frozen head stage may fit a head-only model; the checkpoint still saves the full one).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainer.config import TrainConfig

MONITOR = "val_loss"
# With --field the validation set holds a few field photos (repeated to their share): their loss swings with every
# confidently wrong photo (noisy labels), and choosing the epoch on it kept the first fine-tuning epoch and lost lab
# accuracy; accuracy counts each photo once.
FIELD_MONITOR = "val_accuracy"
log = logging.getLogger("edgecls")


class StopRequest:
    """Ctrl-C or SIGTERM during training: stop at the next batch boundary, then keep the best model.

    A KeyboardInterrupt raised at an arbitrary point inside ``model.fit`` can land while TensorFlow
    is mid-call and corrupt its state (seen here: "free(): invalid next size", SIGABRT, about one
    interrupt in ten). So the first signal only sets :attr:`exception`; a callback stops Keras
    after the current batch. A second signal raises at once, for a user who means it.
    """

    def __init__(self):
        self.exception: BaseException | None = None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        from edge_app.runtime.errors import Interrupted

        def handle(signum, frame):
            if self.exception is not None:
                raise self.exception
            self.exception = Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()
            log.warning("\nstopping after this batch and keeping the best model so far "
                        "(press Ctrl-C again to quit at once)")

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class TrainingCallbacks:
    """The callbacks shared by every stage: best checkpoint, early stop, LR schedule, CSV, timing."""

    def __init__(self, config: TrainConfig, model, best_path: Path, csv_path: Path):
        import keras

        class FullModelCheckpoint(keras.callbacks.ModelCheckpoint):
            # The frozen stage may fit a head-only model; the checkpoint always saves the full one.
            def set_model(self, _model):
                super().set_model(model)

        outer = self

        class StageLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.history.append(
                    {
                        "epoch": epoch,
                        **(logs or {}),
                        "stage": outer.stage,
                        "epoch_s": round(time.perf_counter() - self.start, 3),
                    }
                )

        class StageCSVLogger(keras.callbacks.CSVLogger):
            # The stage and epoch time go to the CSV only: Keras's own callbacks expect numbers in logs.
            def on_epoch_end(self, epoch, logs=None):
                last = outer.history[-1]
                super().on_epoch_end(
                    epoch, {**(logs or {}), "stage": last["stage"], "epoch_s": last["epoch_s"]}
                )

        stop = self.stop = StopRequest()

        class StopOnRequest(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if stop.exception is not None:
                    self.model.stop_training = True

            on_train_begin = on_epoch_begin = on_epoch_end = lambda self, *_, **__: self.on_train_batch_end(0)

        self.stop_on_request = StopOnRequest()
        self.stage = ""
        self.history: list[dict] = []
        # Weights only: a full .keras save costs seconds per epoch, more than a head epoch on cached features.
        self.monitor = FIELD_MONITOR if config.field is not None else MONITOR
        self.mode = "max" if self.monitor == FIELD_MONITOR else "min"
        self.checkpoint = FullModelCheckpoint(
            str(best_path), monitor=self.monitor, mode=self.mode, save_best_only=True, save_weights_only=True,
            verbose=0
        )
        self.stage_log = StageLog()
        self.csv = StageCSVLogger(str(csv_path), append=True)
        self.patience = config.patience

    def for_stage(self, stage: str) -> list:
        import keras

        self.stage = stage
        # Order matters: StageLog times the epoch including the checkpoint, then the CSV logger reads it.
        return [
            keras.callbacks.ReduceLROnPlateau(
                self.monitor, factor=0.3, patience=max(1, self.patience // 2), min_lr=1e-7, mode=self.mode, verbose=1
            ),
            keras.callbacks.EarlyStopping(
                self.monitor, patience=self.patience, restore_best_weights=True, mode=self.mode, verbose=1
            ),
            self.checkpoint,
            self.stage_log,
            self.csv,
            self.stop_on_request,
        ]

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def median_epoch_s(self, stage: str) -> float:
        times = [h["epoch_s"] for h in self.history if h["stage"] == stage]
        return round(float(np.median(times)), 3) if times else 0.0

    def best_epoch(self) -> int | None:
        if self.monitor == FIELD_MONITOR:
            scores = [h.get(self.monitor, -np.inf) for h in self.history]
            return int(np.argmax(scores)) + 1 if scores else None
        losses = [h.get(self.monitor, np.inf) for h in self.history]
        return int(np.argmin(losses)) + 1 if losses else None

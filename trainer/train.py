"""``run(config) -> Path``: scan, train in one or two stages, evaluate, and publish the run directory.

Pretrained weights (``imagenet`` or a file) train in two stages: the head on a frozen backbone,
then the top of the backbone with a lower learning rate (batch-norm stays in inference mode
throughout). While the backbone is frozen its output for an image never changes, so unless
augmentation needs fresh passes the backbone runs once over train and val and the head trains on
those cached features (the classic TF "retrain" bottleneck cache): an epoch then costs
milliseconds instead of a full forward pass. From scratch (``--weights none``) is one stage with
every layer training and a batch-norm momentum suited to short runs.

Everything is written into a temporary folder beside ``--out`` and renamed into place at the end;
Ctrl-C (or SIGTERM) stops training, evaluates the best model so far, publishes it and re-raises.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.runtime import cards, rundir
from trainer.callbacks import TrainingCallbacks
from trainer.config import TrainConfig, TrainError
from trainer.datasets import Dataset, batched, cache_spec, decoded_dataset, log_summary, make_augmenter, scan
from trainer.publish import disk_errors, publish

log = logging.getLogger("edgecls")


def run(config: TrainConfig) -> Path:
    """Train one model as ``config`` says and write the run directory; return its path.

    Raises:
        TrainError: bad data, settings, weights or output folder (exit code 2 on the CLI).
        KeyboardInterrupt: after Ctrl-C/SIGTERM, once the best model so far is published.

    Example:
        >>> from trainer.config import TrainConfig
        >>> run_dir = run(TrainConfig("data/potato", "runs/potato", weights="none", epochs=3))
        >>> (run_dir / "metrics.json").exists()
        True
    """
    dataset = scan(config.data_dir, config.val_split, config.test_split, config.seed, config.val_from)
    log_summary(dataset)
    class_cards = _read_cards(config, dataset.labels)  # a bad cards file fails now, not after an hour of training
    work = config.out.parent / f".{config.out.name}.partial"
    if work.exists():
        shutil.rmtree(work)  # left by a run that was killed hard; ours, by its name
    work.mkdir(parents=True)
    interrupted: BaseException | None = None
    try:
        with disk_errors(config.out):
            interrupted = _train_and_report(config, dataset, work, class_cards)
            publish(work, config.out, config.overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if interrupted is not None:
        log.warning("training was interrupted; %s holds the best model so far", config.out)
        raise interrupted
    return config.out


@dataclass
class Pipelines:
    """The tf.data views of one run's splits, decoded once (cached) and shared by every stage."""

    train_plain: object  # batched, in order: the frozen stage's feature pass
    train_fit: object  # shuffled and augmented: what fit() trains on
    val: object
    test: object
    y: dict[str, np.ndarray]
    class_weight: dict[int, float] | None


def _read_cards(config: TrainConfig, labels: list[str]) -> dict:
    """The class cards of ``--classes`` (or ``DATA/classes.yaml``), checked against the classes; ``{}`` without."""
    if config.classes is None:
        return {}
    found = cards.read_cards(config.classes, labels)
    log.info("class cards for %d of %d classes (%s) from %s: kept in %s, embedded in every converted model",
             len(found), len(labels), ", ".join(cards.languages(found)) or "none", config.classes, rundir.CONFIG)
    return found


def _train_and_report(config: TrainConfig, dataset: Dataset, work: Path,
                      class_cards: dict | None = None) -> BaseException | None:
    """Build, fit (keeping the best epoch), evaluate and write the run into ``work``; returns an interrupt, if any."""
    from trainer.backbones import build_classifier

    _seed(config.seed)
    scratch = work / ".scratch"
    scratch.mkdir()
    field = None
    if config.field is not None:
        from trainer.field import read_field

        field = read_field(config.field, config.field_map, config.field_weight, dataset.labels,
                           len(dataset.splits["train"]), config.seed)
    model, backbone = build_classifier(config, len(dataset.labels))
    # A bad --fine-tune-at must fail now, not after the frozen stage has run for an hour.
    fine_tune_from = _fine_tune_from(backbone, config) if config.pretrained and config.fine_tune_epochs else 0
    data = _pipelines(config, dataset, scratch, field)
    best_path = scratch / "best.weights.h5"
    callbacks = TrainingCallbacks(config, model, best_path, work / rundir.HISTORY)
    started = time.perf_counter()
    timing, interrupted = _fit_keeping_the_best(config, model, backbone, fine_tune_from, data, callbacks, best_path)
    timing["fit_s"] = round(time.perf_counter() - started, 1)  # every stage: decoding, feature pass, epochs
    _restore_best(model, best_path)
    metrics, test_probs = _evaluate(model, data, dataset.labels)
    if field is not None:
        from trainer.field import evaluate_field

        metrics["field"] = evaluate_field(model, config, field, dataset.labels)
    metrics |= {"timing": timing, "epochs_trained": callbacks.epochs_done, "best_epoch": callbacks.best_epoch(),
                "interrupted": interrupted is not None}
    from trainer import report

    _save_inference_model(model, work / rundir.KERAS_MODEL)
    report.write_run(work, config, dataset, metrics, model, test_probs, field, class_cards)
    shutil.rmtree(scratch, ignore_errors=True)
    return interrupted


def _seed(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if not tf.config.list_physical_devices("GPU"):
        # Same seed, same data -> same metrics on CPU. On a GPU some kernels have no deterministic
        # version (TF would raise), so there only the split and initialization are reproducible.
        tf.config.experimental.enable_op_determinism()


def _pipelines(config: TrainConfig, dataset: Dataset, scratch: Path, field=None) -> Pipelines:
    size = int(config.image_size)
    paths = {s: dataset.paths(s) for s in ("train", "val", "test")}
    y = {s: dataset.targets(s) for s in ("train", "val", "test")}
    if field is not None:  # repeated to their share of the training and of the validation the best epoch is chosen on
        for s in ("train", "val"):
            paths[s] = paths[s] + field.paths(s, repeated=True)
            y[s] = np.concatenate([y[s], np.array(field.targets(s, repeated=True), np.int64)])

    def decoded(split: str):
        return decoded_dataset(paths[split], y[split], size, cache_spec(len(y[split]), size, scratch, split))

    train = decoded("train")
    if not config.augment:
        augment = None
    elif field is not None:
        from trainer.field import field_augmenter

        augment = field_augmenter(config.seed)
    else:
        augment = make_augmenter(config.seed)
    return Pipelines(
        train_plain=batched(train, config.batch_size),
        train_fit=batched(train, config.batch_size, shuffle=True, seed=config.seed, augment=augment),
        val=batched(decoded("val"), config.batch_size),
        test=batched(decoded("test"), config.batch_size),
        y=y,
        class_weight=_class_weights(y["train"], len(dataset.labels)) if config.class_weights == "auto" else None,
    )


def _fit_keeping_the_best(config, model, backbone, fine_tune_from: int, data: Pipelines, callbacks,
                          best_path: Path) -> tuple[dict, BaseException | None]:
    """Fit every stage; Ctrl-C/SIGTERM keeps the best checkpoint so far when there is one."""
    interrupted = None
    # Live progress bars on a terminal; one line per epoch in logs and CI (verbose=2).
    verbose = 0 if log.getEffectiveLevel() > logging.INFO else 1 if sys.stderr.isatty() else 2
    # Keras prints progress bars on stdout; ours is for results, so they go to stderr.
    with contextlib.redirect_stdout(sys.stderr), callbacks.stop.installed():
        try:
            timing = _fit_stages(config, model, backbone, fine_tune_from, data, callbacks, verbose)
        except KeyboardInterrupt as e:
            print(file=sys.stderr)  # end the progress bar's line
            if not best_path.exists():
                raise
            log.warning("interrupted: stopping training and keeping the best model so far")
            interrupted, timing = e, {}
        except BaseException:
            print(file=sys.stderr)
            raise
        if callbacks.stop.exception is not None:  # stopped at a batch boundary by Ctrl-C/SIGTERM
            if not best_path.exists():
                raise callbacks.stop.exception
            interrupted = callbacks.stop.exception
    return timing, interrupted


def _restore_best(model, best_path: Path) -> None:
    """Load the best epoch over both stages, not just the last stage's restore."""
    if not best_path.exists():
        return
    try:
        with warnings.catch_warnings():
            # The checkpoint may predate this stage's optimizer; only layer weights matter here.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(best_path)
    except Exception as e:  # a Ctrl-C in the middle of writing it
        log.warning("the best checkpoint is unreadable (%s); keeping the weights of the last epoch", e)


def _evaluate(model, data: Pipelines, labels: list[str]) -> tuple[dict, np.ndarray]:
    """Test metrics with the validation chance check, and the test scores (for the report's plots)."""
    from trainer import report

    y = data.y
    log.info("evaluating on %d validation and %d test images", len(y["val"]), len(y["test"]))
    probs = {"val": model.predict(data.val, verbose=0), "test": model.predict(data.test, verbose=0)}
    metrics = report.metrics(y["test"], probs["test"], labels)
    metrics["validation"] = v = report.chance_check(y["val"], probs["val"], labels)
    if not v["learned"]:
        log.warning("%s\nWARNING: THE MODEL DID NOT LEARN. Validation accuracy %.1f%% is no better than always "
                    "answering %r (%.1f%%).\n%s", "!" * 78, 100 * v["accuracy"], v["majority_label"],
                    100 * v["chance_accuracy"], "!" * 78)
    return metrics, probs["test"]


def _fit_stages(config, model, backbone, fine_tune_from: int, data: Pipelines, callbacks, verbose: int) -> dict:
    """Run the frozen and fine-tuning stages (pretrained) or the single from-scratch stage."""
    timing: dict = {}
    fit = dict(validation_data=data.val, class_weight=data.class_weight, shuffle=False, verbose=verbose)
    if not config.pretrained:
        _compile(model, config.learning_rate)
        model.fit(data.train_fit, epochs=config.epochs, callbacks=callbacks.for_stage("scratch"), **fit)
        return {"scratch_epoch_s": callbacks.median_epoch_s("scratch")}
    if config.epochs:
        backbone.trainable = False
        if _use_feature_cache(config):
            timing |= _fit_head_on_features(model, data, config, callbacks, verbose)
        else:
            _compile(model, config.learning_rate)
            model.fit(data.train_fit, epochs=config.epochs, callbacks=callbacks.for_stage("frozen"), **fit)
            timing["feature_cache"] = False
        timing["frozen_epoch_s"] = callbacks.median_epoch_s("frozen")
    if config.fine_tune_epochs and callbacks.stop.exception is None:
        first = fine_tune_from
        _unfreeze(backbone, first)
        log.info(
            "fine-tuning %s from layer %d (%s) at learning rate %g",
            config.backbone,
            first,
            backbone.layers[first].name,
            config.fine_tune_learning_rate,
        )
        _compile(model, config.fine_tune_learning_rate)
        done = callbacks.epochs_done
        model.fit(
            data.train_fit,
            initial_epoch=done,
            epochs=done + config.fine_tune_epochs,
            callbacks=callbacks.for_stage("fine_tune"),
            **fit,
        )
        timing["fine_tune_epoch_s"] = callbacks.median_epoch_s("fine_tune")
    return timing


def _save_inference_model(model, path: Path) -> None:
    """Save without optimizer state: a third of the size, and what the converter wants."""
    import keras

    inference = keras.models.clone_model(model)
    inference.set_weights(model.get_weights())
    inference.save(path)


def _use_feature_cache(config: TrainConfig) -> bool:
    if config.feature_cache != "auto":
        return config.feature_cache == "on"
    # Augmentation is applied while fine-tuning; a run without fine-tuning that asked for it gets
    # fresh (augmented) backbone passes in the frozen stage instead of cached features.
    return not (config.augment and config.fine_tune_epochs == 0)


def _fit_head_on_features(model, data: Pipelines, config, callbacks, verbose: int) -> dict:
    import keras

    y = data.y

    features = keras.Model(model.input, model.get_layer("dropout").input)
    start = time.perf_counter()
    log.info(
        "frozen backbone: computing its features once for %d train + %d val images",
        len(y["train"]),
        len(y["val"]),
    )
    f_train = features.predict(data.train_plain, verbose=verbose)
    f_val = features.predict(data.val, verbose=0)
    extract_s = time.perf_counter() - start
    head_in = keras.Input(f_train.shape[1:], name="features")
    head = keras.Model(
        head_in, model.get_layer("predictions")(model.get_layer("dropout")(head_in)), name="head"
    )
    _compile(head, config.learning_rate)
    head.fit(
        f_train,
        y["train"],
        batch_size=config.batch_size,
        epochs=config.epochs,
        shuffle=True,
        validation_data=(f_val, y["val"]),
        class_weight=data.class_weight,
        callbacks=callbacks.for_stage("frozen"),
        verbose=verbose,
    )
    epoch_s = callbacks.median_epoch_s("frozen")
    log.info(
        "head trained on cached features: %.2f s/epoch after one %.1f s backbone pass over train+val",
        epoch_s,
        extract_s,
    )
    return {"feature_extraction_s": round(extract_s, 3), "feature_cache": True}


def _fine_tune_from(backbone, config: TrainConfig) -> int:
    """The index of the first backbone layer ``--fine-tune-at`` names (a layer name or an index)."""
    from trainer.backbones import get_backbone

    names = [layer.name for layer in backbone.layers]
    at = (
        config.fine_tune_at if config.fine_tune_at is not None else get_backbone(config.backbone).fine_tune_at
    )
    example = next((n for n in names[len(names) * 2 // 3 :] if "expand" in n or "conv" in n), names[-1])
    if at is None:
        return 0
    if at.lstrip("-").isdigit():
        if not -len(names) <= int(at) < len(names):
            raise TrainError(
                f"--fine-tune-at {at}: {config.backbone} has {len(names)} layers; give an index "
                f"below {len(names)} or a layer name such as {example!r}"
            )
        return int(at) % len(names)
    if at not in names:
        raise TrainError(
            f"--fine-tune-at {at!r} is not a layer of {config.backbone}; give an index "
            f"(0-{len(names) - 1}) or a layer name such as {example!r}"
        )
    return names.index(at)


def _unfreeze(backbone, first: int) -> None:
    import keras

    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        # Batch-norm stays frozen: a few thousand images would wreck the ImageNet statistics.
        layer.trainable = i >= first and not isinstance(layer, keras.layers.BatchNormalization)


def _compile(model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def _class_weights(targets: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights (sklearn's "balanced"), so a 10:1 class counts as much as the rest."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=targets)
    return {i: float(w) for i, w in enumerate(weights)}

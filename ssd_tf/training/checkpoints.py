"""Which checkpoint a command uses, and the best evaluated checkpoint kept apart from the rolling last N.

Layout of a model directory::

    checkpoints/ckpt-N.*           the last ``keep_checkpoints`` training checkpoints (CheckpointManager)
    best/best.json                 {"metric", "mode", "value", "step", "checkpoint": "best/step_N/ckpt-N", ...}
    best/step_N/ckpt-N.*           the model weights that scored it (written from memory right after the
                                   evaluation, so they are exactly the evaluated weights and survive the
                                   rolling deletion of ``checkpoints/``)

``.training.lock`` is held (``flock``) by the process training into the directory (the chief of a multi-worker
run) for as long as it trains: a second training into the same directory stops at once instead of interleaving
checkpoints with the first. The kernel releases it when the process ends, however it ends.

``--checkpoint``: empty -> the latest of ``checkpoints/``; ``best`` -> the one ``best/best.json`` names; else a
checkpoint prefix (``.../ckpt-1200``), a directory holding a ``checkpoint`` state file, or a Keras weights file
(``FILE.weights.h5``, e.g. converted reference weights: ``python -m ssd_tf.weights.convert``).

Best-checkpoint updates are crash-safe: the new weights go to a fresh ``best/step_N[_k]/`` directory, then
``best.json`` is replaced atomically, then the superseded directories are removed; an interrupted run leaves
``best.json`` naming complete weights (a leftover directory is removed by the next update).

Direction (``--best_metric_mode``): ``auto`` is ``max`` for AP / AR / mAP keys (``COCO/AP``, ``VOC/mAP``,
``per_class_AP/<name>``), ``min`` for loss keys; other keys need an explicit ``max`` or ``min``.
No TensorFlow is imported except to write weights.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket

BEST_DIR = "best"
BEST_JSON = "best.json"
MODES = ("auto", "max", "min")


class CheckpointError(ValueError):
    """A checkpoint request that cannot be met; the message says what to do (the CLI exits 2)."""


# ----------------------------------------------------------------------------------------------- resolving
def _state_checkpoint(directory: str) -> str | None:
    """The latest checkpoint named by ``directory/checkpoint`` (TF's text state file), read without TF."""
    path = os.path.join(directory, "checkpoint")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', f.read(), re.M)
    if not match:
        return None
    prefix = match.group(1)
    return prefix if os.path.isabs(prefix) else os.path.join(directory, prefix)


def is_weights_file(path: str | None) -> bool:
    """A Keras weights file (``.weights.h5``) rather than a training checkpoint."""
    return bool(path) and str(path).endswith(".weights.h5")


def _exists(prefix: str) -> bool:
    return os.path.isfile(prefix + ".index")


def read_best(model_dir: str) -> dict | None:
    """``best/best.json`` as a dict (None when there is none or it is unreadable)."""
    path = os.path.join(model_dir, BEST_DIR, BEST_JSON)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "checkpoint" in record else None


def best_checkpoint(model_dir: str) -> str | None:
    """The prefix of the best checkpoint (None when there is none)."""
    record = read_best(model_dir)
    if record is None:
        return None
    prefix = os.path.join(model_dir, record["checkpoint"])
    return prefix if _exists(prefix) else None


def resolve_checkpoint(model_dir: str, checkpoint: str | None = None) -> str:
    """The checkpoint prefix ``--checkpoint`` asks for (see the module docstring); CheckpointError otherwise."""
    if checkpoint == "best":
        prefix = best_checkpoint(model_dir)
        if prefix is None:
            raise CheckpointError(f"--checkpoint=best: {model_dir} has no best checkpoint ({BEST_DIR}/{BEST_JSON}); "
                                  f"train or evaluate with --best_metric=COCO/AP (or another eval_results.json key) "
                                  f"first, or leave --checkpoint out to use the latest")
        return prefix
    if checkpoint:
        if _exists(checkpoint) or (is_weights_file(checkpoint) and os.path.isfile(checkpoint)):
            return checkpoint
        if os.path.isdir(checkpoint):
            prefix = _state_checkpoint(checkpoint)
            if prefix and _exists(prefix):
                return prefix
        raise CheckpointError(f"--checkpoint={checkpoint}: no such checkpoint (expected a prefix such as "
                              f"{os.path.join(model_dir, 'checkpoints', 'ckpt-100')} with its .index file, a "
                              f"directory of checkpoints, a .weights.h5 file, or 'best')")
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    prefix = _state_checkpoint(ckpt_dir)
    if prefix is None or not _exists(prefix):
        raise CheckpointError(f"no checkpoint in {ckpt_dir}; train first or pass --checkpoint")
    return prefix


# ----------------------------------------------------------------------------------------------- best metric
def metric_direction(metric: str, mode: str = "auto") -> str:
    """``max`` or ``min`` for ``metric`` (see the module docstring); ValueError when ``auto`` cannot tell."""
    if mode not in MODES:
        raise ValueError(f"--best_metric_mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    tokens = [t for t in re.split(r"[/_\s]+", metric) if t]
    if any(re.fullmatch(r"(?i)m?ap|ar|(ap|ar)(\d+|[sml]|max\d+)", t) for t in tokens):
        return "max"
    if any("loss" in t.lower() for t in tokens):
        return "min"
    raise ValueError(f"--best_metric={metric}: cannot tell whether higher or lower is better; pass "
                     f"--best_metric_mode=max or --best_metric_mode=min")


def metric_value(metrics: dict, metric: str) -> float | None:
    """``metrics[metric]``, or a nested value by a ``/`` path (``per_class_AP/circle``); None when absent or
    not a number."""
    value = metrics.get(metric)
    if value is None and "/" in metric:
        node = metrics
        for part in metric.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        value = node
        if value is None:  # a nested dict whose keys contain '/': try every split point
            head, _, rest = metric.partition("/")
            while rest and value is None:
                if isinstance(metrics.get(head), dict):
                    value = metrics[head].get(rest)
                more, _, rest = rest.partition("/")
                head = f"{head}/{more}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _better(value: float, best: float, direction: str) -> bool:
    return value > best if direction == "max" else value < best


def update_best(model_dir: str, model, *, step: int, metrics: dict, metric: str, mode: str = "auto",
                source: str = "", log=print) -> bool:
    """Keeps ``model``'s weights as the best checkpoint when ``metrics[metric]`` beats ``best/best.json`` (or
    there is none yet); returns whether it did. A metric missing from ``metrics`` is reported, not raised."""
    direction = metric_direction(metric, mode)
    value = metric_value(metrics, metric)
    if value is None:
        keys = ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        log(f"--best_metric={metric} is not a number in this evaluation's results (numbers: {keys}); best "
            f"checkpoint not updated")
        return False
    best_dir = os.path.join(model_dir, BEST_DIR)
    current = read_best(model_dir)
    if current is not None and best_checkpoint(model_dir) is not None and current.get("metric") == metric \
            and not _better(value, float(current["value"]), direction):
        _remove_stale(best_dir, current)
        return False

    import tensorflow as tf

    name = f"step_{int(step)}"
    k = 1
    while os.path.exists(os.path.join(best_dir, name)):
        k += 1
        name = f"step_{int(step)}_{k}"
    prefix = os.path.join(best_dir, name, f"ckpt-{int(step)}")
    checkpoint = tf.train.Checkpoint(model=model)
    _ = checkpoint.save_counter  # saved too, so a restore's assert_existing_objects_matched() (run.restore_model) holds
    checkpoint.write(prefix)
    record = {"metric": metric, "mode": direction, "value": value, "step": int(step),
              "checkpoint": os.path.relpath(prefix, model_dir), "source_checkpoint": source,
              "previous": None if current is None else {k: current.get(k) for k in ("value", "step", "checkpoint")}}
    tmp = os.path.join(best_dir, BEST_JSON + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, os.path.join(best_dir, BEST_JSON))
    _remove_stale(best_dir, record)
    before = "" if current is None else f" (was {float(current['value']):.4f} at step {current.get('step')})"
    log(f"Best checkpoint: {metric} = {value:.4f} at step {int(step)}{before} -> {prefix}")
    return True


def _remove_stale(best_dir: str, record: dict) -> None:
    """Removes ``best/`` sub-directories other than the one ``record`` names (superseded or interrupted)."""
    keep = os.path.normpath(record["checkpoint"]).split(os.sep)
    keep = keep[1] if len(keep) > 2 and keep[0] == BEST_DIR else None
    for entry in os.listdir(best_dir):
        path = os.path.join(best_dir, entry)
        if entry != keep and entry.startswith("step_") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


def check_best_metric(metric: str, mode: str, eval_metric: str, class_names=()) -> None:
    """ValueError unless ``metric`` is a key the ``eval_metric`` evaluation writes to eval_results.json and its
    direction is known (checked before training starts, so a typo does not cost a run its best checkpoint)."""
    from ssd_tf.evaluation.coco import STAT_KEYS

    common = ("num_images", "eval_seconds")
    if eval_metric == "coco":
        known = [*STAT_KEYS, *common, *(f"per_class_AP/{n}" for n in class_names)]
    else:
        known = ["VOC/mAP", *common, *(f"VOC/AP/{n}" for n in class_names)]
    if metric not in known:
        shown = ", ".join(known[:14]) + (", ..." if len(known) > 14 else "")
        raise ValueError(f"--best_metric={metric} is not a key of a {eval_metric} evaluation's eval_results.json; "
                         f"choose one of {shown}")
    metric_direction(metric, mode)


class ModelDirBusy(RuntimeError):
    """Another process is training into the model directory."""


@contextlib.contextmanager
def training_lock(model_dir: str):
    """Holds ``model_dir/.training.lock`` while the body runs; ``ModelDirBusy`` (naming the holder) when another
    process holds it. A directory on a filesystem without locks (or a URL such as gs://) is not locked."""
    if "://" in model_dir:
        yield
        return
    import fcntl

    os.makedirs(model_dir, exist_ok=True)
    fd = os.open(os.path.join(model_dir, ".training.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process"
            raise ModelDirBusy(f"{model_dir} is being trained by another process ({holder}); wait for it, stop it, "
                               f"or use another --model_dir") from None
        except OSError:  # no locks on this filesystem: train unlocked, as before
            locked = False
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield  # (outside the except clause: an error of the body is not chained onto the OSError)
    finally:
        os.close(fd)

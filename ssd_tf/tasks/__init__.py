"""Tasks, one per detector family (``tasks/base.py`` holds the protocol and the shared parts).

``build_task(cfg)`` picks the task of ``cfg.model.family``; a family plugs in with one entry here.
"""
from __future__ import annotations

import importlib

_TASKS = {"ssd": ("ssd_tf.tasks.ssd", "SSDTask"), "faster_rcnn": ("ssd_tf.tasks.faster_rcnn", "FasterRCNNTask")}


def task_class(family: str):
    if family not in _TASKS:
        raise ValueError(f"no task for model family {family!r}; known: {sorted(_TASKS)}")
    module, name = _TASKS[family]
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        raise ValueError(f"the {family} task is not available in this version ({e})") from None


def build_task(cfg, global_batch_size: int = 0, log_fn=print):
    """The task of ``cfg.model.family`` for this run."""
    return task_class(cfg.model.family)(cfg, global_batch_size=global_batch_size, log_fn=log_fn)

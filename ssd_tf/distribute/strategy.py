"""tf.distribute strategy factory and chief/worker helpers for the custom training loop.

Call `make_strategy` at program start, before any other TensorFlow op runs: MultiWorkerMirroredStrategy
configures collective ops and fails once the runtime is initialised, and logical CPU devices
(`split_cpu_devices`) can only be set before that too.
"""
from __future__ import annotations

import logging
import os
import shutil

import tensorflow as tf

from ssd_tf.distribute.cluster import Cluster, apply_tf_config

__all__ = ["make_strategy", "split_cpu_devices", "accelerator_type", "is_chief", "worker_index",
           "chief_or_temp_dir", "remove_temp_dir", "STRATEGY_KINDS"]

STRATEGY_KINDS = ("auto", "one_device", "mirrored", "multi_worker")
_NOT_ACCELERATORS = {"CPU", "TPU_SYSTEM"}

log = logging.getLogger(__name__)


def accelerator_type() -> str | None:
    """The first visible non-CPU physical device type ("GPU", or a pluggable device's type), else None."""
    for device in tf.config.list_physical_devices():
        if device.device_type not in _NOT_ACCELERATORS:
            return device.device_type
    return None


def split_cpu_devices(n: int) -> list[str]:
    """Split the host CPU into `n` logical devices (for testing mirrored code on CPU); before TF initialises."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * int(n))
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _resolve_type(device_type: str | None) -> str:
    if device_type is None:
        return accelerator_type() or "CPU"
    device_type = str(device_type).upper()
    if not tf.config.list_physical_devices(device_type):
        visible = sorted({d.device_type for d in tf.config.list_physical_devices()})
        raise ValueError(f"device_type {device_type!r} has no visible device (visible types: {visible})")
    return device_type


def _pick_devices(device_type: str, num_devices: int | None) -> list[str]:
    names = [d.name for d in tf.config.list_logical_devices(device_type)]
    if num_devices is None:
        return names
    if int(num_devices) != num_devices or num_devices < 1:
        raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}")
    if num_devices > len(names):
        raise ValueError(f"num_devices={num_devices} but only {len(names)} {device_type} devices are visible: {names}")
    return names[:int(num_devices)]


def _multi_worker(cluster: Cluster | None, device_type: str | None, timeout_seconds: float | None):
    if cluster is not None:
        apply_tf_config(cluster)
    elif not os.environ.get("TF_CONFIG", "").strip():
        raise ValueError("kind='multi_worker' needs a cluster (ssd_tf.distribute.cluster.resolve_cluster) or TF_CONFIG")
    accel = device_type.upper() if device_type else accelerator_type()
    on_cpu = accel in (None, "CPU")
    implementation = (tf.distribute.experimental.CommunicationImplementation.RING if on_cpu
                      else tf.distribute.experimental.CommunicationImplementation.AUTO)
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation,
                                                              timeout_seconds=timeout_seconds)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)


def make_strategy(kind: str = "auto", num_devices: int | None = None, cluster: Cluster | None = None,
                  device_type: str | None = None, *, collective_timeout_seconds: float | None = None
                  ) -> tf.distribute.Strategy:
    """Build the strategy for this process.

    kind: "auto" -> multi_worker if `cluster` has more than one worker, else mirrored if more than one device
        is selected (all accelerators of the first accelerator type, or `num_devices` of `device_type`; CPU
        logical devices are only used when asked for with num_devices), else one_device.
    num_devices: the first N devices of the type (one_device/mirrored); ignored by multi_worker, which uses
        all local accelerators (or the CPU) of each worker.
    cluster: from `resolve_cluster`; for multi_worker it is written to TF_CONFIG and read back by a
        TFConfigClusterResolver. Without it, multi_worker uses an existing TF_CONFIG.
    device_type: "GPU", "CPU", a pluggable device type, or None for the first accelerator type (CPU if none).
    collective_timeout_seconds: multi_worker only; a collective that waits longer fails instead of hanging.
    """
    if kind not in STRATEGY_KINDS:
        raise ValueError(f"kind must be one of {STRATEGY_KINDS}, got {kind!r}")
    if cluster is not None and not isinstance(cluster, Cluster):
        raise TypeError(f"cluster must be an ssd_tf.distribute.cluster.Cluster, got {type(cluster).__name__}")
    if kind == "multi_worker" or (kind == "auto" and cluster is not None and cluster.num_workers > 1):
        strategy = _multi_worker(cluster, device_type, collective_timeout_seconds)
        log.info("MultiWorkerMirroredStrategy: worker %d, %d replicas in sync (%s)", worker_index(strategy),
                 strategy.num_replicas_in_sync, cluster.source if cluster else "TF_CONFIG")
        return strategy
    dtype = _resolve_type(device_type)
    if kind == "auto" and num_devices is None and dtype == "CPU":
        num_devices = 1
    devices = _pick_devices(dtype, num_devices)
    if not devices:
        raise ValueError(f"no logical {dtype} device is visible")
    if kind == "one_device" or (kind == "auto" and len(devices) == 1):
        if kind == "one_device" and num_devices not in (None, 1):
            raise ValueError(f"kind='one_device' with num_devices={num_devices}")
        log.info("OneDeviceStrategy on %s", devices[0])
        return tf.distribute.OneDeviceStrategy(devices[0])
    log.info("MirroredStrategy over %s", devices)
    return tf.distribute.MirroredStrategy(devices=devices)


def _task(strategy) -> tuple[str | None, int | None, dict]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None, {}
    spec = resolver.cluster_spec().as_dict() if resolver.cluster_spec() else {}
    return resolver.task_type, resolver.task_id, spec


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This process's worker index (0 = chief); 0 for single-process strategies."""
    task_type, task_id, spec = _task(strategy)
    if task_type is None:
        return 0
    if task_type == "chief":
        return 0
    return int(task_id or 0) + len(spec.get("chief", []))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for single-process strategies and for the chief (worker 0) of a multi-worker cluster."""
    task_type, _, _ = _task(strategy)
    if task_type not in (None, "chief", "worker"):
        return False
    return worker_index(strategy) == 0


def chief_or_temp_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """model_dir on the chief; model_dir/worker_tmp_<i> (created) on other workers.

    Every worker must run checkpoint saves (they contain collectives), but only the chief's copy is kept:
    non-chief workers write to their temp dir and call `remove_temp_dir` afterwards.
    """
    if is_chief(strategy):
        return model_dir
    path = os.path.join(model_dir, f"worker_tmp_{worker_index(strategy)}")
    tf.io.gfile.makedirs(path)
    return path


def remove_temp_dir(path: str, strategy: tf.distribute.Strategy) -> None:
    """Delete a non-chief worker's temp dir (no-op on the chief, whose path is the real model_dir)."""
    if is_chief(strategy):
        return
    if tf.io.gfile.exists(path):
        if "://" in path:
            tf.io.gfile.rmtree(path)
        else:
            shutil.rmtree(path, ignore_errors=True)

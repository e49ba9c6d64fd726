"""Training progress: the periodic log line, TensorBoard summaries, and an ETA that ignores compile time."""
from __future__ import annotations

import json
import math
import os
import sys


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLogger:
    """Writes one line per logging interval to stdout (and model_dir/train_log.jsonl) and TF summaries."""

    def __init__(self, summary_dir: str | None, total_steps: int, global_batch: int, write_files: bool = True,
                 stream=None):
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.stream = stream or sys.stdout
        self._writer = None
        self._jsonl = None
        if summary_dir and write_files:
            import tensorflow as tf

            os.makedirs(summary_dir, exist_ok=True)
            self._writer = tf.summary.create_file_writer(summary_dir)
            self._jsonl = open(os.path.join(summary_dir, "train_log.jsonl"), "a")
        self._rate_steps = 0
        self._rate_time = 0.0

    def log_train(self, step: int, steps_done: int, elapsed: float, data_wait: float, lr: float,
                  losses: dict, first_interval: bool) -> dict:
        """`steps_done` steps took `elapsed` seconds (of which `data_wait` waiting for input)."""
        step_time = elapsed / max(steps_done, 1)
        fps = self.global_batch / step_time if step_time > 0 else float("nan")
        if not first_interval:  # the first interval includes tracing / compilation
            self._rate_steps += steps_done
            self._rate_time += elapsed
        avg = self._rate_time / self._rate_steps if self._rate_steps else step_time
        eta = avg * max(self.total_steps - step, 0)
        wait = data_wait / max(steps_done, 1) if math.isfinite(data_wait) else None  # None: not measured
        record = {"step": step, "fps": fps, "learning_rate": lr, "step_time": step_time,
                  "data_wait": wait, "eta_seconds": eta}
        record.update({k: float(v) for k, v in losses.items()})
        parts = " ".join(f"{k}={float(v):.4f}" for k, v in losses.items())
        waited = f"data wait {wait * 1000:.0f} ms" if wait is not None else "data wait not measured"
        print(f"step {step}/{self.total_steps} | {fps:.2f} images/s | lr {lr:.6g} | {parts} | "
              f"step {step_time * 1000:.0f} ms ({waited}) | ETA {format_duration(eta)}", file=self.stream,
              flush=True)
        self._write(step, record, prefix="train/")
        return record

    def log_eval(self, step: int, metrics: dict) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        print(f"Eval results at step {step}: {json.dumps(scalars, sort_keys=False)}", file=self.stream, flush=True)
        self._write(step, scalars, prefix="eval/")

    def _write(self, step: int, record: dict, prefix: str) -> None:
        if self._writer is not None:
            import tensorflow as tf

            with self._writer.as_default(step=step):
                for k, v in record.items():
                    if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                        tf.summary.scalar(prefix + k, v)
            self._writer.flush()
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"kind": prefix.rstrip("/"), **record}) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._jsonl is not None:
            self._jsonl.close()


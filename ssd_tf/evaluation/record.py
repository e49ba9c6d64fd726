"""What every evaluation leaves in the model directory, in one call for ``run.train_and_eval`` and
``run.evaluate``: ``eval_results.json`` (the numbers), ``eval_plots/step_N/`` and TensorBoard images (the
pictures, ``evaluation/plots.py``) and, with ``eval.best_metric``, the best checkpoint
(``training/checkpoints.py``).

A failure while drawing is logged and does not stop training: the numbers are already written.
"""
from __future__ import annotations

import traceback


def record_evaluation(cfg, task, model, step: int, checkpoint: str, log=print, plots: bool = True) -> dict:
    """Evaluates ``model`` (weights of ``checkpoint`` at ``step``) with ``task`` and records the results (see the
    module docstring); returns the metrics."""
    from ssd_tf.run import write_eval_results

    model_dir = cfg.runtime.model_dir
    details = {}
    metrics = task.evaluate(model, details=details)
    write_eval_results(model_dir, step, checkpoint, metrics)
    if plots:
        try:
            from ssd_tf.evaluation.plots import write_eval_plots

            write_eval_plots(model_dir, step, metrics, details,
                             label_map=dict(zip(cfg.data.class_ids, cfg.data.class_names)),
                             validation_file_pattern=cfg.data.validation_file_pattern, log=log)
        except Exception as e:  # noqa: BLE001 - a picture must not cost a training run
            log(f"WARNING: evaluation pictures not written ({type(e).__name__}: {e})\n"
                + "".join(traceback.format_exc(limit=3)))
    metric = getattr(cfg.eval, "best_metric", "")
    if metric:
        from ssd_tf.training.checkpoints import update_best

        update_best(model_dir, model, step=step, metrics=metrics, metric=metric,
                    mode=getattr(cfg.eval, "best_metric_mode", "auto"), source=checkpoint, log=log)
    return metrics

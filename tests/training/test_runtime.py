"""The generic training runtime: resume after SIGKILL, divergence guard, logging, checkpoint rotation."""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

TOY = pathlib.Path(__file__).with_name("toy_train.py")


def _run(model_dir, steps, *extra, timeout=240):
    return subprocess.run([sys.executable, str(TOY), str(model_dir), str(steps), *extra], capture_output=True,
                          text=True, timeout=timeout)


def _weights(model_dir):
    with np.load(os.path.join(model_dir, "final_weights.npz")) as z:
        return [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]


def _latest_step(model_dir):
    state = pathlib.Path(model_dir, "checkpoints", "checkpoint")
    if not state.exists():
        return None
    first = state.read_text().splitlines()[0]
    return int(first.rsplit("-", 1)[-1].strip('"'))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("uninterrupted")
    r = _run(d, 24)
    assert r.returncode == 0, r.stdout + r.stderr
    return d, r.stdout


def test_log_lines_have_the_fields_users_read(uninterrupted):
    d, out = uninterrupted
    lines = [l for l in out.splitlines() if l.startswith("step ")]
    assert len(lines) == 12  # every 2 steps
    for field in ("images/s", "lr ", "total_loss=", "mse=", "l1=", "data wait", "ETA"):
        assert field in lines[-1], lines[-1]
    records = [json.loads(l) for l in open(d / "summaries" / "train_log.jsonl")]
    assert [r["step"] for r in records] == list(range(2, 25, 2))
    assert records[-1]["learning_rate"] == pytest.approx(0.05 * 0.01, rel=1e-5)  # cosine end = alpha
    assert any(p.name.startswith("events.out.tfevents") for p in (d / "summaries").iterdir())
    # keep_checkpoints=3, one every 4 steps
    state = (d / "checkpoints" / "checkpoint").read_text()
    assert "ckpt-24" in state.splitlines()[0] and state.count("all_model_checkpoint_paths") == 3


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    """Kill -9 twice at random moments (possibly mid-checkpoint); the finished run is bit-identical."""
    ref_dir, _ = uninterrupted
    rng = random.Random(1234)
    kills = 0
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, str(TOY), str(tmp_path), "24", "--delay", "0.15"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if kills < 2:
            # wait for the process to start training, then kill it after a random delay
            deadline = time.time() + 120
            for line in proc.stdout:
                if line.startswith("step ") or time.time() > deadline:
                    break
            before = _latest_step(tmp_path)
            time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
            after = _latest_step(tmp_path)
            # a kill never moves the latest checkpoint backwards nor leaves it unreadable
            assert after is None or before is None or after >= before
            continue
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out
        if "Restored" in out:
            assert "DONE" in out
        break
    for a, b in zip(_weights(ref_dir), _weights(tmp_path)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_and_ctrl_c_save_where_they_stop_and_resume_equals_uninterrupted(uninterrupted, tmp_path):
    """SIGTERM (a scheduler's stop) and SIGINT (Ctrl-C) no longer lose the steps since the last periodic
    checkpoint: the run saves the step it reached, exits 128 + the signal, and the finished run is bit-identical."""
    ref_dir, _ = uninterrupted
    reached = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen([sys.executable, str(TOY), str(tmp_path), "24", "--delay", "0.1",
                                 "--checkpoint_every", "100"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        for line in proc.stdout:  # training has started (a first log line)
            if line.startswith("step "):
                break
        time.sleep(0.5)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, out
        step = _latest_step(tmp_path)
        assert f"INTERRUPTED: {signal.Signals(sig).name} at step {step}: saved " in out, out
        assert f"ckpt-{step}; rerun the same command to resume from it" in out
        reached.append(step)
    assert 0 < reached[0] < reached[1] < 24  # each stop saved a step no periodic checkpoint (every 100) would
    r = _run(tmp_path, 24, "--checkpoint_every", "100")
    assert r.returncode == 0 and f"Restored {tmp_path / 'checkpoints' / f'ckpt-{reached[1]}'}" in r.stdout, r.stdout
    for a, b in zip(_weights(ref_dir), _weights(tmp_path)):
        np.testing.assert_array_equal(a, b)


def _checkpoint_weights(model_dir, step):
    """The trainable weights stored in checkpoints/ckpt-<step> (read from the files, not from the run)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(pathlib.Path(model_dir, "checkpoints", f"ckpt-{step}")))
    # Keras 3 checkpoints list the trainable weights once, under the optimizer's reference to them.
    keys = [k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/_trainable_variables/")]
    return {k: reader.get_tensor(k) for k in keys}


def _diverged_then_resumed(uninterrupted, tmp_path, flag, step, *, named, moved):
    """Inject a failure at `step`; the run stops (exit 3) naming checkpoint `named` as the good one, with the
    checkpoints `moved` aside; that checkpoint's weights are sane, and resuming from it without the failure
    ends bit-identical to a run that never failed."""
    r = _run(tmp_path, 24, flag, str(step))
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"The latest good checkpoint is {tmp_path / 'checkpoints' / f'ckpt-{named}'}" in r.stdout, r.stdout
    assert _latest_step(tmp_path) == named
    diverged = tmp_path / "checkpoints" / "diverged"
    assert sorted(int(p.name[5:-6]) for p in diverged.glob("ckpt-*.index")) == moved
    weights = _checkpoint_weights(tmp_path, named)
    assert weights and all(np.isfinite(w).all() and np.abs(w).max() < 1e3 for w in weights.values())
    assert not (tmp_path / "final_weights.npz").exists()
    resumed = _run(tmp_path, 24)
    assert resumed.returncode == 0 and f"ckpt-{named}" in resumed.stdout, resumed.stdout
    for a, b in zip(_weights(uninterrupted[0]), _weights(tmp_path)):
        np.testing.assert_array_equal(a, b)
    return r.stdout


def test_nan_loss_stops_with_step_and_parts_and_keeps_last_good_checkpoint(uninterrupted, tmp_path):
    out = _diverged_then_resumed(uninterrupted, tmp_path, "--nan_at_step", 11, named=8, moved=[])
    assert "loss is not finite at step 11" in out and "mse=nan" in out and "l1=nan" in out


def test_nan_loss_right_after_a_checkpoint_moves_that_checkpoint_aside(uninterrupted, tmp_path):
    """The loss of step 9 is computed from the weights saved as ckpt-8: that checkpoint is not known good."""
    out = _diverged_then_resumed(uninterrupted, tmp_path, "--nan_at_step", 9, named=4, moved=[8])
    assert "loss is not finite at step 9" in out and "Moved ckpt-8" in out


def test_finite_loss_with_non_finite_gradient_at_a_checkpoint_step_saves_nothing(uninterrupted, tmp_path):
    out = _diverged_then_resumed(uninterrupted, tmp_path, "--nan_grad_at_step", 8, named=4, moved=[])
    assert "the weights are not finite after step 8 although the loss was" in out


def test_exploding_update_with_finite_loss_is_not_checkpointed(uninterrupted, tmp_path):
    out = _diverged_then_resumed(uninterrupted, tmp_path, "--explode_at_step", 8, named=4, moved=[])
    assert "the weights exploded at step 8" in out


def test_rerun_of_a_finished_run_trains_nothing(uninterrupted):
    d, _ = uninterrupted
    before = _weights(d)
    r = _run(d, 24)
    assert r.returncode == 0 and "Nothing to train" in r.stdout
    for a, b in zip(before, _weights(d)):
        np.testing.assert_array_equal(a, b)

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


def test_nan_loss_stops_with_step_and_parts_and_keeps_last_good_checkpoint(tmp_path):
    r = _run(tmp_path, 24, "--nan_at_step", "11")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "loss is not finite at step 11" in r.stdout
    assert "mse=nan" in r.stdout and "l1=nan" in r.stdout
    assert _latest_step(tmp_path) == 8
    assert not (tmp_path / "final_weights.npz").exists()


def test_rerun_of_a_finished_run_trains_nothing(uninterrupted):
    d, _ = uninterrupted
    before = _weights(d)
    r = _run(d, 24)
    assert r.returncode == 0 and "Nothing to train" in r.stdout
    for a, b in zip(before, _weights(d)):
        np.testing.assert_array_equal(a, b)

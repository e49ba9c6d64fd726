"""run_1p.sh and run_8p.sh take relative paths from the caller's directory, not the repository's."""
import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _data(directory):
    (directory / "data").mkdir()
    (directory / "data" / "train-00000-of-00001.tfrecord").write_bytes(b"")
    (directory / "data" / "train.meta.json").write_text(json.dumps(
        {"label_map": [{"id": 1, "name": "a"}], "num_images": 0,
         "shards": [{"file": "train-00000-of-00001.tfrecord", "num_records": 0}]}))


def _env():
    """The scripts' environment: this interpreter's virtual environment, active (its bin first on PATH)."""
    env = dict(os.environ)
    env.setdefault("VIRTUAL_ENV", str(pathlib.Path(os.sys.executable).parents[1]))
    env["PATH"] = os.pathsep.join([str(pathlib.Path(env["VIRTUAL_ENV"]) / "bin"), env.get("PATH", "")])
    return env


def test_run_1p_resolves_relative_paths_from_the_callers_directory(tmp_path):
    _data(tmp_path)
    r = subprocess.run(["bash", str(ROOT / "run_1p.sh"), "--mode=train", "--model_dir=m",
                        "--training_file_pattern=data/train-*"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=_env())
    # The pattern was found (relative to tmp_path): the error is about its content, not "matches no file".
    assert r.returncode == 2 and "counts 0 images" in r.stderr, r.stderr[-2000:]


def test_run_8p_resolves_a_relative_rank_table_from_the_callers_directory(tmp_path):
    _data(tmp_path)
    (tmp_path / "table.json").write_text("{not json")
    r = subprocess.run(["bash", str(ROOT / "run_8p.sh"), "--mode=train", "--model_dir=m",
                        "--training_file_pattern=data/train-*"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**_env(), "RANK_SIZE": "1", "RANK_TABLE_FILE": "table.json",
                                         "LOG_DIR": str(tmp_path / "logs")})
    assert r.returncode != 0
    assert str(tmp_path / "table.json") in r.stderr + r.stdout, (r.stdout[-2000:], r.stderr[-2000:])


def test_the_demo_runs_to_the_end_and_draws_its_pictures(tmp_path):
    """``bash run_1p.sh`` with no arguments, scaled down by its DEMO_* variables: data, train_and_eval, predict,
    the closing message. A long demo directory makes the validation file list far longer than a pipe holds, so a
    step that reads only the head of that list under ``set -o pipefail`` would kill the demo after training,
    silently (it did: exit 141 after about 1 run in 6 at the default size)."""
    work = tmp_path / ("demo_" + "d" * 200)
    env = {**_env(), "DEMO_DIR": str(work), "DEMO_TRAIN_IMAGES": "32", "DEMO_VAL_IMAGES": "300",
           "DEMO_EPOCHS": "1", "DEMO_WIDTH": "0.125", "DEMO_PREDICT_IMAGES": "3"}
    r = subprocess.run(["bash", str(ROOT / "run_1p.sh")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "Demo finished in" in r.stdout, r.stdout[-2000:]
    predictions = work / "model" / "predictions"
    assert len(list(predictions.glob("*.jpg"))) == 3
    detections = json.loads((predictions / "detections.json").read_text())  # a 2-step model: any count
    assert {d["file_name"] for d in detections} <= {str(work / "shapes" / "val" / f"00000{i}.jpg") for i in (1, 2, 3)}
    assert json.loads((work / "model" / "eval_results.json").read_text())["num_images"] == 300


def test_run_8p_names_the_rank_that_failed_not_the_one_that_reacted(tmp_path):
    """Rank 1 dies (SIGKILL) and rank 0 then exits 4 (its collective with rank 1 failed). When one poll finds
    both gone, the launcher reports rank 1 and exits 137, whatever the rank order (a fake interpreter plays the
    ranks; the launcher's own Python steps run on the real one)."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$1" in -c|-) exec {os.sys.executable} "$@" ;; esac
if [ "$RANK_ID" = 0 ]; then sleep 1; exit 4; else sleep 0.3; kill -9 $$; fi
""")
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(ROOT / "run_8p.sh"), "--mode=train"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**_env(), "RANK_SIZE": "2", "PYTHON": str(fake),
                                                    "POLL_SECONDS": "3", "FAIL_GRACE": "0",
                                                    "LOG_DIR": str(tmp_path / "logs")})
    assert r.returncode == 137, (r.stdout[-2000:], r.stderr[-2000:])
    assert "rank 1 failed first" in r.stderr and "rank 0 (pid" in r.stderr and "exit status 4" in r.stderr

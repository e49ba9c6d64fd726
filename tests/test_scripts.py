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
    env = dict(os.environ)
    env.setdefault("VIRTUAL_ENV", str(pathlib.Path(os.sys.executable).parents[1]))
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

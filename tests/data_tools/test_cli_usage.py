"""Usage errors of the data tools: exit 2 and one line on stderr naming the flag, no traceback, nothing
written; and each console script declared in setup.py runs (as pip's stub runs it) and shows its flags."""
import subprocess

import pytest

TOOLS = ["create_coco_tfrecord", "create_voc_tfrecord", "create_txt_tfrecord", "inspect_tfrecord",
         "make_shapes_dataset"]


def test_every_data_tool_is_a_declared_console_script(console_scripts):
    assert sorted(console_scripts) == sorted(TOOLS)
    assert all(target == f"data_tools.{name}:run" for name, target in console_scripts.items())


def _run(console_script, tool, args, cwd):
    cmd, env = console_script(tool)
    return subprocess.run(cmd + args, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def _assert_usage_error(proc, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def inputs(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "img" / "a.jpg")
    (tmp_path / "a.json").write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], '
                                     '"categories": [{"id": 1, "name": "cat"}]}')
    (tmp_path / "ann" / "a.xml").write_text("<annotation><filename>a.jpg</filename></annotation>")
    (tmp_path / "t.txt").write_text("a.jpg\n")
    (tmp_path / "classes.txt").write_text("cat\n")
    (tmp_path / "file").write_text("a file, not a directory")
    return {
        "create_coco_tfrecord": [f"--image_dir={tmp_path / 'img'}", f"--object_annotations_file={tmp_path / 'a.json'}"],
        "create_voc_tfrecord": [f"--annotations_dir={tmp_path / 'ann'}", f"--images_dir={tmp_path / 'img'}"],
        "create_txt_tfrecord": [f"--anno_path={tmp_path / 't.txt'}", f"--image_dir={tmp_path / 'img'}",
                                f"--label_map={tmp_path / 'classes.txt'}"],
    }


# every case for COCO; for the others the cases each converter handles itself (the rest is the shared parser)
CASES = ([("create_coco_tfrecord", c) for c in ("positional", "num_shards=0", "num_processes=0",
                                                 "prefix_under_a_file", "unknown_flag")]
         + [(t, c) for t in ("create_voc_tfrecord", "create_txt_tfrecord")
            for c in ("positional", "num_shards=0", "prefix_under_a_file")])


@pytest.mark.parametrize("tool,case", CASES)
def test_converter_usage_errors(console_script, inputs, tmp_path, tool, case):
    out = [f"--output_file_prefix={tmp_path / 'out' / 'x'}"]
    extra, words = {
        "positional": (["train2017"], ["unexpected positional argument", "train2017"]),
        "num_shards=0": (["--num_shards=0"], ["--num_shards=0"]),
        "num_processes=0": (["--num_processes=0"], ["--num_processes=0"]),
        "prefix_under_a_file": ([], ["--output_file_prefix=", "file is not a directory"]),
        "unknown_flag": (["--num_shard=4"], ["num_shard"]),
    }[case]
    if case == "prefix_under_a_file":
        out = [f"--output_file_prefix={tmp_path / 'file' / 'sub' / 'x'}"]
    proc = _run(console_script, tool, inputs[tool] + out + extra, tmp_path)
    _assert_usage_error(proc, *words)
    assert not (tmp_path / "out").exists()


def test_converters_still_run_through_their_console_scripts(console_script, inputs, tmp_path):
    for tool in ("create_coco_tfrecord", "create_voc_tfrecord", "create_txt_tfrecord"):
        proc = _run(console_script, tool, inputs[tool] + [f"--output_file_prefix={tmp_path / tool / 'x'}",
                                                          "--num_shards=1"], tmp_path)
        assert proc.returncode == 0 and "wrote 1 images" in proc.stderr, proc.stderr
        assert (tmp_path / tool / "x-00000-of-00001.tfrecord").exists()


@pytest.mark.parametrize("tool", TOOLS)
def test_help_shows_the_tools_own_flags(console_script, tmp_path, tool):
    proc = _run(console_script, tool, ["--helpshort"], tmp_path)
    own = {"create_coco_tfrecord": "--object_annotations_file", "create_voc_tfrecord": "--annotations_dir",
           "create_txt_tfrecord": "--anno_path", "inspect_tfrecord": "--input_pattern",
           "make_shapes_dataset": "--num_train"}[tool]
    assert own in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    if tool.startswith("create_"):
        assert "--output_file_prefix" in proc.stdout + proc.stderr


def test_inspector_and_shapes_usage_errors(console_script, tmp_path):
    (tmp_path / "file").write_text("")
    _assert_usage_error(_run(console_script, "inspect_tfrecord", ["--input_pattern=x-*.tfrecord", "extra"], tmp_path),
                        "unexpected positional argument", "extra")
    _assert_usage_error(_run(console_script, "inspect_tfrecord", ["--input_pattern=x-*", "--render=-1"], tmp_path),
                        "--render=-1")
    _assert_usage_error(_run(console_script, "inspect_tfrecord",
                             ["--input_pattern=x-*", "--render=2", f"--output_dir={tmp_path / 'file' / 'viz'}"],
                             tmp_path), "--output_dir=", "is not a directory")
    _assert_usage_error(_run(console_script, "make_shapes_dataset", [f"--output_dir={tmp_path / 's'}", "now"],
                             tmp_path), "unexpected positional argument")
    _assert_usage_error(_run(console_script, "make_shapes_dataset", [f"--output_dir={tmp_path / 'file' / 's'}"],
                             tmp_path), "--output_dir=", "is not a directory")
    _assert_usage_error(_run(console_script, "make_shapes_dataset", ["--num_train=-1"], tmp_path), "--num_train")

"""The converters' shared command-line tail: the output flags, convert()'s keyword arguments from them,
and `run_conversion` (check the output path, run the conversion, print its one-line summary or what
stopped it, exit code)."""
from __future__ import annotations

import os
import sys

from data_tools.records import ConversionError
from data_tools.writer.images import VERIFY_MODES
from data_tools.writer.job import output_prefix_problem
from data_tools.writer.pool import WorkerLost
from data_tools.writer.resume import work_dir
from ssd_tf.data.shards import sidecar_path

EXIT_INPUT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def add_output_flags(default_num_shards: int = 8) -> None:
    """Define --output_file_prefix, --num_shards, --num_processes, --strict, --verify_images (idempotent)."""
    from absl import flags

    f = flags.FLAGS
    if "output_file_prefix" in f:
        return
    flags.DEFINE_string("output_file_prefix", None,
                        "Output path prefix: writes PREFIX-00000-of-0000N.tfrecord shards and PREFIX.meta.json "
                        "(shards of an earlier run with this prefix are replaced, whatever their count).")
    flags.DEFINE_integer("num_shards", default_num_shards, "Number of output shards (image i -> shard i % N).",
                         lower_bound=1)
    flags.DEFINE_integer("num_processes", None, "Worker processes (default: one per CPU; never more than "
                         "--num_shards). The output does not depend on it.", lower_bound=1)
    flags.DEFINE_boolean("strict", False, "Stop with an error instead of skipping a bad image or box.")
    flags.DEFINE_enum("verify_images", "header", list(VERIFY_MODES),
                      "header: parse the header and check the JPEG EOI / PNG IEND end marker (a file without it "
                      "is fully decoded); full: fully decode every image with PIL and skip what does not decode "
                      "(catches a JPEG corrupt in the middle, on which training would stop; ~2.5 ms CPU per COCO "
                      "image, 6-7x the CPU time of a header-checked conversion). `inspect_tfrecord --render` "
                      "names such records.")
    flags.mark_flag_as_required("output_file_prefix")


def output_kwargs_from_flags() -> dict:
    """convert()'s output keyword arguments from the parsed flags of add_output_flags()."""
    from absl import flags

    f = flags.FLAGS
    return {"output_prefix": f.output_file_prefix, "num_shards": f.num_shards,
            "num_processes": f.num_processes, "verify_images": f.verify_images}


def _resume_hint(output_file_prefix: str) -> str:
    wdir = work_dir(output_file_prefix)
    if os.path.isdir(wdir) and any(n.endswith(".done.json") for n in os.listdir(wdir)):
        return f"; the shards finished so far are kept in {wdir}: rerun the same command to reuse them"
    return ""


def run_conversion(convert_call, output_file_prefix: str) -> int:
    """CLI tail shared by the converters: checks that the output can be written (else exit 2), runs
    `convert_call()`, prints its one-line summary (or what stopped it) to stderr and returns the process
    exit code: 0; 1 on bad input, a failed worker or an OS error; 2 on an unusable --output_file_prefix;
    130 when interrupted (Ctrl-C)."""
    problem = output_prefix_problem(output_file_prefix)
    if problem:
        print(f"error: --output_file_prefix={output_file_prefix}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sidecar = convert_call()
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except WorkerLost as e:
        print(f"error: {e}{_resume_hint(output_file_prefix)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"interrupted{_resume_hint(output_file_prefix)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    print(f"wrote {sidecar['num_images']} images, {sidecar['num_objects']} objects in {len(sidecar['shards'])} "
          f"shards; skipped {sidecar['skipped_counts'] or 'nothing'}; see {sidecar_path(output_file_prefix)}",
          file=sys.stderr)
    return 0

"""The converters' shared command-line tail: the output flags, convert()'s keyword arguments from them,
and `run_conversion` (run the conversion, print its one-line summary or the input error, exit code)."""
from __future__ import annotations

import sys

from data_tools.records import ConversionError
from data_tools.writer.images import VERIFY_MODES
from ssd_tf.data.shards import sidecar_path


def add_output_flags(default_num_shards: int = 8) -> None:
    """Define --output_file_prefix, --num_shards, --num_processes, --strict, --verify_images (idempotent)."""
    from absl import flags

    f = flags.FLAGS
    if "output_file_prefix" in f:
        return
    flags.DEFINE_string("output_file_prefix", None,
                        "Output path prefix: writes PREFIX-00000-of-0000N.tfrecord shards and PREFIX.meta.json.")
    flags.DEFINE_integer("num_shards", default_num_shards, "Number of output shards (image i -> shard i % N).",
                         lower_bound=1)
    flags.DEFINE_integer("num_processes", 0, "Worker processes (0: one per CPU; never more than --num_shards). "
                         "The output does not depend on it.", lower_bound=0)
    flags.DEFINE_boolean("strict", False, "Stop with an error instead of skipping a bad image or box.")
    flags.DEFINE_enum("verify_images", "header", list(VERIFY_MODES),
                      "header: parse the header and check the JPEG EOI / PNG IEND end marker (a file without it "
                      "is fully decoded); full: fully decode every image with PIL (slower).")
    flags.mark_flag_as_required("output_file_prefix")


def output_kwargs_from_flags() -> dict:
    """convert()'s output keyword arguments from the parsed flags of add_output_flags()."""
    from absl import flags

    f = flags.FLAGS
    return {"output_prefix": f.output_file_prefix, "num_shards": f.num_shards,
            "num_processes": f.num_processes, "verify_images": f.verify_images}


def run_conversion(convert_call, output_file_prefix: str) -> int:
    """CLI tail shared by the converters: runs `convert_call()`, prints its one-line summary (or the
    ConversionError) to stderr and returns the process exit code (0, or 1 on bad input)."""
    try:
        sidecar = convert_call()
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {sidecar['num_images']} images, {sidecar['num_objects']} objects in {len(sidecar['shards'])} "
          f"shards; skipped {sidecar['skipped_counts'] or 'nothing'}; see {sidecar_path(output_file_prefix)}",
          file=sys.stderr)
    return 0

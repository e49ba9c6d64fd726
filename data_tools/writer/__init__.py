"""The shared TFRecord writer of every converter: `convert(records, ...)` and the CLI tail
(`add_output_flags()`, `run_conversion()`).

How a conversion runs
- Checks first (cheap, before any shard is written): duplicate source ids (error), every image file
  exists (missing -> skip), every label is in the label map (unknown -> skip), and, under --strict,
  every box against the size the annotation states, so that a strict run fails at once.
- Image i goes to shard i % num_shards. Each worker process writes whole shards, one image at a time
  (read, check, build, append), so memory does not grow with the dataset and the shard bytes do not
  depend on --num_processes. No TensorFlow: records are framed here (masked CRC-32C via google-crc32c)
  and encoded by `ssd_tf.data.example`.
- A shard is written as `.{name}.convert/{name}-NNNNN-of-MMMMM.tfrecord.incomplete`, renamed (in the
  work directory) when complete, after a small done-marker (record count, size, a CRC-32C over the record
  framing and a fingerprint of the shard's inputs and options) is written beside it. Only when every
  shard is done do they get their final names `{prefix}-NNNNN-of-MMMMM.tfrecord`, then the sidecar
  `{prefix}.meta.json` is written (its presence means the job finished) and the work directory removed:
  a failed, killed or interrupted run leaves no final-named shard of its own. A rerun reuses a finished
  shard whose fingerprint, size, record count and framing CRC match its marker (every record's data CRC is
  re-checked) and rewrites the others, so the final files equal those of an uninterrupted run byte for
  byte. Final-named shards of earlier runs of the same prefix (whatever their --num_shards) are deleted
  before work starts, so `{prefix}-*.tfrecord` matches exactly the shards the sidecar lists.
- Worker processes share no lock: a worker that dies (e.g. the out-of-memory killer) stops the job at once
  with `pool.WorkerLost`; Ctrl-C stops it with KeyboardInterrupt (exit 130 from the CLI).
- Nothing to convert, every image file missing, or no usable image is a ConversionError (never 0 records
  with exit 0).

Images (`images`): JPEG/PNG stored as they are, other formats re-encoded as PNG; --verify_images=header
checks the header and end marker, =full decodes every image. The size found in the file must equal the
annotation's (when it states one), else the image is skipped.

Boxes (`boxes`; absolute continuous pixels, x first, as in `data_tools.records`): non-finite, zero or
negative size, or nothing inside the image after clipping -> skipped; partly outside -> clipped (counted).
area = the annotation's area when given, else the clipped box area in pixels.

Every skip is listed in the sidecar with its reason; --strict turns any skip into a ConversionError.

Modules, one job each: `framing` (TFRecord framing, CRC-32C, reading shards back), `images` (reading and
sniffing image files), `boxes` (box checks), `resume` (work directory, fingerprints, reuse of finished
shards), `pool` (worker processes), `shard` (the workers' tasks: per-record checks, writing one shard),
`sidecar` (the sidecar dict), `job` (`convert`), `cli` (output flags and the converters' CLI tail).
"""
from data_tools.writer.boxes import check_box  # noqa: F401
from data_tools.writer.cli import add_output_flags, output_kwargs_from_flags, run_conversion  # noqa: F401
from data_tools.writer.framing import (crc32c, crc32c_extend, frame_parts, frame_record, masked_crc,  # noqa: F401
                                       read_records, scan_shard)
from data_tools.writer.images import VERIFY_MODES, jpeg_size, png_size  # noqa: F401
from data_tools.writer.job import convert  # noqa: F401
from data_tools.writer.shard import DELAY_ENV  # noqa: F401
from data_tools.writer.sidecar import FORMAT_VERSION  # noqa: F401
from ssd_tf.data.shards import shard_path, sidecar_path  # noqa: F401  (part of the writer's API)

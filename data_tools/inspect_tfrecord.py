"""Summarise (and draw) the examples of TFRecord shards.

    python -m data_tools.inspect_tfrecord --input_pattern='out/train-*.tfrecord' [--json]
                                          [--render 8 --output_dir viz/]

Prints the number of files, images, objects, objects per class, images without objects, difficult
and crowd objects, and image sizes (min / max height and width, a histogram of HxW) as text, or as
one JSON object with --json. With --render N, writes N PNGs with the boxes and class names drawn
(matplotlib, Agg backend) to --output_dir.

Class names come from the converter sidecar `{prefix}.meta.json` beside the shards (shards named
`{prefix}-NNNNN-of-MMMMM.tfrecord`) when it exists, else from `image/object/class/text`, else the id.
Counting parses the tf.train.Example protos without decoding images; rendering decodes with
`ssd_tf.data.decoder.decode_example`, the same code the input pipeline uses. A record whose image does not
decode (e.g. a JPEG corrupt in the middle, which the converters' default header check lets through) is
named on stderr (file, record index, source_id, filename) and skipped; the command then exits 1. A
damaged TFRecord file (bad length or CRC) is an error naming the file and the record index.
"""
from __future__ import annotations

import json
import os
import re
import sys

if __package__ in (None, ""):  # `python data_tools/inspect_tfrecord.py`: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAX_SIZE_BINS = 20


class DamagedRecords(Exception):
    """A TFRecord file that cannot be read on (truncated, or a CRC mismatch); the message names it."""


def _tf_message(error) -> str:
    """A TensorFlow error's message without the `{{function_node ...}}` noise, on one line."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return " ".join(text.split())


def _records(files):
    """(file, index in the file, serialized record) of every record, file by file; raises DamagedRecords."""
    import tensorflow as tf

    for path in files:
        index = 0
        iterator = iter(tf.data.TFRecordDataset(path).as_numpy_iterator())
        while True:
            try:
                raw = next(iterator)
            except StopIteration:
                break
            except tf.errors.OpError as e:  # DataLossError: truncated record, CRC mismatch
                raise DamagedRecords(f"{path} record {index}: cannot be read ({_tf_message(e)})") from None
            yield path, index, raw
            index += 1


def list_files(pattern: str) -> list:
    from ssd_tf.data.shards import expand_pattern

    files = expand_pattern(pattern)
    if not files:
        raise FileNotFoundError(f"--input_pattern {pattern!r} matches no file")
    return files


def sidecar_class_names(files) -> dict:
    """{id: name} from the `{prefix}.meta.json` sidecars of the shards' prefixes (those that exist)."""
    from ssd_tf.data.label_map import sidecar_label_map, sidecars_of

    names = {}
    for path, sidecar in sidecars_of(files).items():
        for class_id, name in sidecar_label_map(sidecar, path).items():
            names.setdefault(class_id, name)
    return names


def _feature(example, key):
    feature = example.features.feature.get(key)
    if feature is None:
        return []
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def inspect_records(pattern: str) -> dict:
    """Counts over every record of the files matching `pattern` (see the module docstring)."""
    import tensorflow as tf

    files = list_files(pattern)
    names = sidecar_class_names(files)
    stats = {"files": len(files), "num_images": 0, "num_objects": 0, "objects_per_class": {},
             "images_without_objects": 0, "difficult_objects": 0, "crowd_objects": 0,
             "min_height": None, "max_height": None, "min_width": None, "max_width": None,
             "image_sizes": {}, "class_names_from": "sidecar" if names else "class/text"}
    per_class, sizes = {}, {}
    for _, _, raw in _records(files):
        example = tf.train.Example.FromString(raw)
        height = (_feature(example, "image/height") or [0])[0]
        width = (_feature(example, "image/width") or [0])[0]
        labels = _feature(example, "image/object/class/label")
        texts = [t.decode("utf-8", "replace") for t in _feature(example, "image/object/class/text")]
        num_boxes = len(_feature(example, "image/object/bbox/xmin"))
        stats["num_images"] += 1
        stats["num_objects"] += num_boxes
        stats["images_without_objects"] += int(num_boxes == 0)
        stats["difficult_objects"] += sum(1 for v in _feature(example, "image/object/difficult") if v)
        stats["crowd_objects"] += sum(1 for v in _feature(example, "image/object/is_crowd") if v)
        for i in range(num_boxes):
            label = labels[i] if i < len(labels) else None
            if label is not None and label in names:
                name = names[label]
            elif i < len(texts) and texts[i]:
                name = texts[i]
            else:
                name = str(label)
            per_class[name] = per_class.get(name, 0) + 1
        key = f"{height}x{width}"
        sizes[key] = sizes.get(key, 0) + 1
        for field, value in (("height", height), ("width", width)):
            lo, hi = stats[f"min_{field}"], stats[f"max_{field}"]
            stats[f"min_{field}"] = value if lo is None else min(lo, value)
            stats[f"max_{field}"] = value if hi is None else max(hi, value)
    order = list(names.values()) + sorted(n for n in per_class if n not in names.values())
    stats["objects_per_class"] = {n: per_class[n] for n in order if n in per_class}
    top = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
    stats["image_sizes"] = dict(top[:MAX_SIZE_BINS])  # "HxW": count, most frequent first
    if len(top) > MAX_SIZE_BINS:
        stats["image_sizes"]["other"] = sum(n for _, n in top[MAX_SIZE_BINS:])
    stats["distinct_image_sizes"] = len(sizes)
    return stats


def format_text(stats: dict) -> str:
    lines = [
        f"files:                  {stats['files']}",
        f"images:                 {stats['num_images']}",
        f"objects:                {stats['num_objects']}",
        f"images without objects: {stats['images_without_objects']}",
        f"difficult objects:      {stats['difficult_objects']}",
        f"crowd objects:          {stats['crowd_objects']}",
        f"height min/max:         {stats['min_height']} / {stats['max_height']}",
        f"width min/max:          {stats['min_width']} / {stats['max_width']}",
        f"objects per class (names from {stats['class_names_from']}):",
    ]
    width = max([len(n) for n in stats["objects_per_class"]] + [1])
    lines += [f"  {name:<{width}}  {n}" for name, n in stats["objects_per_class"].items()]
    lines.append(f"image sizes HxW ({stats['distinct_image_sizes']} distinct):")
    lines += [f"  {size:<11}  {n}" for size, n in stats["image_sizes"].items()]
    return "\n".join(lines)


def render_examples(pattern: str, num: int, output_dir: str, on_error=None) -> list:
    """Draw the first `num` records with their boxes and class names; returns the PNG paths.

    A record whose image does not decode is skipped (the next record is drawn instead): `on_error(message)`
    gets one line naming the file, the record index, source_id and filename (default: printed to stderr).
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf
    from matplotlib.patches import Rectangle

    from ssd_tf.data.decoder import decode_example

    if on_error is None:
        def on_error(message):
            print(f"error: {message}", file=sys.stderr)

    files = list_files(pattern)
    names = sidecar_class_names(files)
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for index, (path, position, raw) in enumerate(_records(files)):
        if len(paths) >= num:
            break
        example = tf.train.Example.FromString(raw)
        texts = [t.decode("utf-8", "replace") for t in _feature(example, "image/object/class/text")]
        try:
            d = decode_example(tf.constant(raw))
            image = d["image"].numpy()
        except tf.errors.OpError as e:
            source_id = b"".join(_feature(example, "image/source_id")[:1]).decode("utf-8", "replace")
            filename = b"".join(_feature(example, "image/filename")[:1]).decode("utf-8", "replace")
            on_error(f"{path} record {position} (source_id {source_id!r}, filename {filename!r}): its image does "
                     f"not decode ({_tf_message(e)}); skipped")
            continue
        h, w = image.shape[:2]
        fig = plt.figure(figsize=(max(w, 1) / 100.0, max(h, 1) / 100.0), dpi=100)
        ax = fig.add_axes([0, 0, 1, 1])
        ax.imshow(image, interpolation="nearest")
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
        for i, ((ymin, xmin, ymax, xmax), label) in enumerate(zip(d["boxes"].numpy(), d["classes"].numpy())):
            name = names.get(int(label)) or (texts[i] if i < len(texts) else "") or str(int(label))
            ax.add_patch(Rectangle((xmin * w, ymin * h), (xmax - xmin) * w, (ymax - ymin) * h,
                                   fill=False, edgecolor="lime", linewidth=2))
            ax.text(xmin * w + 2, ymin * h + 2, name, color="black", fontsize=8, va="top",
                    bbox={"facecolor": "lime", "alpha": 0.8, "pad": 1, "edgecolor": "none"})
        source = d["source_id"].numpy().decode("utf-8", "replace") or d["filename"].numpy().decode("utf-8", "replace")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source)[:60] or "example"
        out = os.path.join(output_dir, f"{index:04d}_{safe}.png")
        fig.savefig(out, dpi=100)
        plt.close(fig)
        paths.append(out)
    return paths


def define_flags():
    from data_tools.cli_help import define_flag as define

    define("DEFINE_string", "input_pattern", None, "Glob of the TFRecord files, e.g. 'out/train-*.tfrecord'.")
    define("DEFINE_boolean", "json", False, "Print the counts as one JSON object instead of text.")
    define("DEFINE_integer", "render", 0, "Draw this many examples with their boxes as PNGs.", lower_bound=0)
    define("DEFINE_string", "output_dir", None, "Where --render writes its PNGs.")


def main(argv):
    from absl import flags

    from data_tools.cli_help import usage_error, writable_dir_problem

    if len(argv) > 1:
        usage_error(f"unexpected positional argument(s) {' '.join(argv[1:])!r}")
    f = flags.FLAGS
    if not f.input_pattern:
        usage_error("--input_pattern is required")
    if f.render and not f.output_dir:
        usage_error("--render needs --output_dir")
    if f.render and writable_dir_problem(f.output_dir):
        usage_error(f"--output_dir={f.output_dir}: {writable_dir_problem(f.output_dir)}")
    try:
        stats = inspect_records(f.input_pattern)
    except (FileNotFoundError, DamagedRecords) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=1) if f.json else format_text(stats), flush=True)
    if f.render:
        problems = []

        def on_error(message):
            problems.append(message)
            print(f"error: {message}", file=sys.stderr)

        try:
            paths = render_examples(f.input_pattern, f.render, f.output_dir, on_error=on_error)
        except DamagedRecords as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {len(paths)} PNGs to {f.output_dir}", file=sys.stderr)
        if problems:
            print(f"error: {len(problems)} record(s) whose image does not decode (listed above): training on these "
                  "shards would stop there; reconvert with --verify_images=full to skip such images", file=sys.stderr)
            return 1
    return 0


def run():
    """Console-script entry point."""
    from absl import app

    define_flags()
    from data_tools.cli_help import expose_flags_in_help, parse_flags

    expose_flags_in_help(__spec__.name if __spec__ else "data_tools.inspect_tfrecord")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()

"""Converter throughput: a COCO-style input of N images (coco_tiny's images symlinked under new names,
with their annotations) -> `create_coco_tfrecord` as a user runs it. Prints JSON.

    python bench/convert_throughput.py [--num_images 4000] [--num_processes 2] [--work_dir DIR]

Reports the whole command's wall clock (Python start-up included), the converter's own phases (JSON
parse + checks, shard writing), images/s and MB/s, the peak RSS of the process tree (sum over the
converter and its workers of PSS, sampled from /proc every 10 ms; getrusage's max over single processes too),
and the raw limit: one process reading the same image bytes and loading the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
COCO_TINY = pathlib.Path(os.environ.get("SSD_TF_SHARED_DATA", REPO.parent / "shared" / "data")) / "coco_tiny"


def build_input(root: pathlib.Path, num_images: int) -> tuple[pathlib.Path, pathlib.Path, int]:
    """Symlink coco_tiny's 160 images round-robin as N new files + a matching instances JSON."""
    sources, anns_by_image, categories = [], {}, None
    for split in ("train2017", "val2017"):
        with open(COCO_TINY / "annotations" / f"instances_{split}.json") as f:
            d = json.load(f)
        categories = d["categories"]
        for a in d["annotations"]:
            anns_by_image.setdefault((split, a["image_id"]), []).append(a)
        sources += [(split, im) for im in d["images"]]
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, total_bytes = [], [], 0
    for i in range(num_images):
        split, im = sources[i % len(sources)]
        name = f"{i:012d}.jpg"
        src = COCO_TINY / split / im["file_name"]
        link = image_dir / name
        if not link.exists():
            os.symlink(src, link)
        total_bytes += src.stat().st_size
        images.append(dict(im, id=i + 1, file_name=name))
        for a in anns_by_image.get((split, im["id"]), []):
            annotations.append(dict(a, id=len(annotations) + 1, image_id=i + 1))
    ann_file = root / "instances.json"
    with open(ann_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return image_dir, ann_file, total_bytes


def raw_limit(image_dir: pathlib.Path, ann_file: pathlib.Path) -> float:
    """Seconds to load the JSON and read every image's bytes in one process (the I/O floor)."""
    t = time.perf_counter()
    with open(ann_file, "rb") as f:
        d = json.loads(f.read())
    for im in d["images"]:
        with open(image_dir / im["file_name"], "rb") as f:
            f.read()
    return time.perf_counter() - t


def _tree_rss(pid: int) -> int:
    """Sum of PSS (bytes) over pid and its descendants (VmRSS would count copy-on-write pages N times)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack += children.get(p, [])
        try:  # PSS: pages shared by the forked workers with the parent are counted once in the sum
            with open(f"/proc/{p}/smaps_rollup") as f:
                m = re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M)
            total += int(m.group(1)) * 1024 if m else 0
        except OSError:
            pass
    return total


def run_converter(image_dir, ann_file, out_prefix, num_processes, num_shards) -> dict:
    cmd = [sys.executable, str(REPO / "data_tools" / "create_coco_tfrecord.py"), f"--image_dir={image_dir}",
           f"--object_annotations_file={ann_file}", f"--output_file_prefix={out_prefix}",
           f"--num_shards={num_shards}", f"--num_processes={num_processes}"]
    peak, stop = [0], threading.Event()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"converter failed ({proc.returncode}):\n{err[-3000:]}")
    m = re.search(r"timing: parse ([\d.]+) s, write ([\d.]+) s", err)
    return {"wall_s": wall, "parse_s": float(m.group(1)) if m else None, "write_s": float(m.group(2)) if m else None,
            "peak_pss_tree_mb": peak[0] / 2**20, "cpu_s": cpu}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_images", type=int, default=4000)
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--num_shards", type=int, default=8)
    p.add_argument("--work_dir", default=None, help="kept if given; else a temporary directory is removed")
    args = p.parse_args()
    if not COCO_TINY.is_dir():
        raise SystemExit(f"coco_tiny not found at {COCO_TINY} (set SSD_TF_SHARED_DATA)")
    root = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix="convert_bench_"))
    try:
        image_dir, ann_file, total_bytes = build_input(root / "input", args.num_images)
        raw_limit(image_dir, ann_file)  # warm the page cache
        raw = min(raw_limit(image_dir, ann_file) for _ in range(2))
        out_dir = root / "out"
        shutil.rmtree(out_dir, ignore_errors=True)
        r = run_converter(image_dir, ann_file, out_dir / "bench", args.num_processes, args.num_shards)
        usage = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 0) / 1024
        with open(str(out_dir / "bench") + ".meta.json") as f:
            meta = json.load(f)
        phase = (r["parse_s"] or 0) + (r["write_s"] or 0)
        result = {
            "num_images": args.num_images, "num_objects": meta["num_objects"], "input_mb": total_bytes / 2**20,
            "num_processes": args.num_processes, "num_shards": args.num_shards,
            "wall_s": round(r["wall_s"], 3), "cpu_s_process_tree": round(r["cpu_s"], 3),
            "load_average_1min": os.getloadavg()[0],
            "parse_s": r["parse_s"], "write_s": r["write_s"],
            "images_per_s_wall": round(args.num_images / r["wall_s"], 1),
            "mb_per_s_wall": round(total_bytes / 2**20 / r["wall_s"], 1),
            "images_per_s_conversion": round(args.num_images / phase, 1) if phase else None,
            "raw_limit_s": round(raw, 3), "raw_images_per_s": round(args.num_images / raw, 1),
            "conversion_vs_raw": round(raw / phase, 3) if phase else None,
            "peak_pss_tree_mb": round(r["peak_pss_tree_mb"], 1),
            "max_single_process_rss_mb": round(usage, 1),
        }
        print(json.dumps(result, indent=1))
    finally:
        if args.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

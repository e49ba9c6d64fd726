"""Training throughput of one process vs N local workers (run_8p.sh, MultiWorkerMirroredStrategy over loopback)
at the same global batch. Prints one JSON object.

    python bench/multiworker_throughput.py [--workers 2] [--global_batch 8] [--steps 30] [--log_every 5]
        [--model ssd_resnet34] [--width_multiplier 0.125] [--keep DIR]

Both runs are ssd_main.py --mode=train on the same synthetic shapes TFRecords (augmentation on, the preset's
recipe). Steps/s come from the chief's train_log.jsonl, leaving out the first logging interval (tracing and
the first collectives). The runs go one after the other. On a machine with fewer cores than workers x the cores
one process uses, the ratio measures the cost of the collective path (gRPC ring all-reduce of every gradient,
per-worker input pipelines competing for the same cores), not scaling.
"""
import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _check(cmd, env=None, timeout=1800):
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


def make_records(work: str, num_images: int) -> str:
    py = sys.executable
    _check([py, "-m", "data_tools.make_shapes_dataset", f"--output_dir={work}/shapes", f"--num_train={num_images}",
            "--num_val=2", "--seed=1"])
    _check([py, "-m", "data_tools.create_coco_tfrecord", f"--image_dir={work}/shapes/train",
            f"--object_annotations_file={work}/shapes/annotations/instances_train.json",
            f"--output_file_prefix={work}/tf/train", "--num_shards=4", "--num_processes=1"])
    return f"{work}/tf/train-*.tfrecord"


def _free_base_port(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no free consecutive ports on 127.0.0.1")


def rates(model_dir: str, global_batch: int) -> dict:
    path = os.path.join(model_dir, "summaries", "train_log.jsonl")
    rows = [json.loads(line) for line in open(path)]
    rows = [r for r in rows if r["kind"] == "train"]
    if len(rows) < 2:
        raise SystemExit(f"{path}: need at least 2 logging intervals, got {len(rows)}; raise --steps")
    timed = rows[1:]  # the first interval includes tracing
    steps = timed[-1]["step"] - rows[0]["step"]
    seconds = sum(r["step_time"] * (r["step"] - p["step"]) for p, r in zip(rows, timed))
    wait = sum(r["data_wait"] * (r["step"] - p["step"]) for p, r in zip(rows, timed))
    return {"timed_steps": steps, "steps_per_s": steps / seconds, "images_per_s": steps * global_batch / seconds,
            "data_wait_fraction": wait / seconds, "first_interval_s": rows[0]["step_time"] * rows[0]["step"],
            "final_total_loss": rows[-1]["total_loss"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--global_batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log_every", type=int, default=5)
    p.add_argument("--model", default="ssd_resnet34")
    p.add_argument("--width_multiplier", type=float, default=0.125)
    p.add_argument("--num_images", type=int, default=64)
    p.add_argument("--keep", default="", help="work directory to keep (default: a temporary one, removed)")
    a = p.parse_args()
    if a.workers < 2 or a.global_batch % a.workers:
        raise SystemExit("--workers must be >= 2 and divide --global_batch")
    work = a.keep or tempfile.mkdtemp(prefix="mw_bench_")
    os.makedirs(work, exist_ok=True)
    try:
        pattern = make_records(work, a.num_images)
        common = [f"--model={a.model}", f"--width_multiplier={a.width_multiplier}", "--mode=train",
                  f"--training_file_pattern={pattern}", f"--train_steps={a.steps}", f"--steps_per_loop={a.log_every}",
                  f"--log_every_steps={a.log_every}", f"--checkpoint_every_steps={10 * a.steps}", "--seed=0"]
        env = dict(os.environ)
        env.pop("TF_CONFIG", None)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

        t0 = time.perf_counter()
        _check([sys.executable, "ssd_main.py", *common, f"--model_dir={work}/one", f"--train_batch_size={a.global_batch}"],
               env=env)
        one_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        _check(["bash", "run_8p.sh", *common, f"--model_dir={work}/multi",
                f"--train_batch_size={a.global_batch // a.workers}", f"--base_port={_free_base_port(a.workers)}"],
               env={**env, "RANK_SIZE": str(a.workers), "LOG_DIR": f"{work}/logs", "RUN_TIMEOUT": "1800",
                    "SSD_TF_EXTRAS": env.get("SSD_TF_EXTRAS", "test")})
        multi_wall = time.perf_counter() - t0
        one, multi = rates(f"{work}/one", a.global_batch), rates(f"{work}/multi", a.global_batch)
        result = {
            "model": a.model, "width_multiplier": a.width_multiplier, "global_batch": a.global_batch,
            "steps": a.steps, "workers": a.workers, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_avg_1min_at_end": os.getloadavg()[0],
            "one_process": {**one, "wall_s": one_wall},
            f"{a.workers}_workers": {**multi, "wall_s": multi_wall, "per_device_batch": a.global_batch // a.workers},
            "multi_over_one_steps_per_s": multi["steps_per_s"] / one["steps_per_s"],
        }
        print(json.dumps(result, indent=2))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

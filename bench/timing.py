"""The benchmarks' one timing loop (the bench scripts import it as a sibling module: ``from timing import timed``)."""
import time


def timed(fn, steps, warmup):
    """Mean wall seconds of ``fn()`` over ``steps`` calls, after ``warmup`` untimed calls (tracing, caches)."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps

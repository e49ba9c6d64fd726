"""The job's worker processes: forked once (after parsing, so they share the parent's records), running
one task per shard, counting written images for the progress bar.

`STATE` is the job's state in every worker (set before the pool forks, or by the pool initializer);
`tick(n)` adds n written images to the progress count.
"""
from __future__ import annotations

import gc
import multiprocessing

# Worker state (set before the pool forks or by the pool initializer).
STATE = {}


def init_worker(state):
    STATE.clear()
    STATE.update(state)


class Workers:
    """The job's worker processes (forked once, after parsing: they share the parent's records), or the
    calling process itself when workers <= 1. `map(fn, items, progress=...)` runs fn on each item in order."""

    def __init__(self, state: dict, workers: int, tick):
        self.state, self.workers, self.tick, self.pool = state, workers, tick, None

    def __enter__(self):
        if self.workers <= 1:
            init_worker(dict(self.state, tick=self.tick))
            return self
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.counter = ctx.Value("q", 0)
        gc.freeze()  # forked workers then leave the parent's objects alone (no GC scans, no copy-on-write)
        try:
            self.pool = ctx.Pool(self.workers, initializer=init_worker,
                                 initargs=(dict(self.state, counter=self.counter),))
        except BaseException:
            gc.unfreeze()
            raise
        return self

    def map(self, fn, items, progress: bool = False) -> list:
        items = list(items)
        if self.pool is None:
            return [fn(x) for x in items]
        result = self.pool.map_async(fn, items, chunksize=1)
        if progress:  # the workers count written images in self.counter
            shown = self.counter.value
            while not result.ready():
                result.wait(0.1)
                value = self.counter.value
                self.tick(value - shown)
                shown = value
        return result.get()

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()  # as Pool's own context manager does
            self.pool.join()
            gc.unfreeze()
        STATE.clear()
        return False


def tick(n):
    counter = STATE.get("counter")
    if counter is not None:
        with counter.get_lock():
            counter.value += n
    elif "tick" in STATE:
        STATE["tick"](n)

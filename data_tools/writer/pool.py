"""The job's worker processes: forked once (after parsing, so they share the parent's records), running
one task per shard, counting written images for the progress bar.

`STATE` is the job's state in every worker (set before the pool forks, or by `init_worker`); `tick(n)`
adds n written images to the progress count.

No lock or queue is shared between processes (a worker killed while holding one would hang the others
and the parent): each worker has its own pipe for tasks and results and its own progress slot, and the
parent waits on the pipes and on the workers' exit sentinels together, so a worker that dies (e.g. killed
by the out-of-memory killer) is seen at once and reported by `WorkerLost`. Workers ignore SIGINT (Ctrl-C
in a terminal reaches the whole process group): the parent gets KeyboardInterrupt and stops them. On Linux
a worker is killed when the parent dies, so nothing keeps writing after the converter is gone.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import wait

# Worker state (set before the pool forks or by init_worker).
STATE = {}

_POLL_S = 0.1  # how often the parent updates the progress bar while it waits


class WorkerLost(RuntimeError):
    """A worker process died without reporting (killed by a signal, or exited)."""


class _RemoteTraceback(Exception):
    def __init__(self, text: str):
        super().__init__(text)

    def __str__(self):
        return self.args[0]


def init_worker(state):
    STATE.clear()
    STATE.update(state)


def tick(n):
    counts = STATE.get("counts")
    if counts is not None:
        counts[STATE["slot"]] += n  # this worker's own slot: no lock needed
    elif "tick" in STATE:
        STATE["tick"](n)


def parent_alive() -> bool:
    """False in a worker whose parent (the converter) has gone away."""
    parent = STATE.get("parent_pid")
    return parent is None or os.getppid() == parent


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass


def _worker_main(conn, state) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    init_worker(state)
    if not parent_alive():  # the parent died before prctl took effect
        os._exit(1)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        fn, arg = message
        try:
            reply = ("ok", fn(arg))
        except BaseException as e:  # reported to the parent, which re-raises it
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            try:
                pickle.dumps(e)
                reply = ("error", (e, text))
            except Exception:
                reply = ("error", (RuntimeError(f"{type(e).__name__}: {e}"), text))
        try:
            conn.send(reply)
        except (EOFError, OSError):
            break


def _signal_name(exitcode) -> str:
    if exitcode is None:
        return "stopped responding"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the out-of-memory killer does this: try a smaller --num_processes)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {exitcode}"


class Workers:
    """The job's worker processes (forked once, after parsing: they share the parent's records), or the
    calling process itself when workers <= 1. `map(fn, items, progress=..., describe=...)` runs fn on each
    item (one item per worker at a time) and returns the results in item order."""

    def __init__(self, state: dict, workers: int, tick):
        self.state, self.workers, self.tick = state, workers, tick
        self.procs, self.conns, self.counts = [], [], None

    def __enter__(self):
        if self.workers <= 1:
            init_worker(dict(self.state, tick=self.tick))
            return self
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.counts = ctx.RawArray("q", self.workers)
        gc.freeze()  # forked workers then leave the parent's objects alone (no GC scans, no copy-on-write)
        try:
            for w in range(self.workers):
                mine, theirs = ctx.Pipe(duplex=True)
                state = dict(self.state, counts=self.counts, slot=w, parent_pid=os.getpid())
                proc = ctx.Process(target=_worker_main, args=(theirs, state), name=f"convert-worker-{w}", daemon=True)
                proc.start()
                theirs.close()  # only the worker holds its end: its death reads as EOF here
                self.procs.append(proc)
                self.conns.append(mine)
        except BaseException:
            self._stop(force=True)
            raise
        return self

    def map(self, fn, items, progress: bool = False, describe=None) -> list:
        """fn(item) for every item; describe(item) names the task in the message when a worker dies."""
        items = list(items)
        if not self.procs:
            return [fn(x) for x in items]
        results, busy, pending = [None] * len(items), {}, list(range(len(items)))[::-1]
        idle = list(range(self.workers))[::-1]
        shown = sum(self.counts)

        def lost(w):
            proc = self.procs[w]
            proc.join(1.0)
            what = f" ({describe(items[busy[w]])})" if describe is not None and w in busy else ""
            raise WorkerLost(f"worker process {proc.pid}{what} {_signal_name(proc.exitcode)}")

        while busy or pending:
            while idle and pending:
                w = idle.pop()
                busy[w] = pending.pop()
                try:
                    self.conns[w].send((fn, items[busy[w]]))
                except OSError:
                    lost(w)
            by_handle = {}
            for w in busy:
                by_handle[self.conns[w]] = w
                by_handle[self.procs[w].sentinel] = w
            for handle in wait(list(by_handle), timeout=_POLL_S):
                w = by_handle[handle]
                if w not in busy:
                    continue
                if handle is not self.conns[w] and not self.conns[w].poll():
                    lost(w)  # exited without a reply
                try:
                    kind, payload = self.conns[w].recv()
                except (EOFError, OSError):
                    lost(w)
                if kind == "error":
                    error, text = payload
                    raise error from _RemoteTraceback(text)
                results[busy.pop(w)] = payload
                idle.append(w)
            if progress:
                value = sum(self.counts)
                if value != shown:
                    self.tick(value - shown)
                    shown = value
        return results

    def _stop(self, force: bool) -> None:
        for proc, conn in zip(self.procs, self.conns):
            if force:
                if proc.is_alive():
                    proc.terminate()
            else:
                try:
                    conn.send(None)
                except OSError:
                    pass
        for proc in self.procs:
            proc.join(5.0)
            if proc.is_alive():  # pragma: no cover - a worker that ignores SIGTERM
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []

    def __exit__(self, exc_type, *exc):
        if self.counts is not None:
            self._stop(force=exc_type is not None)
            gc.unfreeze()
        STATE.clear()
        return False

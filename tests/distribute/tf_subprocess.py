"""Run a Python snippet in a fresh interpreter and read back the JSON it prints on its last stdout line.

Used for tests that must configure TensorFlow before it initialises (logical CPU devices, multi-worker
collectives), which the pytest process has already done.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent


def start_python(code: str, env: dict | None = None) -> subprocess.Popen:
    """Start `python -c code` with the repo and this folder importable; its own process group."""
    full_env = dict(os.environ)
    full_env.pop("TF_CONFIG", None)
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(HERE), full_env.get("PYTHONPATH", "")])
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-c", code], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def collect_json(proc: subprocess.Popen, timeout: float = 120.0):
    """Wait (killing the process group after `timeout` s) and parse the last stdout line as JSON."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"subprocess timed out after {timeout} s; stderr tail:\n{err[-3000:]}")
    if proc.returncode != 0:
        raise AssertionError(f"subprocess exited with {proc.returncode}; stderr tail:\n{err[-3000:]}")
    lines = [line for line in out.strip().splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"subprocess printed nothing; stderr tail:\n{err[-3000:]}")
    return json.loads(lines[-1])


def run_python_json(code: str, env: dict | None = None, timeout: float = 120.0):
    """start_python + collect_json."""
    return collect_json(start_python(code, env), timeout)

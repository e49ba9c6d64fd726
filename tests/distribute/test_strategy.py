"""Strategy factory and helpers; mirrored (2 logical CPUs) and 2-worker runs against one device.

The multi-device runs need TensorFlow configured before it initialises, so they run in subprocesses, all
started together by one module fixture so that their TF start-up overlaps.
"""
import socket
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from distribute_tiny_train import train
from tf_subprocess import collect_json, start_python
from ssd_tf.distribute.cluster import Cluster
from ssd_tf.distribute.strategy import (chief_or_temp_dir, is_chief, make_strategy, remove_temp_dir,
                                        worker_index)

STEPS = 3

MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from ssd_tf.distribute.strategy import split_cpu_devices, make_strategy, is_chief, worker_index
    split_cpu_devices(2)
    import tensorflow as tf
    from distribute_tiny_train import train

    picks = {
        "auto": type(make_strategy("auto")).__name__,
        "auto_cpu2": type(make_strategy("auto", num_devices=2, device_type="CPU")).__name__,
        "one_device": type(make_strategy("one_device")).__name__,
    }
    mirrored = make_strategy("mirrored", num_devices=2)
    picks["mirrored_devices"] = list(mirrored.extended.worker_devices)
    picks["mirrored_replicas"] = mirrored.num_replicas_in_sync
    picks["mirrored_is_chief"] = is_chief(mirrored)
    picks["mirrored_worker_index"] = worker_index(mirrored)
    try:
        make_strategy("mirrored", num_devices=3)
    except ValueError as e:
        picks["too_many"] = str(e)
    w_mirrored, l_mirrored = train(mirrored, steps=%d)
    w_one, l_one = train(make_strategy("one_device"), steps=%d)
    print(json.dumps({
        "picks": picks,
        "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w_mirrored, w_one)),
        "moved": max(float(np.max(np.abs(a))) for a in w_mirrored),
        "losses": [l_mirrored, l_one],
        "weights": [w.tolist() for w in w_mirrored],
    }))
""" % (STEPS, STEPS))

WORKER_SCRIPT = textwrap.dedent("""
    import json, os
    from ssd_tf.distribute.cluster import resolve_cluster
    from ssd_tf.distribute.strategy import make_strategy, is_chief, worker_index, chief_or_temp_dir
    cluster = resolve_cluster(worker_hosts=os.environ["TEST_WORKER_HOSTS"], task_index=int(os.environ["TEST_TASK"]))
    strategy = make_strategy("auto", cluster=cluster, collective_timeout_seconds=60)
    import tensorflow as tf
    from distribute_tiny_train import train
    weights, losses = train(strategy, steps=%d, model_dir=os.environ["TEST_MODEL_DIR"])
    print(json.dumps({
        "is_mwms": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
        "replicas": strategy.num_replicas_in_sync,
        "is_chief": is_chief(strategy),
        "worker_index": worker_index(strategy),
        "dir": chief_or_temp_dir(os.environ["TEST_MODEL_DIR"], strategy),
        "weights_hex": [w.tobytes().hex() for w in weights],
        "weights": [w.tolist() for w in weights],
        "losses": losses,
    }))
""" % STEPS)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


MULTI_WORKER_TEST = "test_two_workers_bit_identical_and_equal_to_one_device"


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Start the mirrored run and (if selected) both workers at once; tests collect the results they need."""
    model_dir = str(tmp_path_factory.mktemp("mw_model"))
    procs = {"mirrored": start_python(MIRRORED_SCRIPT)}
    if any(item.name == MULTI_WORKER_TEST for item in request.session.items):
        hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
        for task in (0, 1):
            procs[f"worker{task}"] = start_python(WORKER_SCRIPT, env={
                "TEST_WORKER_HOSTS": hosts, "TEST_TASK": str(task), "TEST_MODEL_DIR": model_dir})
    results = {}

    def get(name, timeout=150):
        if name not in results:
            results[name] = collect_json(procs[name], timeout)
        return results[name]

    get.model_dir = model_dir
    yield get
    for proc in procs.values():  # never leave a worker behind (e.g. when a test failed early)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ----------------------------------------------------------------------------------------------- in process
def test_factory_on_this_cpu_host():
    assert isinstance(make_strategy(), tf.distribute.OneDeviceStrategy)
    one = make_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    assert one.extended.worker_devices[0].endswith("CPU:0")
    mirrored = make_strategy("mirrored")  # every visible device: one CPU here
    assert isinstance(mirrored, tf.distribute.MirroredStrategy) and mirrored.num_replicas_in_sync == 1
    # A one-worker cluster is not multi-worker.
    assert isinstance(make_strategy(cluster=Cluster(("127.0.0.1:1",), 0, "test")), tf.distribute.OneDeviceStrategy)


def test_factory_argument_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="kind must be one of"):
        make_strategy("tpu")
    with pytest.raises(ValueError, match="num_devices=2 but only 1 CPU devices"):
        make_strategy("mirrored", num_devices=2)
    with pytest.raises(ValueError, match="num_devices must be a positive integer"):
        make_strategy("mirrored", num_devices=0)
    with pytest.raises(ValueError, match="device_type 'XPU' has no visible device"):
        make_strategy("one_device", device_type="xpu")
    with pytest.raises(ValueError, match="needs a cluster"):
        make_strategy("multi_worker")
    with pytest.raises(TypeError, match="Cluster"):
        make_strategy(cluster={"worker": ["a:1"]})


def test_single_process_helpers(tmp_path):
    strategy = make_strategy()
    assert is_chief(strategy) and worker_index(strategy) == 0
    assert chief_or_temp_dir(str(tmp_path), strategy) == str(tmp_path)
    remove_temp_dir(str(tmp_path), strategy)  # no-op on the chief
    assert tmp_path.is_dir()


def test_one_device_matches_plain_keras_step():
    """The shared tiny loop on OneDeviceStrategy equals the same loop with no strategy (default strategy)."""
    w_one, _ = train(make_strategy("one_device"), steps=STEPS)
    w_default, _ = train(tf.distribute.get_strategy(), steps=STEPS)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(w_one, w_default)) < 1e-6


# ---------------------------------------------------------------------------------------------- subprocesses
@pytest.mark.slow  # the first user of `runs` waits for the subprocesses' TF start-up (~20 s on 2 busy cores)
def test_factory_picks_with_two_logical_cpus(runs):
    picks = runs("mirrored")["picks"]
    assert picks["auto"] == "OneDeviceStrategy"  # CPUs are not accelerators: no mirroring unless asked
    assert picks["auto_cpu2"] == "MirroredStrategy"
    assert picks["one_device"] == "OneDeviceStrategy"
    assert [d.rsplit("/", 1)[-1] for d in picks["mirrored_devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert picks["mirrored_replicas"] == 2
    assert picks["mirrored_is_chief"] and picks["mirrored_worker_index"] == 0
    assert "num_devices=3 but only 2 CPU devices" in picks["too_many"]


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device(runs):
    result = runs("mirrored")
    print(f"mirrored(2 CPU) vs one device after {STEPS} steps: max |dw| = {result['max_diff']:.3g}")
    assert result["moved"] > 0.1
    assert result["max_diff"] < 1e-6
    np.testing.assert_allclose(result["losses"][0], result["losses"][1], rtol=1e-6)
    # ... and the same as this process's one-device run.
    w_here, _ = train(make_strategy("one_device"), steps=STEPS)
    assert max(float(np.max(np.abs(np.array(a) - b))) for a, b in zip(result["weights"], w_here)) < 1e-6


@pytest.mark.slow
def test_two_workers_bit_identical_and_equal_to_one_device(runs):
    w0, w1 = runs("worker0"), runs("worker1")
    assert w0["is_mwms"] and w1["is_mwms"]
    assert w0["replicas"] == w1["replicas"] == 2
    assert (w0["is_chief"], w0["worker_index"], w1["is_chief"], w1["worker_index"]) == (True, 0, False, 1)
    assert w0["dir"] == runs.model_dir and w1["dir"].startswith(runs.model_dir) and w1["dir"] != runs.model_dir
    assert w0["weights_hex"] == w1["weights_hex"]  # bit-identical across workers
    w_here, _ = train(make_strategy("one_device"), steps=STEPS)
    diff = max(float(np.max(np.abs(np.array(a) - b))) for a, b in zip(w0["weights"], w_here))
    print(f"2 workers vs one device after {STEPS} steps: max |dw| = {diff:.3g}")
    assert diff < 1e-6

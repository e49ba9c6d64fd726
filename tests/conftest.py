"""Shared test fixtures: where the real datasets live, and a clean TF/Keras state."""
import os
import pathlib
import sys

import pytest

# torch's optional triton backend bundles an LLVM that clashes with TensorFlow's in one process (segfault on
# torch.optim / torch._dynamo, in either import order). The CPU paths the parity tests use don't need triton.
sys.modules.setdefault("triton", None)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("SSD_TF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data beside the checkout (CI has it; a user's clone usually does not)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (set SSD_TF_SHARED_DATA to run these tests)")
    return SHARED_DATA


def pytest_configure(config):
    """SSD_TF_REQUIRE_TORCH=1 (run_tests.sh sets it when it installed the torch extra): the parity tests must
    run, so a torch or torchvision that does not import is an error, not a reason to skip them."""
    if os.environ.get("SSD_TF_REQUIRE_TORCH") == "1":
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except Exception as e:  # noqa: BLE001 - any import failure
            raise pytest.UsageError(f"SSD_TF_REQUIRE_TORCH=1 but torch/torchvision do not import: {e!r}") from e


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


_CLUSTER_ENV = ("TF_CONFIG", "RANK_ID", "RANK_SIZE", "RANK_TABLE_FILE", "SLURM_PROCID")


@pytest.fixture(autouse=True)
def _isolate_cluster_env():
    """Each test starts without a cluster description in the environment and cannot leak one (a TF_CONFIG
    left by an in-process strategy test would turn every later ssd_main subprocess into a cluster member)."""
    saved = {k: os.environ.pop(k, None) for k in _CLUSTER_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def op_determinism():
    """Op determinism on for one test, as the Faster R-CNN presets train (``train.deterministic_ops``).
    TensorFlow's CPU CropAndResizeGradImage (RoIAlign's gradient) shards the boxes over threads that add into the
    same image gradient without synchronisation unless it is on: on a loaded machine updates get lost (seen in
    CI: an adjoint identity off by 1.6e-3 relative; a gradient off torchvision's by 1.1)."""
    from tensorflow.python.framework import config as tf_config

    was_on = tf_config.is_op_determinism_enabled()
    tf_config.enable_op_determinism()
    yield
    if not was_on:
        tf_config.disable_op_determinism()

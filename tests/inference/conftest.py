"""Fixtures of the inference tests."""
import pytest

from infer_helpers import make_model_dir
from tiny_data import write_records


@pytest.fixture(scope="package")
def tiny_model(tmp_path_factory):
    """(model_dir, records pattern) of an untrained tiny SSD (see ``infer_helpers.make_model_dir``)."""
    d = tmp_path_factory.mktemp("tiny_model")
    pattern = write_records(d)
    return make_model_dir(d / "model", pattern), pattern

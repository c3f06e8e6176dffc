"""The Python API: its docstring examples run here (doctests), on a small trained model."""
import doctest
import logging

import pytest

import mlrpl
import mlrpl.api
import mlrpl.deploy.thresholds
from tests.deploy_helpers import make_own_csv_data, train_own_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_own_csv_data(tmp_path_factory.mktemp("api"))
    return data, train_own_model(data, data / "run")


def run_doctests(module, globs):
    # The examples show return values; the library's log lines (train) are not part of them.
    logger = logging.getLogger("mlrpl")
    was = logger.disabled
    logger.disabled = True
    try:
        res = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS,
                              verbose=False, report=True)
    finally:
        logger.disabled = was
    assert res.attempted > 0
    assert res.failed == 0, f"{res.failed} doctest example(s) of {module.__name__} failed"


def test_api_doctests(trained):
    data, ckpt = trained
    image = str(data / "images" / "images" / "val" / "val_00000.png")
    run_doctests(mlrpl.api, {"mlrpl": mlrpl, "data": data, "checkpoint": str(ckpt),
                             "image": image})


def test_thresholds_doctests():
    run_doctests(mlrpl.deploy.thresholds, {})


def test_top_level_names():
    assert mlrpl.load is mlrpl.api.load and mlrpl.train is mlrpl.api.train
    assert mlrpl.evaluate is mlrpl.api.evaluate
    with pytest.raises(AttributeError):
        mlrpl.nope

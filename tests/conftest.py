import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    for cand in (os.environ.get("MLRPL_DATA"), REPO.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture
def shared_data():
    """../shared/data when it is there; the test is skipped otherwise."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data is not present")
    return d

"""Progress without a terminal: log lines every tenth of a loop; a bar on a terminal; silence when
disabled."""
import io
import logging
import re
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlrpl.utils.progress import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def captured(monkeypatch):
    """(log lines of the ``mlrpl`` logger, the stream standing for stderr: not a terminal)."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("mlrpl")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines, stderr
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_line_every_tenth_of_a_sized_loop(captured):
    lines, stderr = captured
    assert list(progress(range(25), desc="caching train")) == list(range(25))
    assert len(lines) == 10
    done = [int(re.search(r"\((\d+)/25,", ln).group(1)) for ln in lines]
    assert done == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]           # every 10% (2.5 items)
    assert lines[0].startswith("caching train: 12% (3/25, ") and lines[0].endswith(" left)")
    assert re.fullmatch(r"caching train: 100% \(25/25, \d+\.\d s\)", lines[-1])  # the end
    assert stderr.getvalue() == ""                                  # no bar, no carriage returns


def test_short_loops_log_each_item_at_most(captured):
    lines, _ = captured
    list(progress(["a", "b", "c"], desc="k-means per class"))
    assert [ln.split(" (")[0] for ln in lines] == ["k-means per class: 33%",
                                                    "k-means per class: 66%",
                                                    "k-means per class: 100%"]


def test_a_data_loader_is_counted_in_images(captured):
    lines, _ = captured
    loader = DataLoader(TensorDataset(torch.arange(25)), batch_size=4)    # 7 batches
    assert sum(len(b[0]) for b in progress(loader, desc="epoch 3")) == 25
    assert len(lines) == 7
    assert lines[0].startswith("epoch 3: 14% (4/25 images, ")
    assert lines[-1].startswith("epoch 3: 100% (25/25 images, ")
    loader = DataLoader(TensorDataset(torch.arange(25)), batch_size=4, drop_last=True)
    lines.clear()
    list(progress(loader, desc="epoch 4"))
    assert lines[-1].startswith("epoch 4: 100% (24/24 images, ")


def test_disabled_prints_nothing(captured):
    lines, stderr = captured
    assert list(progress(range(25), desc="epoch 1", enable=False)) == list(range(25))
    assert list(progress(iter(range(500)), desc="x", enable=False)) == list(range(500))
    assert lines == [] and stderr.getvalue() == ""


def test_log_false_leaves_the_lines_out(captured):
    lines, stderr = captured
    assert list(progress(range(25), desc="evaluating", log=False)) == list(range(25))
    assert lines == [] and stderr.getvalue() == ""


def test_an_iterable_without_length(captured):
    lines, _ = captured
    gen = (i for i in range(250))
    assert list(progress(gen, desc="scanning", every=100)) == list(range(250))
    assert [ln.split(" (")[0] for ln in lines] == ["scanning: 100 so far", "scanning: 200 so far",
                                                    "scanning: done"]
    assert lines[-1].startswith("scanning: done (250, ")
    lines.clear()
    list(progress(iter(range(3)), desc="slow", interval=0.0))        # time-paced: every item
    assert [ln.split(" (")[0] for ln in lines] == ["slow: 1 so far", "slow: 2 so far",
                                                    "slow: 3 so far"]


def test_a_loop_left_early_has_no_end_line(captured):
    lines, _ = captured
    for i in progress(range(25), desc="epoch 1"):
        if i == 11:
            break
    assert lines[-1].startswith("epoch 1: 40% (10/25, ")


def test_a_terminal_gets_the_bar_and_no_lines(captured, monkeypatch):
    lines, _ = captured
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    assert list(progress(range(25), desc="epoch 1")) == list(range(25))
    assert lines == [] and "epoch 1" in tty.getvalue()
    # enable=True: the bar even without a terminal (train.progress=always)
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    list(progress(range(25), desc="epoch 2", enable=True))
    assert lines == [] and "epoch 2" in plain.getvalue()


def test_the_same_random_numbers_with_or_without_a_terminal(captured, monkeypatch):
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=4)   # no generator of its own
    draws = []
    for stderr, enable in ((_Terminal(), None), (io.StringIO(), None), (io.StringIO(), False),
                           (io.StringIO(), True)):
        monkeypatch.setattr(sys, "stderr", stderr)
        torch.manual_seed(0)
        assert sum(len(b[0]) for b in progress(loader, desc="x", enable=enable)) == 10
        draws.append(torch.rand(1).item())
    assert len(set(draws)) == 1


def test_training_log_without_a_terminal(shapes, tmp_path, monkeypatch):
    """A run's train.log, captured without a terminal, shows caching and each epoch every 10%;
    with train.progress=never it shows no progress at all."""
    from mlrpl.config import load_config
    from mlrpl.engine.trainer import Trainer
    from tests.test_engine import tiny
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    progress_line = re.compile(r": \d+% \(\d+/\d+ ")
    for mode in ("auto", "never"):
        run = tmp_path / mode
        Trainer(load_config(None, tiny(shapes, tmp_path / f"cache-{mode}", run, "train.epochs=1",
                                       f"train.progress={mode}"))).fit()
        text = (run / "train.log").read_text()
        found = [ln for ln in text.splitlines() if progress_line.search(ln)]
        if mode == "never":
            assert found == []
            continue
        caching = [ln for ln in found if "caching features: " in ln]
        epoch = [ln for ln in found if "epoch 1: " in ln]
        assert 2 <= len(caching) <= 10 and "100% (" in caching[-1]
        assert 2 <= len(epoch) <= 10 and "100% (" in epoch[-1]
        assert not any("evaluating" in ln for ln in found)

"""Data-parallel training on CPU: 2 gloo processes launched by torchrun."""
import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_engine import tiny


@pytest.mark.slow
def test_two_gloo_processes_count_every_image_once(tmp_path, cache_dir, capsys):
    from mlrpl.data.synthetic import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "d", n_train=48, n_val=23, size=64, num_classes=6)
    run = tmp_path / "ddp"
    # 23 eval images over 2 processes: the sampler pads rank 1's shard with a repeat of item 0,
    # which evaluation must count once.
    args = tiny(data, cache_dir, run, "train.eval_batch_size=5")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mlrpl", "train", *args]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    with open(run / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(int(x["eval_images"]) == 23 for x in rows)
    # single-process evaluation of the same checkpoint gives the same metrics
    from mlrpl.cli import main
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    for key in ("mAP", "ap_rank", "CF1", "OF1", "CF1_top3"):
        assert single[key] == pytest.approx(float(rows[-1][key]), abs=1e-3), key


def test_gather_unique_removes_padding_duplicates():
    import numpy as np

    from mlrpl.engine.evaluate import gather_unique
    from mlrpl.errors import MlrplError
    # 5 items on 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets 1, 3, 0 (padding repeats item 0)
    index = np.array([0, 2, 4, 1, 3, 0])
    scores = np.arange(6, dtype=np.float32)[:, None]
    out = gather_unique(index, scores, 5)
    assert out[:, 0].tolist() == [0, 3, 1, 4, 2]
    with pytest.raises(MlrplError, match="saw 4 of 5 items"):
        gather_unique(np.array([0, 1, 2, 3]), scores[:4], 5)

"""Plug-ins on pbce, the fast way: the same Trainer as ``mlrpl train`` and the same
configs as configs/sweeps/<set>_plugins_cpu.yaml, but the cached EfficientNet-Lite0 maps are
average-pooled once in memory and fed as (1280, 1, 1) maps. pbce pools its input first and every
plug-in measured here acts on pooled features or on logits (LogicMix's mean of maps pools to the
mean of the pooled vectors), so each run is the sweep's run up to float summation order, ~20x
faster on a shared CPU.

    MLRPL_DATA=/work/shared/data python benchmarks/plugin_bench.py --set voc2007-2k \
        --proportions 0.1 0.3 0.5 --seeds 0 1 2
    python benchmarks/paired_gains.py benchmarks/results/voc2007-2k-plugins

Finished runs (metrics.json with all epochs, made with the same train.select) are skipped; a
finished run made with another train.select is moved aside (``<run>.stale-<time>``) and redone.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from mlrpl.config import load_config
from mlrpl.engine.trainer import Trainer
from mlrpl.utils.files import move_aside

CONFIGS = {
    "pbce": [],
    "pbce+logicmix": ["plugins=[{name: logicmix}]"],
    "pbce+ranking": ["plugins=[{name: ranking}]"],
    "pbce+dist_pseudo": ["plugins=[{name: dist_pseudo}]"],
    "pbce+ema": ["plugins=[{name: ema}]"],
    # cft selects on training images held out of training before the run (train.select=
    # train_holdout; they also choose the best epoch). The recorded runs of these two labels were
    # made with the old end-of-run selection (stale, benchmarks/RESULTS.md): they are trained
    # again, the old ones moved aside (<run>.stale-<time>), never deleted.
    "pbce+cft": ["plugins=[{name: cft}]", "train.select=train_holdout"],
    "pbce+lm+rank+ema+cft": ["plugins=[{name: logicmix}, {name: ranking}, {name: ema}, "
                             "{name: cft}]", "train.select=train_holdout"],
    # chosen after the single plug-ins' 10% results on the evaluation split (RESULTS.md says so)
    "pbce+logicmix+dist_pseudo": ["plugins=[{name: logicmix}, {name: dist_pseudo}]"],
    "pbce+logicmix+ema": ["plugins=[{name: logicmix}, {name: ema}]"],
}
_POOLED: dict = {}


class Pooled(Dataset):
    def __init__(self, fd, key):
        self.fd = fd
        if key not in _POOLED:
            f = fd.features
            out = np.empty((len(f), f.shape[1]), np.float32)
            for a in range(0, len(f), 64):
                out[a:a + 64] = np.asarray(f[a:a + 64], dtype=np.float32).mean((2, 3))
            _POOLED[key] = torch.from_numpy(out)[:, :, None, None]
        self.x = _POOLED[key]

    def __len__(self):
        return len(self.fd)

    def __getitem__(self, i):
        return {"features": self.x[i], "target": self.fd.target[i], "full": self.fd.full[i],
                "index": i}


def _saved_select(run: Path) -> str:
    """The run's recorded train.select ('eval' for a run made before the key existed)."""
    saved = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() \
        else {}
    return ((saved or {}).get("train") or {}).get("select", "eval")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True, choices=["voc2007-2k", "coco128"])
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--proportions", nargs="*", type=float, default=[0.1, 0.3, 0.5])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    out = Path(f"benchmarks/results/{a.set}-plugins/runs")
    for p in a.proportions:
        for seed in a.seeds:
            for label in a.configs:
                run = out / f"{label}_p{p}_s{seed}"
                cfg = load_config(f"configs/{a.set}_pbce_cpu.yaml", CONFIGS[label] + [
                    f"data.known_proportion={p}", f"seed={seed}", f"run.dir={run}",
                    "run.overwrite=true", "train.tensorboard=false", "train.progress=never",
                    f"train.threads={a.threads}"])
                m = run / "metrics.json"
                if m.is_file() and json.loads(m.read_text()).get("epochs") == 30:
                    if _saved_select(run) == cfg.train.select:
                        continue
                    # made with another selection (the old cft runs): kept beside, not replaced
                    print(f"{label} p={p} s={seed}: stale, moved to {move_aside(run, 'stale')}")
                t0 = time.time()
                tr = Trainer(cfg)
                # the training images differ with train.select=train_holdout (some held out)
                held = (cfg.train.select, cfg.train.select_holdout, cfg.data.split_seed)
                tr.train_ds = Pooled(tr.train_ds, (a.set, "train", held))
                tr.val_ds = Pooled(tr.val_ds, (a.set, "val"))
                if tr.select_ds is not None:
                    tr.select_ds = Pooled(tr.select_ds, (a.set, "select", held))
                r = tr.fit()
                for f in ("last.pt", "best.pt"):
                    (run / f).unlink(missing_ok=True)
                print(f"{label} p={p} s={seed}: mAP {r['last']['mAP']:.2f} "
                      f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

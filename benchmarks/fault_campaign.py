"""Random-point kill campaign: SIGKILL training at random instants, resume, compare.

For each method, one uninterrupted reference run; then ``--kills`` runs, each killed once with
SIGKILL at a uniformly random instant of its life (startup, feature caching, any epoch, any
checkpoint write), then resumed (``--resume`` when a ``last.pt`` exists, a plain rerun otherwise)
until it finishes. A point passes when:

* the resumed run ends **bit-identical** to the reference: every tensor of ``last.pt`` and
  ``best.pt``, and every metric and loss of ``summary.csv`` (timings aside);
* ``best.pt`` holds the epoch that ``metrics.json`` and the run record name as best;
* no file is corrupt (every checkpoint loads with ``torch.load(weights_only=True)``);
* no stray file is left: no ``.*.tmp`` in the run directory or in the feature cache.

Each point gets a fresh feature cache, so kills land during caching too.

    python benchmarks/fault_campaign.py --kills 20                       # pbce, sst, hst, satl
    python benchmarks/fault_campaign.py --methods pbce --kills 5 --out /tmp/fc

Data: the generated shapes set (48 train / 24 val images, 64 px, 6 classes), EfficientNet-Lite0
features cached; the SARL methods with a small trunk and pseudo-labels from epoch 1, so the
pseudo-labelling code (memory bank, prototypes, score distributions) runs in every killed epoch.
Prints one line per point and a summary table (markdown) to paste into RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SARL = ["method.trunk.dim=32", "method.trunk.attention_dim=16", "method.start_epoch=1"]
METHODS = {
    "pbce": [],
    "sst": SARL + ["method.bank_size=4", "method.threshold_start=0.3", "method.cooc_pairs=sample",
                   "method.cooc_sample=6"],
    "hst": SARL + ["method.prototype_interval=1", "method.num_prototypes=3",
                   "method.kmeans_n_init=2", "method.threshold_init=0.3"],
    "satl": SARL + ["method.satl.min_positives=1", "method.satl.target_precision=0.6",
                    "method.satl.target_npv=0.6", "method.satl.bins=10"],
}
TIMING = ("time_train_s", "time_eval_s")


def base_args(data: Path, emb: Path, cache: Path, run: Path, method: str, epochs: int) -> list:
    return ["train", f"data.root={data}", "data.dataset=yolo", "data.train_split=train",
            "data.val_split=val", "data.image_size=64", "data.known_proportion=0.5",
            f"data.embeddings={emb}", "model.backbone=efficientnet_lite0", "model.freeze=all",
            f"model.cache_dir={cache}", "optim.lr=0.01", "sched.name=step", "sched.step_size=1",
            "sched.gamma=0.5", f"train.epochs={epochs}", "train.batch_size=8",
            "train.eval_batch_size=16", "train.tensorboard=false", "train.threads=1",
            f"method.name={method}", *METHODS[method], f"run.dir={run}"]


def launch(argv: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlrpl", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_to_end(argv: list, env: dict, timeout: float) -> tuple[int, str]:
    p = launch(argv, env)
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def rows(run: Path) -> list[dict]:
    with open(run / "summary.csv") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def same_tensors(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if torch.is_tensor(x):
            if not (torch.is_tensor(y) and x.shape == y.shape and x.dtype == y.dtype and
                    torch.equal(torch.nan_to_num(x), torch.nan_to_num(y))):
                return False
    return True


def strays(*folders: Path) -> list[str]:
    out = []
    for f in folders:
        if f.is_dir():
            out += [str(p) for p in f.iterdir() if p.name.endswith(".tmp")]
    return out


def check(run: Path, ref: Path, cache: Path) -> dict:
    res = {"exact": False, "corrupt": 0, "stray": strays(run, cache), "best_consistent": False}
    ck = {}
    for name in ("last.pt", "best.pt"):
        try:
            ck[name] = torch.load(run / name, weights_only=True)
        except Exception:  # noqa: BLE001 - any failure counts as corrupt
            res["corrupt"] += 1
    if res["corrupt"]:
        return res
    refck = {n: torch.load(ref / n, weights_only=True) for n in ("last.pt", "best.pt")}
    res["exact"] = (all(same_tensors(ck[n]["model"], refck[n]["model"]) for n in ck)
                    and rows(run) == rows(ref))
    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    best_epoch = metrics["best_epoch"]
    held = record.get("checkpoints", {}).get("best")
    res["best_consistent"] = (ck["best.pt"]["epoch"] == best_epoch + 1
                              and (held is None or held == best_epoch + 1))
    return res


def point(method, k, reference, counts, data, emb, work, env, args, rng) -> None:
    """One random kill of one run, its resume, and the checks."""
    ref, duration = reference
    run, cache = work / method / f"k{k}", work / method / f"k{k}_cache"
    argv = base_args(data, emb, cache, run, method, args.epochs)
    span = duration
    for _ in range(5):  # a run that ends before its kill instant is no point: draw again
        delay = rng.uniform(0.0, span)
        t0 = time.time()
        p = launch(argv, env)
        try:
            p.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            killed = True
            break
        span = 0.95 * (time.time() - t0)
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    had_ckpt = (run / "last.pt").is_file()
    counts["kills"] += int(killed)
    counts["killed_before_checkpoint"] += int(killed and not had_ckpt)
    rc, err = 0, ""
    if killed:
        again = ["train", "--resume", "--run-dir", str(run)] if had_ckpt else argv
        rc, err = run_to_end(again, env, args.timeout)
    if rc != 0:
        counts["points"] += 1
        counts["failed"] += 1
        print(f"{method} #{k}: kill at {delay:.1f}s, resume failed (rc {rc}): "
              f"{err.strip().splitlines()[-1:] if err.strip() else ''}", flush=True)
        return
    res = check(run, ref, cache)
    counts["points"] += 1
    counts["exact"] += int(res["exact"])
    counts["corrupt"] += res["corrupt"]
    counts["stray"] += len(res["stray"])
    counts["best_inconsistent"] += int(not res["best_consistent"])
    print(f"{method} #{k}: kill at {delay:.1f}s of about {span:.1f}s "
          f"({'killed' if killed else 'finished first'}, "
          f"{'after' if had_ckpt else 'before'} the first checkpoint): "
          f"exact={res['exact']} corrupt={res['corrupt']} stray={res['stray']} "
          f"best_consistent={res['best_consistent']}", flush=True)
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="pbce,sst,hst,satl")
    ap.add_argument("--kills", type=int, default=20, help="random kills per method")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    import tempfile
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mlrpl-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from mlrpl.data.synthetic import make_shapes_dataset
    data = make_shapes_dataset(work / "data", n_train=48, n_val=24, size=64, num_classes=6)
    emb = work / "emb.npy"
    names = ["red_circle", "green_square", "blue_triangle", "yellow_star", "white_ring",
             "purple_cross"]
    np.save(emb, np.random.default_rng(0).normal(size=(6, 7)).astype("f4"))
    (work / "emb.names.txt").write_text("\n".join(names) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MLRPL_FAULT="")
    methods = args.methods.split(",")
    counts, refs = {}, {}
    for method in methods:  # the uninterrupted references first
        ref, ref_cache = work / method / "ref", work / method / "ref_cache"
        shutil.rmtree(work / method, ignore_errors=True)
        t0 = time.time()
        rc, err = run_to_end(base_args(data, emb, ref_cache, ref, method, args.epochs), env,
                             args.timeout)
        if rc != 0:
            print(f"{method}: reference run failed (rc {rc}):\n{err[-2000:]}")
            return 1
        refs[method] = (ref, time.time() - t0)
        counts[method] = {"method": method, "points": 0, "kills": 0, "exact": 0, "corrupt": 0, "stray": 0,
                          "best_inconsistent": 0, "failed": 0, "killed_before_checkpoint": 0,
                          "reference_s": round(time.time() - t0, 1)}
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for k in range(args.kills):  # round robin: a campaign cut short still covers every method
            for method in methods:
                point(method, k, refs[method], counts[method], data, emb, work, env, args, rng)
    except KeyboardInterrupt:
        print("interrupted: the table covers the points run so far")
    summary = [counts[m] for m in methods]
    print()
    print("| method | points | SIGKILLs | resumed exactly | killed before 1st checkpoint | "
          "corrupt files | stray files | best.pt inconsistent | resume failed | reference run (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in summary:
        print(f"| {c['method']} | {c['points']} | {c['kills']} | {c['exact']} | "
              f"{c['killed_before_checkpoint']} | "
              f"{c['corrupt']} | {c['stray']} | {c['best_inconsistent']} | {c['failed']} | "
              f"{c['reference_s']} |")
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    bad = any(c["exact"] != c["points"] or c["corrupt"] or c["stray"] or c["best_inconsistent"]
              or c["failed"] for c in summary)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

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

``--concurrent N``: N double starts and N triple starts of ``mlrpl train`` on one run directory,
each process with other settings (learning rate, seed) and started after a random delay. A start
passes when exactly one process trains and every other exits with status 2 and one
``mlrpl: error:`` line (no traceback), and the directory is one run's: ``config.yaml``, the
mask's provenance, both checkpoints' configs, ``summary.csv``, ``metrics.json``, the run record's
pid and ``train.log`` all from the process that trained.

    python benchmarks/fault_campaign.py --kills 20                       # pbce, sst, hst, satl
    python benchmarks/fault_campaign.py --methods pbce --kills 5 --out /tmp/fc
    python benchmarks/fault_campaign.py --kills 0 --concurrent 20
    python benchmarks/fault_campaign.py --kills 0 --writers 10

``--writers N``: the other writers (``data convert`` to .csv and .npz, ``tune-thresholds``,
``export``), each killed N times at a random instant of its life, then run again (with
``--force`` when the output exists). A kill passes when the output is either absent or whole
(it parses, and an export's model runs) right after the kill, the rerun ends with status 0 and a
whole output, and no temporary file or folder is left beside it.

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
    best_epoch = metrics["best_epoch"]  # counted from 1
    held = record.get("checkpoints", {}).get("best")
    res["best_consistent"] = (ck["best.pt"]["epoch"] == best_epoch
                              and (held is None or held == best_epoch))
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


def concurrent_start(n_procs: int, k: int, data, emb, cache, work, env, args, rng) -> dict:
    """`n_procs` trainings of one run directory started within about a second of each other,
    each with its own learning rate and seed; returns what the checks found."""
    run = work / "concurrent" / f"x{n_procs}_{k}"
    settings = [(0.01 * (i + 1), i) for i in range(n_procs)]
    procs = []
    for i, (lr, seed) in enumerate(settings):
        if i:
            time.sleep(rng.uniform(0.0, 1.0))
        argv = base_args(data, emb, cache, run, "pbce", 2) + [f"optim.lr={lr}", f"seed={seed}"]
        procs.append(subprocess.Popen([sys.executable, "-m", "mlrpl", *argv], cwd=REPO, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    outs = [(p.pid, *p.communicate(timeout=args.timeout)[1:], p.returncode) for p in procs]
    res = {"trained": 0, "refused_one_line": 0, "refused_badly": [], "corrupt": []}
    winner = None
    for i, (pid, err, rc) in enumerate(outs):
        if rc == 0:
            res["trained"] += 1
            winner = (i, pid)
            continue
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        if rc == 2 and len(lines) == 1 and lines[0].startswith("mlrpl: error: ") \
                and "Traceback" not in err:
            res["refused_one_line"] += 1
        else:
            res["refused_badly"].append(f"rc {rc}: {err.strip()[-300:]}")
    if res["trained"] != 1:
        res["corrupt"].append(f"{res['trained']} processes trained")
        return res
    i, pid = winner
    lr, seed = settings[i]
    try:
        import yaml
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        if cfg["optim"]["lr"] != lr or cfg["seed"] != seed:
            res["corrupt"].append("config.yaml of another process")
        prov = json.loads((run / "mask.provenance.json").read_text())
        if prov.get("seed") != seed:
            res["corrupt"].append("mask of another process")
        for name in ("last.pt", "best.pt"):
            ck = torch.load(run / name, weights_only=True)
            if ck["config"]["optim"]["lr"] != lr or ck["config"]["seed"] != seed:
                res["corrupt"].append(f"{name} of another process")
        rec = json.loads((run / "run.json").read_text())
        if rec.get("pid") != pid:
            res["corrupt"].append("run.json of another process")
        metrics = json.loads((run / "metrics.json").read_text())
        if metrics.get("epochs") != 2 or len(rows(run)) != 2:
            res["corrupt"].append("summary or metrics of another length")
        if (run / "train.log").read_text().count(" | run ") != 1:
            res["corrupt"].append("train.log of several runs")
    except Exception as e:  # noqa: BLE001 - a file that cannot be read is corruption
        res["corrupt"].append(f"unreadable: {type(e).__name__}: {e}")
    if strays(run, run.parent):
        res["corrupt"].append(f"stray files {strays(run, run.parent)}")
    return res


def concurrent_campaign(n: int, data, emb, work, env, args, rng) -> bool:
    cache = work / "concurrent_cache"
    table = {}
    for k in range(n):
        for n_procs in (2, 3):
            r = concurrent_start(n_procs, k, data, emb, cache, work, env, args, rng)
            t = table.setdefault(n_procs, {"starts": 0, "one_trained": 0, "refused_one_line": 0,
                                           "refused_badly": 0, "corrupt": 0})
            t["starts"] += 1
            t["one_trained"] += int(r["trained"] == 1)
            t["refused_one_line"] += r["refused_one_line"]
            t["refused_badly"] += len(r["refused_badly"])
            t["corrupt"] += int(bool(r["corrupt"]))
            print(f"concurrent x{n_procs} #{k}: trained={r['trained']} "
                  f"refused_one_line={r['refused_one_line']} badly={r['refused_badly']} "
                  f"corrupt={r['corrupt']}", flush=True)
    print()
    print("| processes per start | starts | exactly one trained | refused in one line (exit 2) "
          "| refused otherwise | corrupted directories |")
    print("|---|---|---|---|---|---|")
    for n_procs, t in table.items():
        print(f"| {n_procs} | {t['starts']} | {t['one_trained']} | {t['refused_one_line']} | "
              f"{t['refused_badly']} | {t['corrupt']} |")
    return all(t["one_trained"] == t["starts"] and not t["refused_badly"] and not t["corrupt"]
               and t["refused_one_line"] == t["starts"] * (n_procs - 1)
               for n_procs, t in table.items())


def _valid_output(kind: str, out: Path, n_items: int) -> bool:
    """Whether a writer's output is whole."""
    try:
        if kind == "convert_csv":
            with open(out, newline="") as fh:
                lines = list(csv.reader(fh))
            return len(lines) == n_items + 1 and all(len(r) == len(lines[0]) for r in lines)
        if kind == "convert_npz":
            from mlrpl.data.labelset import LabelSet
            return LabelSet.load(out).num_items == n_items
        if kind == "thresholds":
            return bool(json.loads(out.read_text()))
        if kind == "export":
            import onnxruntime
            sess = onnxruntime.InferenceSession(str(out / "model.onnx"))
            names = (out / "classes.txt").read_text().split()
            size = json.loads((out / "preprocess.json").read_text())["size"]
            h, w = (size, size) if isinstance(size, int) else size
            x = np.zeros((1, 3, h, w), dtype=np.float32)
            probs = sess.run(["probabilities"], {"image": x})[0]
            return probs.shape == (1, len(names)) and bool(json.loads(
                (out / "thresholds.json").read_text()))
    except Exception:  # noqa: BLE001 - anything unreadable is not whole
        return False
    return False


def writers_campaign(n: int, data, emb, work, env, args, rng) -> bool:
    run, cache = work / "writers_run", work / "writers_cache"
    rc, err = run_to_end(base_args(data, emb, cache, run, "pbce", 1), env, args.timeout)
    if rc != 0:
        print(f"writers: the model to export could not be trained (rc {rc}):\n{err[-2000:]}")
        return False
    n_items = len(list((data / "images" / "train").iterdir()))
    out_dir = work / "writers_out"
    ds = ["--dataset", "yolo", "--root", str(data), "--split", "train"]
    writers = {
        "convert_csv": (["data", "convert", *ds, "--out"], out_dir / "labels.csv"),
        "convert_npz": (["data", "convert", *ds, "--out"], out_dir / "labels.npz"),
        "thresholds": (["tune-thresholds", "--checkpoint", str(run / "last.pt"), "--out"],
                       out_dir / "thr.json"),
        "export": (["export", "--checkpoint", str(run / "last.pt"), "--out"],
                   out_dir / "export"),
    }
    table = {}
    for kind, (argv, out) in writers.items():
        t = table.setdefault(kind, {"kills": 0, "whole_or_absent": 0, "rerun_ok": 0,
                                    "stray": 0})
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        t0 = time.time()
        rc, err = run_to_end(argv + [str(out)], env, args.timeout)
        duration = time.time() - t0
        if rc != 0:
            print(f"{kind}: the writer fails without a kill (rc {rc}): {err.strip()[-500:]}")
            return False
        for k in range(n):
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            if k % 2:  # half the kills replace an existing output
                run_to_end(argv + [str(out)], env, args.timeout)
            force = ["--force"] if out.exists() else []
            delay = rng.uniform(0.0, duration)
            p = launch(argv + [str(out), *force], env)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            t["kills"] += 1
            whole = not out.exists() or _valid_output(kind, out, n_items)
            t["whole_or_absent"] += int(whole)
            again = argv + [str(out)] + (["--force"] if out.exists() else [])
            rc, err = run_to_end(again, env, args.timeout)
            ok = rc == 0 and _valid_output(kind, out, n_items)
            t["rerun_ok"] += int(ok)
            left = [q.name for q in out_dir.iterdir() if q.name.endswith(".tmp")
                    or ".tmp" in q.name or q.name.startswith(".")]
            t["stray"] += len(left)
            print(f"{kind} #{k}: kill at {delay:.1f}s of {duration:.1f}s: whole_or_absent="
                  f"{whole} rerun_ok={ok} stray={left}"
                  + (f" rerun: {err.strip()[-300:]}" if not ok else ""), flush=True)
    print()
    print("| writer | SIGKILLs | output whole or absent after the kill | rerun whole | "
          "stray temporary files |")
    print("|---|---|---|---|---|")
    for kind, t in table.items():
        print(f"| {kind} | {t['kills']} | {t['whole_or_absent']} | {t['rerun_ok']} | "
              f"{t['stray']} |")
    return all(t["whole_or_absent"] == t["kills"] == t["rerun_ok"] and not t["stray"]
               for t in table.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="pbce,sst,hst,satl")
    ap.add_argument("--kills", type=int, default=20, help="random kills per method")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--concurrent", type=int, default=0,
                    help="double and triple starts on one run directory (N of each)")
    ap.add_argument("--writers", type=int, default=0,
                    help="random kills of each other writer (data convert, tune-thresholds, "
                         "export)")
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
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    methods = args.methods.split(",") if args.kills else []
    concurrent_ok = True
    if args.concurrent:
        concurrent_ok = concurrent_campaign(args.concurrent, data, emb, work, env, args, rng)
    if args.writers:
        concurrent_ok = writers_campaign(args.writers, data, emb, work, env, args,
                                         rng) and concurrent_ok
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
    if not methods:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
        return 0 if concurrent_ok else 1
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
    return 1 if bad or not concurrent_ok else 0


if __name__ == "__main__":
    raise SystemExit(main())

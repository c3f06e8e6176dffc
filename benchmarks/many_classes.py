"""Every method end to end at many classes on CPU: the generated shapes set at C = 1,000.

    python benchmarks/many_classes.py                                   # C = 1000, every method
    python benchmarks/many_classes.py --methods pbce sst --epochs 5 --threads 2
    python benchmarks/many_classes.py --classes 50 --n-train 200 --n-val 100 --epochs 1 \\
        --methods pbce                                                  # a smoke check
    python benchmarks/many_classes.py --generate-only                   # the data set alone

Data: the many-class mode of the synthetic shapes set (:mod:`mlrpl.data.synthetic`: shape x
colour x style classes, a Zipf long tail of class frequency, scenes of co-occurring classes with
partner and never-together pairs, 0 to 6 objects an image), ``--classes`` classes (default
1,000), ``--n-train`` / ``--n-val`` images (2,000 / 500) of ``--size`` px (96), generated once
under ``--root`` (default ``<cache>/shapes<C>-n<train>-<val>-px<size>-seed<seed>``, the cache
being ``$MLRPL_CACHE`` or ``.cache/mlrpl`` in the repository) and reused after.

Training: the library's own path, ``mlrpl train`` in a fresh process per method, from the pbce
CPU preset (``configs/coco128_pbce_cpu.yaml``: frozen EfficientNet-Lite0, feature maps computed
once and cached) pointed at the generated set (images resized to ``--image-size``, default 224:
7x7 maps), an HCP mask with ``--known`` of the labels known (0.3), then the method's recipe for
the ``cpu-cached`` regime (:func:`mlrpl.methods.recipe`, as a sweep applies it: the SARL trunk at
D = 256, Adam 1e-3), then ``--epochs`` epochs (default 3, in place of the recipe's) and, for the
methods with a pseudo-labelling or blending phase, ``method.start_epoch=--start-epoch`` (default
1: from the second epoch, so that a short run times every branch; the papers' 5 needs 6 epochs or
more), ``train.threads=--threads`` when given, then any extra ``key=value`` arguments. The
feature cache is built first (``mlrpl cache``), so that no method's time or memory counts it.

Per method: the epochs run, seconds per epoch (training, and evaluation on the val split, means
over the epochs, from the run's ``summary.csv``), the peak resident memory of its process
(``ru_maxrss``), the last epoch's mAP on the val split (``metrics.json``; classes without a
positive in the val split are left out of it, as always) and the wall time of the process. The
table is printed and written to ``<out>/<tag>.csv`` (out: ``benchmarks/results/many-classes``;
tag: ``c<C>_n<train>-<val>_px<size>_e<epochs>``), the runs under ``<out>/runs/<tag>/<method>/``
with the process output beside them (``<method>.out``). A method whose run finished and has its
row in the table is not trained again (the same command resumes) unless ``--force``, which
trains it again (the old run moved aside by ``run.overwrite``). The exit status is 1 if a method
failed; the others still run.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "coco128_pbce_cpu.yaml"
METHODS = ["pbce", "ssgrl", "sst", "hst", "satl", "sarb", "dsrb", "clsl", "sr"]
REGIME = "cpu-cached"
FIELDS = ["method", "status", "epochs", "train_s_per_epoch", "eval_s_per_epoch", "wall_s",
          "peak_rss_mb", "mAP_last", "classes", "n_train", "n_val", "image_px", "input_px",
          "known", "start_epoch", "threads", "run_dir"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- arguments -----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000,
                    help="number of classes (11 to 2049: the many-class mode; 2 to 10: the "
                         "named classes)")
    ap.add_argument("--n-train", type=int, default=2000, help="training images")
    ap.add_argument("--n-val", type=int, default=500, help="validation images")
    ap.add_argument("--size", type=int, default=96, help="side of the generated images (px)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data set and of the runs")
    ap.add_argument("--root", type=Path, default=None, help="the data set's folder (default: "
                    "<cache>/shapes<C>-n<train>-<val>-px<size>-seed<seed>)")
    ap.add_argument("--cache", type=Path, default=None, help="the cache folder: data set and "
                    "feature maps (default: $MLRPL_CACHE or .cache/mlrpl in the repository)")
    ap.add_argument("--methods", nargs="+", default=METHODS, help="methods to train")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of every run")
    ap.add_argument("--start-epoch", type=int, default=1,
                    help="method.start_epoch of the methods that have one (0-based)")
    ap.add_argument("--known", type=float, default=0.3, help="known share of the labels (HCP)")
    ap.add_argument("--image-size", type=int, default=224, help="backbone input size (px)")
    ap.add_argument("--threads", type=int, default=None, help="train.threads of every run")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "many-classes")
    ap.add_argument("--force", action="store_true", help="train finished methods again")
    ap.add_argument("--generate-only", action="store_true",
                    help="generate the data set, print its folder and stop")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="extra overrides of every run, e.g. train.batch_size=32")
    args = ap.parse_args(argv)
    from mlrpl.data.synthetic import MAX_CLASSES
    for name, lo in (("classes", 2), ("n_train", 1), ("n_val", 1), ("size", 32), ("seed", 0),
                     ("epochs", 1), ("start_epoch", 0), ("image_size", 32), ("threads", 1)):
        v = getattr(args, name)
        if v is not None and v < lo:
            ap.error(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v}")
    if args.classes > MAX_CLASSES:
        ap.error(f"--classes must be at most {MAX_CLASSES} (the generator's vocabulary), got "
                 f"{args.classes}")
    if not 0 < args.known <= 1:
        ap.error(f"--known must be a share in (0, 1], got {args.known}")
    from mlrpl.methods import list_methods
    unknown = [m for m in args.methods if m not in list_methods()]
    if unknown:
        ap.error(f"--methods: unknown method(s) {', '.join(unknown)}; registered: "
                 f"{', '.join(list_methods())}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        ap.error(f"extra arguments must be key=value overrides, got {' '.join(bad)}")
    return args


# ---- data and configs ----------------------------------------------------------------------------
def cache_dir(args) -> Path:
    return (args.cache or Path(os.environ.get("MLRPL_CACHE", REPO / ".cache" / "mlrpl"))).resolve()


def make_data(args) -> Path:
    """The generated set's folder (made on the first call; a later call finds it)."""
    from mlrpl.data.synthetic import make_shapes_dataset
    root = args.root or cache_dir(args) / (f"shapes{args.classes}-n{args.n_train}-{args.n_val}"
                                           f"-px{args.size}-seed{args.seed}")
    t = time.perf_counter()
    make_shapes_dataset(root, n_train=args.n_train, n_val=args.n_val, size=args.size,
                        num_classes=args.classes, seed=args.seed)
    log(f"data: {root} ({args.classes} classes, {args.n_train} train / {args.n_val} val images "
        f"of {args.size} px; {time.perf_counter() - t:.1f} s)")
    return root.resolve()


def data_overrides(args, root: Path) -> list[str]:
    """What the data and the feature cache of every run are: the same for `mlrpl cache`."""
    return [f"data.root={root}", "data.dataset=yolo", "data.train_split=train",
            "data.val_split=val", f"data.image_size={args.image_size}", "data.protocol=hcp",
            f"model.cache_dir={cache_dir(args)}", "train.progress=never",
            *([f"train.threads={args.threads}"] if args.threads else [])]


def run_overrides(args, method: str, run_dir: Path) -> list[str]:
    """The overrides of one method's run, in the order a sweep composes them (recipe after the
    common keys) and this benchmark's epochs after the recipe."""
    from mlrpl.methods import get_method_class, recipe
    steps = recipe(method, REGIME)
    if steps is None:
        raise ValueError(f"method {method!r} declares no {REGIME} recipe")
    has_start = "start_epoch" in get_method_class(method).Config.__dataclass_fields__
    return [f"method.name={method}", f"data.known_proportion={args.known}", f"seed={args.seed}",
            "train.tensorboard=false", *steps, f"train.epochs={args.epochs}",
            *([f"method.start_epoch={args.start_epoch}"] if has_start else []),
            f"run.dir={run_dir}", *args.overrides]


# ---- running -------------------------------------------------------------------------------------
def run_process(cmd: list[str], out_file: Path) -> tuple[int, float, float]:
    """Run `cmd` with its output in `out_file`; (exit status, wall s, peak RSS of it in MB)."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(out_file, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)     # its own rusage: peak RSS in kB on Linux
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t, usage.ru_maxrss / 1024


def last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def finished(run_dir: Path, epochs: int) -> bool:
    try:
        return json.loads((run_dir / "metrics.json").read_text())["epochs"] == epochs
    except (OSError, ValueError, KeyError):
        return False


def measure(args, method: str, root: Path, folder: Path) -> dict:
    """Train `method` in its own process and read back its numbers."""
    from mlrpl.engine.rundir import read_summary
    run_dir = folder / method
    row = {"method": method, "classes": args.classes, "n_train": args.n_train,
           "n_val": args.n_val, "image_px": args.size, "input_px": args.image_size,
           "known": args.known, "start_epoch": args.start_epoch, "threads": args.threads or "",
           "run_dir": os.path.relpath(run_dir, REPO)}
    try:
        overrides = run_overrides(args, method, run_dir)
    except ValueError as e:
        return {**row, "status": f"failed: {e}"}
    if run_dir.exists():
        overrides.append("run.overwrite=true")
    cmd = [sys.executable, "-m", "mlrpl", "train", "--config", str(BASE),
           *data_overrides(args, root), *overrides]
    rc, wall, rss = run_process(cmd, folder / f"{method}.out")
    row.update(wall_s=f"{wall:.1f}", peak_rss_mb=f"{rss:.0f}")
    if rc != 0 or not finished(run_dir, args.epochs):
        return {**row, "status": f"failed ({rc}): {last_line(folder / f'{method}.out')}"}
    summary = read_summary(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())

    def mean(key):
        return sum(float(r[key]) for r in summary) / len(summary)
    return {**row, "status": "ok", "epochs": len(summary),
            "train_s_per_epoch": f"{mean('time_train_s'):.2f}",
            "eval_s_per_epoch": f"{mean('time_eval_s'):.2f}",
            "mAP_last": f"{float(metrics['last']['mAP']):.2f}"}


def load_rows(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


def save_rows(path: Path, rows: dict) -> None:
    from mlrpl.utils.files import atomic_write
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for method in sorted(rows, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS)):
        w.writerow(rows[method])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()), mode="w", newline="")


def print_table(rows: dict, methods: list[str]) -> None:
    print(f"\n{'method':<8} {'epochs':>6} {'train s/ep':>10} {'eval s/ep':>9} {'peak RSS MB':>11} "
          f"{'mAP last':>8} {'wall s':>7}  status")
    for m in methods:
        r = rows[m]
        print(f"{m:<8} {r.get('epochs', ''):>6} {r.get('train_s_per_epoch', ''):>10} "
              f"{r.get('eval_s_per_epoch', ''):>9} {r.get('peak_rss_mb', ''):>11} "
              f"{r.get('mAP_last', ''):>8} {r.get('wall_s', ''):>7}  {r['status']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    root = make_data(args)
    if args.generate_only:
        print(root)
        return 0
    tag = f"c{args.classes}_n{args.n_train}-{args.n_val}_px{args.size}_e{args.epochs}"
    out = args.out.resolve()
    folder, table = out / "runs" / tag, out / f"{tag}.csv"
    cmd = [sys.executable, "-m", "mlrpl", "cache", "--config", str(BASE),
           *data_overrides(args, root)]
    rc, wall, rss = run_process(cmd, folder / "cache.out")
    if rc != 0:
        log(f"feature cache failed: {last_line(folder / 'cache.out')}")
        return 1
    log(f"feature cache: {wall:.1f} s, peak RSS {rss:.0f} MB ({folder / 'cache.out'})")
    rows = load_rows(table)
    for method in args.methods:
        done = rows.get(method, {}).get("status") == "ok" and finished(folder / method,
                                                                         args.epochs)
        if done and not args.force:
            log(f"{method}: finished earlier, kept ({table})")
            continue
        log(f"{method}: training {args.epochs} epoch(s) at C = {args.classes}")
        rows[method] = measure(args, method, root, folder)
        save_rows(table, rows)
        r = rows[method]
        log(f"{method}: {r['status']}" + (
            f", {r['train_s_per_epoch']} s/epoch, peak RSS {r['peak_rss_mb']} MB, "
            f"mAP {r['mAP_last']}" if r["status"] == "ok" else ""))
    print_table(rows, args.methods)
    log(f"wrote {table}")
    return 0 if all(rows[m]["status"] == "ok" for m in args.methods) else 1


if __name__ == "__main__":
    sys.exit(main())

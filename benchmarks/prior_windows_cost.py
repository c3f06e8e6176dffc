"""What the class prior's windows cost: milliseconds per image of the prior alone, per window set.

    python benchmarks/prior_windows_cost.py                       # 14 x 14 maps, F = 1280, C = 80
    python benchmarks/prior_windows_cost.py --side 7 --classes 1000 --threads 2

Times ``ClassifierPrior.forward`` (the ImageNet classifier on every window, the mixing, the
per-class maximum and the mean over sizes) on random feature maps of EfficientNet-Lite0's shape,
with random classifier weights (the cost does not depend on their values), for each window set
of ``--regions``, interleaved over ``--repeats`` rounds so that a busy machine slows every set
alike; prints the median per set and its ratio to the whole image alone (``[1.0]``). For scale,
the same rounds time the backbone's forward pass on images of the matching size (``--backbone``,
EfficientNet-Lite0 with random weights at 448 pixels for a 14 x 14 map: the cost does not depend
on the weights either), and each set's share of backbone + prior. A cached-feature pbce step on the same batch is
only a (B, F) x (F, C) product, which the prior would dominate; the trainer therefore computes a
cached map's prior once, before the first epoch (docs/decisions.md, "Once per cached map").
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=14, help="feature map side (448-pixel input: 14)")
    ap.add_argument("--features", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--regions", nargs="*", default=["1.0", "1.0,0.5", "1.0,0.5,0.25"])
    ap.add_argument("--backbone", default="efficientnet_lite0",
                    help="backbone timed for scale (random weights); 'none' skips it")
    args = ap.parse_args(argv)
    from mlrpl.models.prior import ClassifierPrior, windows
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(1000, args.features, generator=g) * 0.01, torch.zeros(1000)
    mix = torch.softmax(torch.randn(args.classes, 1000, generator=g), 1)
    maps = torch.randn(args.batch, args.features, args.side, args.side, generator=g)
    sets = [[float(x) for x in r.split(",")] for r in args.regions]
    priors = [ClassifierPrior(w, b, mix, regions=r) for r in sets]
    runs = [lambda p=p: p(maps) for p in priors]
    if args.backbone != "none":
        from mlrpl.models.backbones import create_backbone
        net = create_backbone(args.backbone, pretrained=False).eval()
        images = torch.randn(args.batch, 3, 32 * args.side, 32 * args.side, generator=g)
        runs.append(lambda: net(images))
    times: list[list[float]] = [[] for _ in runs]
    with torch.no_grad():
        for run in runs:
            run()                                      # warm-up
        for _ in range(args.repeats):
            for i, run in enumerate(runs):
                t0 = time.perf_counter()
                run()
                times[i].append((time.perf_counter() - t0) / args.batch * 1e3)
    base = statistics.median(times[0])
    net_ms = statistics.median(times[-1]) if args.backbone != "none" else None
    print(f"prior on {args.batch} maps of {args.features} x {args.side} x {args.side}, "
          f"{args.classes} classes, {args.threads} thread(s); median of {args.repeats}")
    for r, t in zip(sets, times):
        n = sum(len(windows(args.side, f)[1]) ** 2 for f in r)
        ms = statistics.median(t)
        share = "" if net_ms is None else f"  {100 * ms / (ms + net_ms):5.1f}% of backbone + prior"
        print(f"  regions={str(r):22s} {n:3d} windows  {ms:7.3f} ms per image  "
              f"x{ms / base:5.1f}{share}")
    if net_ms is not None:
        print(f"  {args.backbone} forward at {32 * args.side} pixels: {net_ms:.1f} ms per image")


if __name__ == "__main__":
    main()

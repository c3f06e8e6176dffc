"""What the class prior's windows cost: milliseconds per image of the prior alone, per window set.

    python benchmarks/prior_windows_cost.py                       # 14 x 14 maps, F = 1280, C = 80
    python benchmarks/prior_windows_cost.py --side 7 --classes 1000 --threads 2

Times ``ClassifierPrior.forward`` (the ImageNet classifier on every window, the mixing, the
per-class maximum and the mean over sizes) on random feature maps of EfficientNet-Lite0's shape,
with random classifier weights (the cost does not depend on their values), for each window set
of ``--regions``, interleaved over ``--repeats`` rounds so that a busy machine slows every set
alike; prints the median per set and its ratio to the whole image alone (``[1.0]``). For scale,
a cached-feature pbce step on the same batch is a (B, F) x (F, C) product: the prior dominates it,
while beside a backbone forward pass (EfficientNet-Lite0 at 448 pixels: about 1.6 GMAC per image)
it is small.
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
    args = ap.parse_args(argv)
    from mlrpl.models.prior import ClassifierPrior, windows
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(1000, args.features, generator=g) * 0.01, torch.zeros(1000)
    mix = torch.softmax(torch.randn(args.classes, 1000, generator=g), 1)
    maps = torch.randn(args.batch, args.features, args.side, args.side, generator=g)
    sets = [[float(x) for x in r.split(",")] for r in args.regions]
    priors = [ClassifierPrior(w, b, mix, regions=r) for r in sets]
    times: list[list[float]] = [[] for _ in sets]
    with torch.no_grad():
        for p in priors:
            p(maps)                                    # warm-up
        for _ in range(args.repeats):
            for i, p in enumerate(priors):
                t0 = time.perf_counter()
                p(maps)
                times[i].append((time.perf_counter() - t0) / args.batch * 1e3)
    base = statistics.median(times[0])
    print(f"prior on {args.batch} maps of {args.features} x {args.side} x {args.side}, "
          f"{args.classes} classes, {args.threads} thread(s); median of {args.repeats}")
    for r, t in zip(sets, times):
        n = sum(len(windows(args.side, f)[1]) ** 2 for f in r)
        print(f"  regions={str(r):22s} {n:3d} windows  {statistics.median(t):7.3f} ms per image  "
              f"x{statistics.median(t) / base:5.1f}")


if __name__ == "__main__":
    main()

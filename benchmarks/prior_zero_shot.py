"""The ImageNet class prior alone (``model.prior: imagenet``, no training, no label of the set
used): its mAP on a set's evaluation split, i.e. what a trained head adds on top of it.

    MLRPL_DATA=../shared/data python benchmarks/prior_zero_shot.py --set coco128
    MLRPL_DATA=../shared/data python benchmarks/prior_zero_shot.py --set voc2007-2k --top-k 1 3 10
    MLRPL_DATA=../shared/data python benchmarks/prior_zero_shot.py --set voc2007-2k \
        --regions 1.0 1.0,0.5,0.25 data.val_split=test        # the windows, on the test photos

Reads the set's pbce CPU preset (the cached EfficientNet-Lite0 maps of its evaluation split;
``key=value`` arguments override it) and prints, per prior setting, name matching
(``model.prior.match``, default: a row for ``names`` and one for ``wordnet``) and window set
(``model.prior.regions``, default: the whole image alone), the mAP of sigmoid(prior) with the
library's metrics, and the classes whose closest ImageNet name is least similar.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="coco128", choices=["coco128", "voc2007-2k"])
    ap.add_argument("--top-k", type=int, nargs="+", default=[10])
    ap.add_argument("--temperature", type=float, nargs="+", default=[0.1])
    ap.add_argument("--match", nargs="+", default=["names", "wordnet"],
                    choices=["wordnet", "names"],
                    help="model.prior.match: name neighbours alone, or with WordNet's categories "
                         "(default: both, one row each)")
    ap.add_argument("--regions", nargs="+", default=["1.0"],
                    help="window sets, each comma-separated fractions (model.prior.regions)")
    ap.add_argument("overrides", nargs="*", help="key=value for the preset")
    args = ap.parse_args(argv)
    # key=value given after --regions: argparse reads them as window sets
    args.overrides += [r for r in args.regions if "=" in r]
    args.regions = [r for r in args.regions if "=" not in r]

    from mlrpl.config import load_config
    from mlrpl.engine.evaluate import score
    from mlrpl.engine.experiment import build_backbone, load_splits, make_dataset
    from mlrpl.models.prior import build_prior

    torch.set_num_threads(1)
    cfg = load_config(REPO / "configs" / f"{args.set}_pbce_cpu.yaml", args.overrides)
    _, val = load_splits(cfg)
    backbone = build_backbone(cfg)
    ds, kept = make_dataset(cfg, val, None, backbone, "cpu", train=False)
    if kept is not None:
        val = val.subset(kept)
    print(f"{args.set}: {len(val)} evaluation images x {val.num_classes} classes")
    print("| top_k | temperature | match | regions | mAP (prior alone) |")
    print("|---:|---:|---|---|---:|")
    prior = None
    grid = [(k, t, match, regions) for k in args.top_k for t in args.temperature
            for match in args.match for regions in args.regions]
    for k, t, match, regions in grid:
        c = load_config(REPO / "configs" / f"{args.set}_pbce_cpu.yaml",
                        list(args.overrides) + [
                            "model.prior.name=imagenet", f"model.prior.top_k={k}",
                            f"model.prior.temperature={t}", f"model.prior.match={match}",
                            f"model.prior.regions=[{regions}]"])
        prior = build_prior(c, backbone, list(val.classes))
        with torch.no_grad():
            s = torch.sigmoid(torch.cat([
                prior(torch.from_numpy(np.asarray(ds.features[i:i + 64], np.float32)))
                for i in range(0, len(ds.features), 64)])).numpy()
        m = score(s, val.labels, 0.5, val.classes)
        print(f"| {k} | {t} | {match} | [{regions}] | {m['mAP']:.2f} |")
    far = sorted(prior.closest.items(), key=lambda kv: kv[1][1])[:8]
    print("least covered classes (closest ImageNet name, cosine): "
          + ", ".join(f"{c} ({n}, {s:.2f})" for c, (n, s) in far))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

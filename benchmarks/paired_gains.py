"""Paired gains over a baseline in a sweep directory (the plug-in, prior, clsl and fine-tuning
sweeps of benchmarks/RESULTS.md): per configuration and known proportion, the mean last-epoch mAP
over seeds and the mean (min, max) of the per-seed difference to the baseline run with the same
proportion and seed.

    python benchmarks/paired_gains.py benchmarks/results/voc2007-2k-plugins [--baseline pbce]
    python benchmarks/paired_gains.py benchmarks/results/voc2007-2k-prior-aware \
        --classes bus,car,cat,motorbike,person,train        # mAP over these classes only
    python benchmarks/paired_gains.py benchmarks/results/coco128-prior-aware --gap pbce+prior

``--classes``: the mean AP of the listed classes (the runs' per_class_last.csv) instead of the
run's mAP. ``--gap LABEL``: per configuration and proportion, the share of the distance from LABEL
to LABEL with every label known (its p = 1 runs, same seed) that the configuration closes.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

RUN = re.compile(r"^(?P<label>.+)_p(?P<p>[0-9.]+)_s(?P<seed>\d+)$")


def planned_epochs(run_dir: Path) -> int | None:
    """The epochs a run was configured for (its config.yaml), None when it cannot be read."""
    import yaml
    try:
        return int(yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def class_map(run_dir: Path, classes: list[str]) -> float | None:
    """Mean last-epoch AP over `classes` (those with an evaluation positive)."""
    import csv
    f = run_dir / "per_class_last.csv"
    if not f.is_file():
        return None
    with open(f) as fh:
        rows = {r["class"]: r for r in csv.DictReader(fh)}
    aps = [float(rows[c]["ap_voc"]) for c in classes if c in rows and int(rows[c]["eval_pos"]) > 0]
    return sum(aps) / len(aps) if aps else None


def collect(sweep: Path, classes: list[str] | None = None) -> dict:
    out = defaultdict(dict)      # (label, p) -> {seed: mAP}
    for d in sorted((sweep / "runs").iterdir()):
        m = RUN.match(d.name)
        f = d / "metrics.json"
        if not m or not f.is_file():
            continue
        r = json.loads(f.read_text())
        if r.get("epochs") != planned_epochs(d):   # unfinished
            continue
        mAP = (r.get("last") or {}).get("mAP") if not classes else class_map(d, classes)
        if mAP is not None:
            out[(m["label"], float(m["p"]))][int(m["seed"])] = float(mAP)
    return out


def gap_table(sweep: Path, reference: str, classes: list[str] | None = None) -> str:
    """Share of the gap from `reference` to `reference` at p = 1 (same seed) each configuration
    closes, per proportion: mean [min, max] over seeds."""
    res = collect(sweep, classes)
    upper = res.get((reference, 1.0), {})
    ps = sorted({k[1] for k in res if k[1] < 1.0})
    labels = sorted({k[0] for k in res if k[0] != reference})
    lines = [f"| configuration | " + " | ".join(f"{int(p * 100)}%: gap closed" for p in ps) + " |",
             "|---|" + "---:|" * len(ps)]
    for lab in labels:
        cells = []
        for p in ps:
            runs, base = res.get((lab, p), {}), res.get((reference, p), {})
            seeds = sorted(set(runs) & set(base) & set(upper))
            shares = [(runs[s] - base[s]) / (upper[s] - base[s]) for s in seeds
                      if upper[s] != base[s]]
            cells.append(f"{100 * sum(shares) / len(shares):+.0f}% [{100 * min(shares):+.0f}, "
                         f"{100 * max(shares):+.0f}]" if shares else "")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(sweep: Path, baseline: str = "pbce", classes: list[str] | None = None) -> str:
    res = collect(sweep, classes)
    labels = sorted({k[0] for k in res}, key=lambda s: (s != baseline, s))
    ps = sorted({k[1] for k in res})
    head = "| configuration | " + " | ".join(f"{int(p * 100)}% mAP | gain" for p in ps) + \
        " | mean gain |"
    lines = [head, "|---|" + "---:|---:|" * len(ps) + "---:|"]
    for lab in labels:
        cells, gains_all = [], []
        for p in ps:
            runs, base = res.get((lab, p), {}), res.get((baseline, p), {})
            if not runs:
                cells += ["", ""]
                continue
            mean = sum(runs.values()) / len(runs)
            seeds = sorted(set(runs) & set(base))
            if lab == baseline or not seeds:
                cells += [f"{mean:.2f} (n={len(runs)})", ""]
                continue
            d = [runs[s] - base[s] for s in seeds]
            gains_all.append(sum(d) / len(d))
            cells += [f"{mean:.2f}", f"{sum(d) / len(d):+.2f} [{min(d):+.2f}, {max(d):+.2f}]"]
        mg = f"{sum(gains_all) / len(gains_all):+.2f}" if gains_all else ""
        lines.append(f"| {lab} | " + " | ".join(cells) + f" | {mg} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("--baseline", default="pbce")
    ap.add_argument("--classes", default=None, help="comma-separated classes: their mean AP")
    ap.add_argument("--gap", default=None, metavar="LABEL",
                    help="the share of the gap from LABEL to LABEL at p = 1 closed instead")
    a = ap.parse_args()
    cls = a.classes.split(",") if a.classes else None
    print(gap_table(Path(a.sweep), a.gap, cls) if a.gap else table(Path(a.sweep), a.baseline, cls))

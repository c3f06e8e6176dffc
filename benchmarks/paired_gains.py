"""Paired gains over a baseline in a sweep directory (the plug-in, prior, clsl and fine-tuning
sweeps of benchmarks/RESULTS.md): per configuration and known proportion, the mean last-epoch mAP
over seeds and the mean (min, max) of the per-seed difference to the baseline run with the same
proportion and seed.

    python benchmarks/paired_gains.py benchmarks/results/voc2007-2k-plugins [--baseline pbce]
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


def collect(sweep: Path) -> dict:
    out = defaultdict(dict)      # (label, p) -> {seed: mAP}
    for d in sorted((sweep / "runs").iterdir()):
        m = RUN.match(d.name)
        f = d / "metrics.json"
        if not m or not f.is_file():
            continue
        r = json.loads(f.read_text())
        if r.get("epochs") != planned_epochs(d):   # unfinished
            continue
        mAP = (r.get("last") or {}).get("mAP")
        if mAP is not None:
            out[(m["label"], float(m["p"]))][int(m["seed"])] = float(mAP)
    return out


def table(sweep: Path, baseline: str = "pbce") -> str:
    res = collect(sweep)
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
    a = ap.parse_args()
    print(table(Path(a.sweep), a.baseline))

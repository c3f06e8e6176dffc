"""Pseudo-label precision / recall per epoch, mean over seeds, from a sweep directory.

    python benchmarks/pl_per_epoch.py benchmarks/results/voc2007-2k --proportions 0.1,0.3,0.5

Prints one Markdown table per known proportion: a row per epoch (from the first epoch any
method pseudo-labels), a column per method and pseudo-label source (``pl_<source>_*`` columns of
each run's summary.csv), each cell "precision / recall (count)" in percent, averaged over the
seeds that have the epoch. Reads what is on disk; trains nothing.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from mlrpl.experiments.reports.tables import pl_sources, read_summary


def _mean(values):
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def collect(sweep_dir: Path, methods=None):
    """{p: {(method, source): {epoch: [(precision, recall, n), ...]}}} over the run dirs."""
    out = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for d in sorted((sweep_dir / "runs").iterdir()):
        rec = d / "sweep_run.json"
        if not rec.is_file():
            continue
        info = json.loads(rec.read_text())
        if info.get("status") != "done" or (methods and info["method"] not in methods):
            continue
        rows = read_summary(d)
        for src in pl_sources(rows[0] if rows else {}):
            for r in rows:
                n = r.get(f"pl_{src}_n", 0)
                out[float(info["p"])][(info["method"], src)][int(r["epoch"])].append(
                    (r.get(f"pl_{src}_precision", math.nan), r.get(f"pl_{src}_recall", math.nan), n))
    return out


def table(cells) -> str:
    cols = sorted(cells)
    epochs = sorted({e for c in cols for e, v in cells[c].items() if any(x[2] for x in v)})
    head = "| epoch | " + " | ".join(f"{m} {s}" for m, s in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for e in epochs:
        row = [str(e)]
        for c in cols:
            v = cells[c].get(e, [])
            if not v or not any(x[2] for x in v):
                row.append("–")
                continue
            p, r, n = (_mean([x[i] for x in v]) for i in range(3))
            row.append(f"{p:.1f} / {r:.1f} ({n:.0f})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--proportions", default=None, help="comma-separated (default: all)")
    ap.add_argument("--methods", default=None, help="comma-separated labels (default: all)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",") if args.methods else None
    data = collect(Path(args.sweep_dir), methods)
    props = ([float(x) for x in args.proportions.split(",")] if args.proportions
             else sorted(data))
    for p in props:
        if p not in data:
            continue
        print(f"\n**{100 * p:g}% known** — pseudo-label precision / recall % (count per epoch), "
              f"mean over seeds\n")
        print(table(data[p]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

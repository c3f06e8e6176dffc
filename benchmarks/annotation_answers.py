"""What the annotation rounds' answers held: positives per round, and how many of them fell in
the classes that had no known positive at round 0 (the ones a model without the ImageNet prior
cannot point at).

    python benchmarks/annotation_answers.py benchmarks/results/annotation-rounds/coco128/pbce_prior-no

Reads the folder that ``benchmarks/annotation_rounds.py`` keeps per method and prior:
``s<seed>/labels.r0.csv`` and ``s<seed>/<strategy>/r<k>/answers.csv``. Prints one line per
strategy and seed, and the mean per round over the seeds.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path


def blind_classes(labels_r0: Path) -> set[str]:
    """The classes without a known positive in a round-0 label CSV (wide layout, blanks)."""
    with open(labels_r0, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    classes = rows[0][1:]
    seen = {c for r in rows[1:] for c, v in zip(classes, r[1:]) if v.strip() == "1"}
    return set(classes) - seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="<out>/<set>/<method>_prior-<yes|no>")
    args = ap.parse_args(argv)
    seeds = sorted(args.folder.glob("s*/labels.r0.csv"))
    if not seeds:
        raise SystemExit(f"{args.folder}: no s<seed>/labels.r0.csv (a folder of "
                         f"annotation_rounds.py's output, e.g. <out>/coco128/pbce_prior-no)")
    strategies = sorted({p.parent.parent.name for s in seeds
                         for p in s.parent.glob("*/r*/answers.csv")})
    print(f"{args.folder}: positives among each round's answers (in classes without a known "
          f"positive at round 0)")
    for strategy in strategies:
        totals: dict[int, list[tuple[int, int]]] = {}
        for labels in seeds:
            blind = blind_classes(labels)
            cells = []
            for answers in sorted(labels.parent.glob(f"{strategy}/r*/answers.csv"),
                                  key=lambda p: int(p.parent.name[1:])):
                with open(answers, newline="", encoding="utf-8") as fh:
                    pos = [r["label"] for r in csv.DictReader(fh) if r["value"].strip() == "1"]
                k = int(answers.parent.name[1:])
                n_blind = sum(c in blind for c in pos)
                totals.setdefault(k, []).append((len(pos), n_blind))
                cells.append(f"r{k} {len(pos)} ({n_blind})")
            print(f"  {strategy:16s} {labels.parent.name} ({len(blind)} classes without): "
                  + ", ".join(cells))
        mean = ", ".join(f"r{k} {sum(a for a, _ in v) / len(v):.1f} "
                         f"({sum(b for _, b in v) / len(v):.1f})" for k, v in sorted(totals.items()))
        print(f"  {strategy:16s} mean: {mean}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

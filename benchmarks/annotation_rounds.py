"""Annotation rounds, simulated: which strategy of ``mlrpl suggest`` buys the most mAP per label?

    MLRPL_DATA=../shared/data python benchmarks/annotation_rounds.py --set voc2007-2k
    python benchmarks/annotation_rounds.py --set coco128 --methods pbce --prior false \
        --strategies expected-gain --seeds 0 --rounds 1 train.threads=1      # a quick check

Start from an HCP mask of the training labels at 10% known (``--known``; the simulate protocol,
seeded with the experiment seed), written as a label CSV with blank unknown cells. Round 0 trains
on it. Each later round asks ``--budget`` unknown entries (default 2% of all training entries)
chosen by a strategy through the library's suggest function (:func:`mlrpl.suggest`), answers
them from the hidden full labels, merges the answers into the labels with the library's merge
function (:func:`mlrpl.merge_labels`), and trains again from scratch with the same recipe (the
set's ``<method>`` CPU preset on the merged CSV, ``data.known_proportion=1``), then takes the
last epoch's mAP on the evaluation split: VOC2007-2k trains on ``trainval`` and evaluates on
``test``; COCO128 trains on ``train2017`` and evaluates on ``val2017``. ``random`` gets twice as
many rounds (``--rounds``, default 3), the reference curve the others must beat at equal labels.

Writes ``<out>/<set>.csv`` (``method,prior,strategy,round,labels_added,seed,mAP``; round 0 is
listed under every strategy), ``<out>/<set>.png`` (mAP against labels added, one line per
strategy, mean over seeds with a min-max band, a panel per method and prior), and under
``<out>/<set>/<method>_prior-<yes|no>/s<seed>/`` the round-0 labels and run and, per strategy
and round, ``r<k>/ask.csv`` (as suggested), ``answers.csv`` (filled from the hidden labels),
``labels.csv`` (merged) and ``run/``. Finished rounds are skipped: the same command resumes,
and adds a strategy to the recorded ones. The repository keeps each run's summaries, not its
checkpoint: a finished round that a missing next round must suggest from is trained again
(deterministic; a mAP that differs from the recorded one is logged).
Extra ``key=value`` arguments go to every training run (e.g. ``train.threads=1``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from mlrpl.deploy.suggest import STRATEGIES  # noqa: E402  (the strategies a user can run)
# Not a strategy a user can run: the benchmark's reference, asked from the hidden labels.
ORACLE = "oracle-positives"
SETS = {
    # set: (reader, root under MLRPL_DATA, training split, evaluation split)
    "voc2007-2k": ("voc2007", "voc2007-2k", "trainval", "test"),
    "coco128": ("yolo", "coco128", "train2017", "val2017"),
}
FIELDS = ["method", "prior", "strategy", "round", "labels_added", "seed", "mAP"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- data ------------------------------------------------------------------------------------
def hidden_labels(ls) -> dict:
    """The full labels by resolved image path: what the simulated annotator answers from."""
    return {os.path.realpath(p): row for p, row in zip(ls.paths(), ls.labels)}


def prepare_set(name: str, out: Path):
    """(full training LabelSet, evaluation label CSV) of a set; the evaluation CSV written once
    (full labels), beside the runs."""
    from mlrpl.data import read_dataset
    from mlrpl.data.merge import write_labels_csv
    reader, folder, train_split, val_split = SETS[name]
    root = Path(os.environ["MLRPL_DATA"]) / folder
    train = read_dataset(reader, root, train_split)
    val_csv = out / name / "eval.csv"
    if not val_csv.is_file():
        val_csv.parent.mkdir(parents=True, exist_ok=True)
        write_labels_csv(read_dataset(reader, root, val_split), val_csv)
    return train, val_csv


# ---- runs ------------------------------------------------------------------------------------
def train_round(set_name, method, prior, seed, labels: Path, val_csv: Path, run: Path,
                extra, need_checkpoint: bool = False) -> float:
    """Train the set's preset of `method` on `labels` from scratch; the last epoch's mAP.
    `need_checkpoint`: a later round suggests from this run, so a finished run whose checkpoint
    is not here (a fresh clone keeps only the runs' summaries) is trained again; training is
    deterministic, and a different mAP is said."""
    import mlrpl
    metrics = run / "metrics.json"
    recorded = None
    if metrics.is_file() and need_checkpoint and not (run / "last.pt").is_file():
        recorded = float(json.loads(metrics.read_text(encoding="utf-8"))["last"]["mAP"])
        log(f"{run}: no checkpoint to suggest from; training it again")
    if not metrics.is_file() or recorded is not None:
        overrides = ["data.dataset=csv", f"data.root={labels}", f"data.val_root={val_csv}",
                     "data.train_split=null", "data.val_split=null", "data.known_proportion=1",
                     f"seed={seed}", f"run.dir={run}", "train.progress=never",
                     "train.tensorboard=false", *(["model.prior.name=imagenet"] if prior else []),
                     *extra]
        if run.exists():   # killed before it finished, or trained again for its checkpoint
            overrides.append("run.overwrite=true")
        mlrpl.train(REPO / "configs" / f"{set_name}_{method}_cpu.yaml", overrides)
    record = json.loads(metrics.read_text(encoding="utf-8"))
    m = float(record["last"]["mAP"])
    if recorded is not None and abs(m - recorded) > 1e-4:
        log(f"WARNING: {run} trained again gives mAP {m:.4f}, recorded {recorded:.4f}")
    return m


def load_results(path: Path) -> dict:
    out = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                key = (r["method"], r["prior"], r["strategy"], int(r["round"]), int(r["seed"]))
                out[key] = (int(r["labels_added"]), float(r["mAP"]))
    return out


def save_results(path: Path, results: dict) -> None:
    from mlrpl.utils.files import atomic_write
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    for (method, prior, strategy, rnd, seed), (added, m) in sorted(results.items()):
        w.writerow([method, prior, strategy, rnd, added, seed, f"{m:.4f}"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()), mode="w", newline="")


def plot(results: dict, png: Path, set_name: str) -> Path | None:
    """mAP against labels added, a line per strategy (mean over seeds, min-max band), a panel
    per (method, prior), with mlrpl's plotting helpers."""
    import numpy as np
    from mlrpl.experiments.reports.plots import _colors, new_figure, save_figure
    panels = sorted({(m, p) for m, p, *_ in results})
    if not panels:
        return None
    strategies = [s for s in STRATEGIES + (ORACLE,) if any(k[2] == s for k in results)]
    colors = _colors(strategies)
    fig, axes = new_figure(max(6.0, 4.5 * len(panels)), 4.0, ncols=len(panels))
    for ax, (method, prior) in zip(axes[0], panels):
        for s in strategies:
            cells: dict[int, list[float]] = {}
            for (m, p, ss, rnd, seed), (added, v) in results.items():
                if (m, p, ss) == (method, prior, s):
                    cells.setdefault(added, []).append(v)
            if not cells:
                continue
            xs = sorted(cells)
            ax.plot(xs, [np.mean(cells[x]) for x in xs], marker="o", ms=4, color=colors[s],
                    label=s + (" (reads the hidden labels)" if s == ORACLE else ""),
                    linestyle=":" if s == ORACLE else "-")
            if any(len(cells[x]) > 1 for x in xs):
                ax.fill_between(xs, [min(cells[x]) for x in xs], [max(cells[x]) for x in xs],
                                color=colors[s], alpha=0.15, linewidth=0)
        ax.set_title(f"{method}, ImageNet prior: {prior}")
        ax.set_xlabel("labels added by annotation (entries)")
        ax.set_ylabel("mAP (%), evaluation split, last epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{set_name}: mAP against labels added by annotation rounds\n(mean over "
                 f"seeds, min-max band)", fontsize=10)
    return save_figure(fig, png)


# ---- the loop ---------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="voc2007-2k", choices=sorted(SETS))
    ap.add_argument("--methods", nargs="+", default=["pbce", "satl"])
    ap.add_argument("--prior", choices=["both", "true", "false"], default="both",
                    help="model.prior.name=imagenet: with it, without it, or both")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                    choices=STRATEGIES + (ORACLE,),
                    help=f"{ORACLE}: a reference that reads the hidden labels (never run "
                         f"by default; see oracle_ask)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="rounds per strategy (random: twice)")
    ap.add_argument("--budget", type=float, default=0.02,
                    help="entries asked per round: a share of all training entries (< 1) or a "
                         "count (>= 1)")
    ap.add_argument("--known", type=float, default=0.1, help="known share of round 0 (HCP)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                    "annotation-rounds")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="extra overrides of every training run, e.g. train.threads=1")
    # key=value overrides anywhere on the line (after --strategies or --seeds too, whose lists
    # would otherwise take them as more of their values)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = [a for a in argv if "=" in a and not a.startswith("-")]
    args = ap.parse_args([a for a in argv if a not in extra])
    args.overrides = list(args.overrides) + extra
    shared = REPO.parent / "shared" / "data"
    if "MLRPL_DATA" not in os.environ and shared.is_dir():
        os.environ["MLRPL_DATA"] = str(shared)
    if "MLRPL_DATA" not in os.environ:
        sys.exit("set MLRPL_DATA to the folder holding coco128/ and voc2007-2k/")
    os.chdir(REPO)                 # the presets' feature cache (.cache/mlrpl) is the repo's

    import mlrpl
    from mlrpl.data.merge import write_labels_csv
    from mlrpl.data.simulate import simulate

    out = args.out.resolve()
    train, val_csv = prepare_set(args.set, out)
    truth = hidden_labels(train)
    n_entries = train.labels.size
    budget = int(args.budget) if args.budget >= 1 else max(1, round(args.budget * n_entries))
    priors = {"both": [False, True], "true": [True], "false": [False]}[args.prior]
    table = out / f"{args.set}.csv"
    results = load_results(table)
    log(f"{args.set}: {len(train)} training images x {train.num_classes} classes "
        f"({n_entries} entries), {budget} asked per round; results in {table}")

    for method in args.methods:
        for prior in priors:
            tag = "yes" if prior else "no"          # folder names
            col = "true" if prior else "false"      # the CSV's prior column
            for seed in args.seeds:
                base = out / args.set / f"{method}_prior-{tag}" / f"s{seed}"
                labels0 = base / "labels.r0.csv"
                if not labels0.is_file():
                    base.mkdir(parents=True, exist_ok=True)
                    partial = simulate(train.labels, "hcp", p=args.known, seed=seed)
                    write_labels_csv(train.with_labels(partial), labels0)
                log(f"{method} prior={tag} seed={seed}: round 0")
                asks = any(not (base / s / "r1" / "labels.csv").is_file()
                           for s in args.strategies if args.rounds > 0)
                m0 = train_round(args.set, method, prior, seed, labels0, val_csv,
                                 base / "r0-run", args.overrides, need_checkpoint=asks)
                for strategy in args.strategies:
                    results[(method, col, strategy, 0, seed)] = (0, m0)
                save_results(table, results)
                for strategy in args.strategies:
                    rounds = args.rounds * (2 if strategy == "random" else 1)
                    labels, run = labels0, base / "r0-run"
                    for rnd in range(1, rounds + 1):
                        key = (method, col, strategy, rnd, seed)
                        folder = base / strategy / f"r{rnd}"
                        merged, new_run = folder / "labels.csv", folder / "run"
                        # the next round suggests from this round's checkpoint
                        needed = rnd < rounds and not (
                            folder.parent / f"r{rnd + 1}" / "labels.csv").is_file()
                        if key in results and (new_run / "metrics.json").is_file() and (
                                not needed or (new_run / "last.pt").is_file()):
                            labels, run = merged, new_run
                            continue
                        folder.mkdir(parents=True, exist_ok=True)
                        if not merged.is_file():
                            ask, answers = folder / "ask.csv", folder / "answers.csv"
                            if strategy == ORACLE:
                                oracle_ask(labels, ask, truth, budget, seed * 1000 + rnd)
                            else:
                                mlrpl.suggest(run / "last.pt", budget, strategy, seed=seed,
                                              out=ask, force=True)
                            fill_answers(ask, answers, truth, train.classes)
                            n = mlrpl.merge_labels(labels, answers, merged)
                            log(f"{method} prior={tag} seed={seed} {strategy} round {rnd}: "
                                f"{n['filled']} answers merged ({n['filled_positive']} "
                                f"positive), {n['unknown_after']} entries unknown")
                        m = train_round(args.set, method, prior, seed, merged, val_csv,
                                        new_run, args.overrides, need_checkpoint=needed)
                        results[key] = (rnd * budget, m)
                        save_results(table, results)
                        log(f"{method} prior={tag} seed={seed} {strategy} round {rnd}: "
                            f"mAP {m:.2f} (round 0: {m0:.2f})")
                        labels, run = merged, new_run
    png = plot(results, out / f"{args.set}.png", args.set)
    log(f"wrote {table}" + (f" and {png}" if png else ""))
    return 0


def oracle_ask(labels: Path, ask: Path, truth: dict, budget: int, seed: int) -> None:
    """The reference that reads the hidden labels (``--strategies oracle-positives``): an ask
    file written from them, not from a model. Classes in turn, the fewest known positives first
    (one entry of each per turn), each class's hidden positives first (in a seeded random order),
    then its negatives. It shows what finding the positives is worth (not a bound: once every
    class has positives, negatives near the boundary can be worth more); no user has it, and it
    is never counted as a strategy."""
    import numpy as np
    from mlrpl.data import read_dataset
    from mlrpl.data.encoding import POS, UNK
    from mlrpl.deploy.suggest import _image_spelling, _round_robin, write_ask_file
    ls = read_dataset("csv", labels)
    partial = np.asarray(ls.labels)
    paths = ls.paths()
    full = np.stack([truth[os.path.realpath(p)] for p in paths])
    ii, cc = np.nonzero(partial == UNK)
    hidden_pos = full[ii, cc] == POS
    draw = np.random.default_rng(seed).random(len(ii))
    order = _round_robin(cc, np.where(hidden_pos, 0.0, 1.0) + 0.5 * draw,
                         (partial == POS).sum(0))[:budget]
    write_ask_file([{"image": _image_spelling(paths[ii[k]], ls.items[ii[k]], ask.parent),
                     "label": ls.classes[cc[k]], "rank": rank, "score": None,
                     "reason": "oracle: hidden " + ("positive" if hidden_pos[k] else "negative")}
                    for rank, k in enumerate(order, 1)], ask)


def fill_answers(ask: Path, answers: Path, truth: dict, classes) -> None:
    """The simulated annotator: each asked entry answered from the hidden full labels."""
    from mlrpl.utils.files import atomic_write
    col = {c: j for j, c in enumerate(classes)}
    with open(ask, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        image = os.path.realpath(os.path.join(ask.parent, r["image"]))
        r["value"] = "1" if truth[image][col[r["label"]]] == 1 else "0"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["image", "label", "value"],
                       lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(answers, lambda fh: fh.write(buf.getvalue()), mode="w", newline="")


if __name__ == "__main__":
    raise SystemExit(main())

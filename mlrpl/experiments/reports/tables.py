"""Tables from what is on disk: one row per run (``results.csv``), the Markdown summary
(``results.md``) and per-class AP of a run.

Nothing here trains; per-class AP of a run without its saved ``per_class_last.csv`` is recomputed
from the run's checkpoint (which needs the dataset and, for a frozen backbone, the feature cache).
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from mlrpl.engine import rundir
from mlrpl.engine.rundir import number as _num
from mlrpl.engine.rundir import read_config, read_summary  # noqa: F401 (the reports' readers)
from mlrpl.metrics import METRIC_KEYS
from mlrpl.experiments.spec import read_spec_file

EVAL_KEYS = (*METRIC_KEYS, "eval_images")
# The code a run was made with, from its run.json (empty for runs made before it existed).
CODE_KEYS = ("mlrpl_version", "git_commit", "git_dirty")
HEAD = ("method", "method_name", "p", "seed", "run_dir", "status", "action", "epochs",
        "epochs_configured", "best_epoch", "wall_s", *CODE_KEYS)
TABLE_METRICS = ("mAP", "CF1", "OF1")
BEST_LABEL = "best epoch on the evaluation split (optimistic)"
_PL = re.compile(r"^pl_(.+)_(n|precision|recall)$")


# ---- reading a run ------------------------------------------------------------------------------
def pl_sources(columns) -> list[str]:
    """Pseudo-label sources present among columns ``pl_<source>_{n,precision,recall}``."""
    out = []
    for c in columns:
        m = _PL.match(c)
        if m and "/" not in c and m.group(1) not in out:
            out.append(m.group(1))
    return out


def is_finite(v) -> bool:
    """Whether `v` is a finite number (int or float, not bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _status(run_dir: Path, rec: dict, metrics: dict, epochs_conf) -> tuple[str, str | None]:
    """(done | incomplete | failed | missing, the error's text or None) of a run."""
    err_file = run_dir / rundir.ERROR
    error = rec.get("error") if rec.get("status") == "failed" else None
    if error is None and err_file.is_file() and rec.get("status") != "done":
        error = err_file.read_text().split("\n\n", 1)[0].strip()
    epochs = int(metrics.get("epochs", 0) or 0)
    if rec.get("status") == "failed" or error:
        return "failed", error
    if metrics and epochs_conf is not None and epochs >= int(epochs_conf):
        return "done", None
    if metrics or (run_dir / rundir.LAST).is_file():
        return "incomplete", None
    return "missing", None


def _metric_cells(metrics: dict) -> dict:
    """Last-epoch metrics, losses and pseudo-label quality, then ``best_*`` of the best epoch."""
    last, best = metrics.get("last") or {}, metrics.get("best") or {}
    row = {k: last.get(k) for k in EVAL_KEYS}
    row.update({k: last[k] for k in sorted(k for k in last if k.startswith("loss_"))})
    for src in pl_sources(last):
        row.update({f"pl_{src}_{part}": last[f"pl_{src}_{part}"]
                    for part in ("n", "precision", "recall") if f"pl_{src}_{part}" in last})
    row.update({f"best_{k}": best.get(k) for k in EVAL_KEYS})
    return row


def run_row(run_dir, sweep_dir=None, meta: dict | None = None) -> dict:
    """One results row for a run directory (whatever state it is in)."""
    run_dir = Path(run_dir)
    meta = meta or {}
    cfg = read_config(run_dir)
    rec = rundir.read_json(run_dir / rundir.SWEEP_RECORD)
    made = rundir.read_run_record(run_dir)
    metrics = rundir.read_json(run_dir / rundir.METRICS)
    epochs_conf = (cfg.get("train") or {}).get("epochs")
    status, error = _status(run_dir, rec, metrics, epochs_conf)
    rel = run_dir
    if sweep_dir is not None:
        try:
            rel = run_dir.relative_to(sweep_dir)
        except ValueError:
            pass
    row = {
        "method": meta.get("method") or rec.get("method") or (cfg.get("method") or {}).get("name"),
        "method_name": meta.get("method_name") or rec.get("method_name")
        or (cfg.get("method") or {}).get("name"),
        "p": _num(meta.get("p", rec.get("p", (cfg.get("data") or {}).get("known_proportion")))),
        "seed": _num(meta.get("seed", rec.get("seed", cfg.get("seed")))),
        "run_dir": str(rel),
        "status": status,
        "action": rec.get("action", ""),
        "epochs": int(metrics.get("epochs", 0) or 0),
        "epochs_configured": epochs_conf,
        "best_epoch": rundir.best_epoch_number(metrics),
        "wall_s": rec.get("wall_s_total"),
        **{k: made.get(k) for k in CODE_KEYS},
    }
    if status in ("done", "incomplete"):
        row.update(_metric_cells(metrics))
    row["error"] = error.splitlines()[0] if error else ""
    return row


# A run directory moved aside (``<run>.stale-<n>`` by a sweep, ``<run>.replaced-<time>`` by
# run.overwrite): kept on disk, never a row of the tables.
_SET_ASIDE = re.compile(r"\.(stale|replaced)-[0-9-]+$")


def _is_listed_run(d: Path) -> bool:
    return d.is_dir() and not _SET_ASIDE.search(d.name) and any(
        (d / f).is_file() for f in (rundir.RUN_RECORD, rundir.CONFIG, rundir.SWEEP_RECORD))


def collect_rows(sweep_dir) -> list[dict]:
    """Every run of a sweep directory: those its ``sweep.yaml`` lists (in its order, ``missing``
    when not on disk), then any other run directory under ``runs/`` (from earlier sweeps into the
    same directory; not those moved aside)."""
    sweep_dir = Path(sweep_dir)
    spec = read_spec_file(sweep_dir) or {}
    rows, seen = [], set()
    for r in spec.get("runs", []):
        d = sweep_dir / r["dir"]
        rows.append(run_row(d, sweep_dir, r))
        seen.add(d.resolve())
    runs = sweep_dir / "runs"
    if runs.is_dir():
        rows += [run_row(d, sweep_dir) for d in sorted(runs.iterdir())
                 if d.resolve() not in seen and _is_listed_run(d)]
    return rows


def _fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.6g}"
    return str(v)


def write_results_csv(rows: list[dict], path) -> Path:
    cols = list(HEAD)
    for r in rows:
        cols += [k for k in r if k not in cols and k != "error" and not k.startswith("best_")]
    for r in rows:
        cols += [k for k in r if k not in cols and k.startswith("best_")]
    cols.append("error")
    return _write_csv(path, cols, [{k: r.get(k) for k in cols} for r in rows])


def _write_csv(path, cols: list[str], rows: list[dict]) -> Path:
    from mlrpl.utils.files import atomic_write

    def write(fh):
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_cell(r.get(k)) for k in cols})
    return atomic_write(path, write, mode="w", newline="")


# ---- aggregation --------------------------------------------------------------------------------
def ordered(values) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def values_by(rows, key: str) -> dict:
    """{(method, p): {seed: value}} over the runs that are done and have a finite `key`."""
    out: dict = {}
    for r in rows:
        if r.get("status") == "done" and is_finite(r.get(key)):
            out.setdefault((r["method"], r["p"]), {})[r["seed"]] = float(r[key])
    return out


def mean_std(xs) -> tuple[float, float, int]:
    xs = [float(x) for x in xs]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if n > 1 else math.nan), n


def _pm(mean, std, n, n_expected, signed=False) -> str:
    if n == 0 or mean != mean:
        return "—"
    s = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    if std == std:
        s += f" ± {std:.2f}"
    if n != n_expected:
        s += f" (n={n})"
    return s


def average_over_p(cells: dict, method, props) -> tuple[float, float, int]:
    """The papers' "Avg": the mean over proportions of the per-proportion means; its spread is
    that of each seed's own average over the seeds that have every proportion."""
    per_p = [cells.get((method, p), {}) for p in props]
    if not props or any(not d for d in per_p):
        return math.nan, math.nan, 0
    mean = float(np.mean([np.mean(list(d.values())) for d in per_p]))
    seeds = set.intersection(*(set(d) for d in per_p))
    per_seed = [float(np.mean([d[s] for d in per_p])) for s in sorted(seeds)]
    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan
    return mean, std, len(per_seed)


def pct(p) -> str:
    return f"{float(p) * 100:g}%"


def metric_table(rows, key: str, methods, props, n_seeds: int) -> list[str]:
    cells = values_by(rows, key)
    lines = ["| method | " + " | ".join(pct(p) for p in props) + " | Avg |",
             "|---|" + "---:|" * (len(props) + 1)]
    for m in methods:
        cs = [_pm(*mean_std(cells.get((m, p), {}).values()), n_seeds) for p in props]
        cs.append(_pm(*average_over_p(cells, m, props), n_seeds))
        lines.append(f"| {m} | " + " | ".join(cs) + " |")
    return lines


def gain_table(rows, key: str, methods, props, baseline: str, n_seeds: int) -> list[str]:
    """Per-seed (paired) differences with the baseline: the same seed gives every method the
    same partial labels."""
    cells = values_by(rows, key)
    lines = ["| method | " + " | ".join(pct(p) for p in props) + " | Avg |",
             "|---|" + "---:|" * (len(props) + 1)]
    for m in methods:
        if m == baseline:
            continue
        cs, per_p = [], []
        for p in props:
            a, b = cells.get((m, p), {}), cells.get((baseline, p), {})
            diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
            cs.append(_pm(*mean_std(diffs), n_seeds, signed=True))
            per_p.append(dict(zip(sorted(set(a) & set(b)), diffs)))
        if all(per_p):
            mean = float(np.mean([np.mean(list(d.values())) for d in per_p]))
            seeds = set.intersection(*(set(d) for d in per_p))
            per_seed = [float(np.mean([d[s] for d in per_p])) for s in sorted(seeds)]
            std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan
            cs.append(_pm(mean, std, len(per_seed), n_seeds, signed=True))
        else:
            cs.append("—")
        lines.append(f"| {m} | " + " | ".join(cs) + " |")
    return lines


def pseudo_label_table(rows, methods, props) -> list[str]:
    """Last-epoch pseudo-label precision / recall, mean over seeds, for methods that make them."""
    sources = ordered(s for r in rows for s in pl_sources(r))
    lines = []
    for m in methods:
        for src in sources:
            prec = values_by([r for r in rows if r["method"] == m], f"pl_{src}_precision")
            rec = values_by([r for r in rows if r["method"] == m], f"pl_{src}_recall")
            if not prec and not rec:
                continue
            cs = []
            for p in props:
                a, b = prec.get((m, p), {}), rec.get((m, p), {})
                cs.append("—" if not a and not b else
                          f"{mean_std(a.values())[0]:.1f} / {mean_std(b.values())[0]:.1f}")
            lines.append(f"| {m} | {src} | " + " | ".join(cs) + " |")
    if not lines:
        return []
    return ["| method | source | " + " | ".join(pct(p) for p in props) + " |",
            "|---|---|" + "---:|" * len(props)] + lines


# ---- the Markdown report ------------------------------------------------------------------------
def _setup_lines(sweep_dir: Path, rows: list[dict], spec: dict) -> list[str]:
    cfg = {}
    for r in rows:
        cfg = read_config(sweep_dir / r["run_dir"])
        if cfg:
            break
    d, mdl, t = cfg.get("data") or {}, cfg.get("model") or {}, cfg.get("train") or {}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = []
    if spec.get("source"):
        lines.append(f"- Sweep: `{spec['source']}` (resolved in `sweep.yaml`, log in `sweep.log`)")
    lines.append(f"- Runs: {len(rows)} — " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if d:
        root = Path(str(d.get("root", ""))).name
        split = (f"train `{d.get('train_split')}` → evaluated on `{d.get('val_split')}`"
                 if d.get("val_split") else
                 f"`{d.get('train_split')}` split with a seeded {d.get('holdout')} holdout "
                 f"(split seed {d.get('split_seed')}) as the evaluation split")
        lines.append(f"- Data: `{d.get('dataset')}` reader on `{root}`, {split}; partial labels: "
                     f"`{d.get('protocol')}` protocol, the mask drawn with each run's seed")
    if mdl:
        lines.append(f"- Model: backbone `{mdl.get('backbone')}` (pretrained: "
                     f"{mdl.get('pretrained')}, freeze `{mdl.get('freeze')}`), image size "
                     f"{d.get('image_size')}")
    recipes = _recipes(sweep_dir, rows)
    if recipes:
        lines.append("- Training: " + "; ".join(f"{', '.join(ms)}: {r}" for r, ms in recipes.items()))
    return lines


def _recipes(sweep_dir: Path, rows: list[dict]) -> dict[str, list[str]]:
    """{training recipe text: [methods]} from each method's first run on disk."""
    out: dict[str, list[str]] = {}
    for m in ordered(r["method"] for r in rows):
        cfg = next((c for c in (read_config(sweep_dir / r["run_dir"]) for r in rows
                                if r["method"] == m) if c), None)
        if not cfg:
            continue
        o, t = cfg.get("optim") or {}, cfg.get("train") or {}
        text = (f"{t.get('epochs')} epochs, batch {t.get('batch_size')}, {o.get('name')} lr "
                f"{o.get('lr')}")
        out.setdefault(text, []).append(m)
    return out


def results_markdown(sweep_dir, rows: list[dict], reference: bool = False,
                     baseline: str = "pbce", plots: list[str] = ()) -> str:
    from mlrpl.experiments.reports.published import dataset_of, published_markdown
    sweep_dir = Path(sweep_dir)
    spec = read_spec_file(sweep_dir) or {}
    methods = ordered([m["label"] for m in spec.get("methods", [])] + [r["method"] for r in rows])
    methods = [m for m in methods if any(r["method"] == m for r in rows)]
    props = sorted(ordered([r["p"] for r in rows if r["p"] is not None]))
    seeds = ordered([r["seed"] for r in rows if r["seed"] is not None])
    n_seeds = len(seeds)
    if baseline in methods:
        methods = [baseline] + [m for m in methods if m != baseline]

    out = [f"# Sweep results: {sweep_dir.name}", ""]
    out += _setup_lines(sweep_dir, rows, spec)
    out += [f"- Cells: percentages, mean ± sample standard deviation over {n_seeds} seed(s) "
            f"({', '.join(str(s) for s in seeds)}), marked `(n=k)` where fewer runs are done; "
            f"no ± with a single seed. `Avg` = mean over the known proportions, as the papers "
            f"report it (its ± is the spread of each seed's own average). Epochs are counted "
            f"from 1. Every run's numbers: `results.csv`.", ""]

    def section(title, prefix, blurb):
        s = [f"## {title}", "", blurb, ""]
        for k in TABLE_METRICS:
            s += [f"### {k} (%), {title[0].lower() + title[1:]}", ""]
            s += metric_table(rows, prefix + k, methods, props, n_seeds) + [""]
        if baseline in methods and len(methods) > 1:
            s += [f"### mAP gain over `{baseline}` (points), {title[0].lower() + title[1:]}", "",
                  f"Paired by seed (a seed gives every method the same partial labels): mean ± "
                  f"std of the per-seed differences from `{baseline}`.", ""]
            s += gain_table(rows, prefix + "mAP", methods, props, baseline, n_seeds) + [""]
        return s

    out += section("Last epoch", "",
                   "The model after its last training epoch: no selection on the evaluation "
                   "split. These are the numbers to compare.")
    out += section("Best epoch on the evaluation split (optimistic)", "best_",
                   "For each run, the epoch with the highest mAP **on the evaluation split it is "
                   "reported on** (what the published HCP code does): selected on the test data, "
                   "hence optimistic. CF1 and OF1 are those of that same epoch.")
    pl = pseudo_label_table(rows, methods, props)
    if pl:
        out += ["## Pseudo-labels (last epoch)", "",
                "Precision / recall of the pseudo-labels made in the last epoch against the "
                "hidden true labels, mean over seeds (`pl_<source>_*` in `summary.csv`).", ""]
        out += pl + [""]
    bad = [r for r in rows if r["status"] != "done"]
    if bad:
        out += ["## Runs not done", "", "| run | status | epochs | error |", "|---|---|---:|---|"]
        for r in bad:
            err = (r.get("error") or "").replace("|", "\\|")
            out.append(f"| `{r['run_dir']}` | {r['status']} | {r.get('epochs') or 0}"
                       f"/{r.get('epochs_configured') or '?'} | {err} |")
        out.append("")
    if plots:
        out += ["## Plots", ""]
        out += [f"- [`{p}`]({p})" for p in plots] + [""]
    if reference:
        ds = None
        for r in rows:
            cfg = read_config(sweep_dir / r["run_dir"])
            if cfg:
                d = cfg.get("data") or {}
                ds = dataset_of(f"{d.get('dataset')} {Path(str(d.get('root', ''))).name}")
                break
        out += [published_markdown([r["method_name"] for r in rows if r.get("method_name")],
                                   ds)]
    return "\n".join(out).rstrip() + "\n"


# ---- per-class AP -------------------------------------------------------------------------------
PER_CLASS_FILE = "per_class_{which}.csv"


def per_class_from_scores(scores, labels, classes, partial=None, train_labels=None,
                          threshold=0.5) -> list[dict]:
    """Per-class rows: AP (%), precision/recall (%), evaluation positives, and the training
    mask's known positives / negatives (and true positives when `train_labels` is given)."""
    from mlrpl.metrics import per_class_report
    rows = per_class_report(scores, labels, list(classes), threshold=threshold)
    out = []
    for c, r in enumerate(rows):
        row = {"class": r["class"], "ap_voc": r["ap_voc"], "precision": r["precision"],
               "recall": r["recall"], "eval_pos": r["n_pos"], "eval_neg": r["n_neg"]}
        if partial is not None:
            row["train_known_pos"] = int((partial[:, c] == 1).sum())
            row["train_known_neg"] = int((partial[:, c] == -1).sum())
        if train_labels is not None:
            row["train_pos"] = int((train_labels[:, c] == 1).sum())
        out.append(row)
    return out


def write_per_class(rows: list[dict], path) -> Path:
    return _write_csv(path, list(rows[0]), rows)


def per_class_for_run(run_dir, which: str = "last") -> list[dict]:
    """Per-class AP of a run's ``last.pt`` or ``best.pt``: the saved CSV when it is newer than
    the checkpoint, else recomputed from the checkpoint (the dataset must be reachable) and
    saved."""
    from mlrpl.errors import MlrplError
    run_dir = Path(run_dir)
    ckpt = run_dir / f"{which}.pt"
    saved = run_dir / PER_CLASS_FILE.format(which=which)
    if saved.is_file() and (not ckpt.is_file() or saved.stat().st_mtime >= ckpt.stat().st_mtime):
        with open(saved, newline="") as fh:
            return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    if not ckpt.is_file():
        raise MlrplError(f"{ckpt}: no checkpoint to compute per-class AP from")
    from mlrpl.config import load_config
    from mlrpl.engine.evaluate import evaluate_checkpoint
    from mlrpl.engine.experiment import load_splits
    result = evaluate_checkpoint(ckpt)
    cfg_dict = read_config(run_dir)
    if not cfg_dict:
        from mlrpl.engine.checkpoint import load_checkpoint
        cfg_dict = load_checkpoint(ckpt)["config"]
    cfg = load_config(None, [], base=cfg_dict)
    train, val = load_splits(cfg)
    if val.labels.shape != result["scores"].shape:
        raise MlrplError(f"{ckpt}: {result['scores'].shape[0]} scored images but "
                         f"{val.labels.shape[0]} labelled (unreadable images skipped?)")
    partial = None
    if (run_dir / rundir.MASK).is_file():
        partial = np.load(run_dir / rundir.MASK, allow_pickle=False)
    same = partial is None or partial.shape == train.labels.shape
    rows = per_class_from_scores(result["scores"], val.labels, val.classes, partial,
                                 train.labels if same else None, threshold=cfg.eval.threshold)
    write_per_class(rows, saved)
    return rows


def run_markdown(run_dir, per_class: list[dict] | None, plots=()) -> str:
    """A single run's report: last and best epoch metrics, per-class AP."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    metrics = rundir.read_json(run_dir / rundir.METRICS)
    last, best = metrics.get("last") or {}, metrics.get("best") or {}
    d, mdl = cfg.get("data") or {}, cfg.get("model") or {}
    out = [f"# Run {run_dir.name}", "",
           f"- Method `{(cfg.get('method') or {}).get('name')}`, known proportion "
           f"{d.get('known_proportion')} (`{d.get('protocol')}`), seed {cfg.get('seed')}, "
           f"backbone `{mdl.get('backbone')}` (freeze `{mdl.get('freeze')}`)",
           f"- Epochs done: {metrics.get('epochs', 0)} of {(cfg.get('train') or {}).get('epochs')}"
           + (f"; best epoch: {rundir.best_epoch_number(metrics)} (chosen on "
              f"{metrics.get('best_chosen_on', 'eval: the evaluation split, optimistic')})"
              if metrics.get("best") else ""), "",
           f"| metric | last epoch | {BEST_LABEL} |", "|---|---:|---:|"]
    for k in EVAL_KEYS:
        if k in last:
            out.append(f"| {k} | {_fmt_num(last.get(k))} | {_fmt_num(best.get(k))} |")
    if per_class:
        has_known = "train_known_pos" in per_class[0]
        out += ["", "## Per-class AP (last epoch)", "",
                "| class | AP (%) | precision (%) | recall (%) | eval positives |"
                + (" known train positives |" if has_known else ""),
                "|---|---:|---:|---:|---:|" + ("---:|" if has_known else "")]
        for r in sorted(per_class, key=lambda r: -(r["ap_voc"] if is_finite(r["ap_voc"]) else -1)):
            out.append(f"| {r['class']} | {_fmt_num(r['ap_voc'])} | {_fmt_num(r['precision'])} | "
                       f"{_fmt_num(r['recall'])} | {r['eval_pos']} |"
                       + (f" {r['train_known_pos']} |" if has_known else ""))
    if plots:
        out += ["", "## Plots", ""] + [f"- [`{p}`]({p})" for p in plots]
    return "\n".join(out) + "\n"


def _fmt_num(v) -> str:
    if isinstance(v, float):
        return "—" if v != v else f"{v:.2f}"
    return "—" if v is None else str(v)

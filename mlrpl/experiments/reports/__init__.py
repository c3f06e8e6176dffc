"""Reports: tables and plots rebuilt from what is on disk, without training.

    build_report("benchmarks/results/coco128")            # a sweep directory
    build_report("runs/coco128_pbce_p0.3_s0")             # one run directory

A sweep directory gets ``results.csv`` (one row per run: last-epoch metrics, ``best_*`` of the
best epoch on the evaluation split, losses, pseudo-label precision/recall), ``results.md``
(mean ± std over seeds per method and proportion for mAP, CF1, OF1; last epoch and best epoch;
gain over the baseline; optionally the published reference table) and ``plots/``:
``map_vs_proportion.png``, ``f1_vs_proportion.png`` (CF1, OF1), ``curves_by_method.png`` and, for
the chosen runs, ``runs/<run>/{training_curves,per_class_ap,pseudo_labels}.png``.
A run directory gets ``report.md`` and ``plots/`` with the same three run plots.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from mlrpl.engine import rundir
from mlrpl.errors import MlrplError
from mlrpl.experiments.spec import SWEEP_FILE, read_spec_file


def _run_plots(run_dir: Path, plot_dir: Path, name: str, which: str = "last") -> tuple[list, list]:
    """The three plots of one run; returns (written paths, per-class rows or None)."""
    from mlrpl.experiments.reports import plots
    from mlrpl.experiments.reports.tables import per_class_for_run
    written = []
    summary = rundir.read_summary(run_dir)
    if summary:
        written.append(plots.plot_training_curves(summary, plot_dir / "training_curves.png", name))
        pl = plots.plot_pseudo_labels(summary, plot_dir / "pseudo_labels.png", name)
        if pl is not None:
            written.append(pl)
    per_class = None
    try:
        per_class = per_class_for_run(run_dir, which)
    except Exception as e:  # no checkpoint, or the data is not reachable from here
        warnings.warn(f"{run_dir}: no per-class AP plot ({type(e).__name__}: {e})", stacklevel=2)
    if per_class:
        written.append(plots.plot_per_class_ap(per_class, plot_dir / "per_class_ap.png",
                                               f"{name} ({which} epoch)"))
    dists = _distribution_plot(run_dir, plot_dir / "score_distributions.png", name)
    if dists is not None:
        written.append(dists)
    return written, per_class


def _distribution_plot(run_dir: Path, png: Path, name: str):
    """SATL's figure (score histograms and per-class thresholds) when the run keeps them."""
    from mlrpl.engine.checkpoint import load_checkpoint
    from mlrpl.experiments.reports.distributions import has_distributions, load_distributions, plot_score_distributions
    path = run_dir / rundir.LAST
    if not path.is_file():
        # checkpoints are not kept with recorded sweeps: a figure drawn earlier stays listed
        return png if png.is_file() else None
    ckpt = load_checkpoint(path)
    if not has_distributions(ckpt):
        return None
    try:
        model, state = load_distributions(path, ckpt)
        return plot_score_distributions(model, state, png, title=f"{name}: score distributions "
                                        f"and per-class thresholds")
    except Exception as e:  # the report goes on without this figure
        warnings.warn(f"{run_dir}: no score-distribution plot ({type(e).__name__}: {e})",
                      stacklevel=2)
        return None


def _default_run_plots(rows) -> list[str]:
    """For each method: its done run at the lowest known proportion, first seed."""
    chosen = {}
    for r in rows:
        if r["status"] != "done":
            continue
        key = (r["p"], str(r["seed"]))
        if r["method"] not in chosen or key < chosen[r["method"]][0]:
            chosen[r["method"]] = (key, Path(r["run_dir"]).name)
    return [v[1] for v in chosen.values()]


def _resolve_run(sweep_dir: Path, run: str) -> Path:
    for cand in (Path(run), sweep_dir / "runs" / run, sweep_dir / run):
        if (cand / rundir.CONFIG).is_file():
            return cand
    raise MlrplError(f"run {run!r} not found (a run name under {sweep_dir / 'runs'} or a run "
                     f"directory)")


def build_sweep_report(sweep_dir, reference: bool | None = None, run_plots=None,
                       baseline: str | None = None, plots: bool = True) -> list[Path]:
    """Write results.csv, results.md and plots/ of a sweep directory; returns the paths."""
    from mlrpl.experiments.reports import plots as P
    from mlrpl.experiments.reports.tables import collect_rows, results_markdown, write_results_csv
    sweep_dir = Path(sweep_dir)
    rows = collect_rows(sweep_dir)
    if not rows:
        raise MlrplError(f"{sweep_dir}: no runs found (expected sweep.yaml or runs/*/)")
    opts = (read_spec_file(sweep_dir) or {}).get("report") or {}
    reference = bool(opts.get("reference", False)) if reference is None else reference
    baseline = baseline or opts.get("baseline", "pbce")
    if run_plots is None:
        run_plots = opts.get("run_plots") or _default_run_plots(rows)
    written = [write_results_csv(rows, sweep_dir / "results.csv")]
    plot_files = []
    if plots:
        pd = sweep_dir / "plots"
        title = sweep_dir.name
        plot_files.append(P.plot_metric_vs_proportion(rows, pd / "map_vs_proportion.png",
                                                      "mAP", title))
        plot_files.append(P.plot_f1_vs_proportion(rows, pd / "f1_vs_proportion.png", title))
        plot_files.append(P.plot_sweep_curves(sweep_dir, rows, pd / "curves_by_method.png",
                                              "mAP", title))
        for run in run_plots:
            run_dir = _resolve_run(sweep_dir, run)
            files, _ = _run_plots(run_dir, pd / "runs" / run_dir.name, run_dir.name)
            plot_files += files
    rel = [str(p.relative_to(sweep_dir)) for p in plot_files]
    md = sweep_dir / "results.md"
    md.write_text(results_markdown(sweep_dir, rows, reference=reference, baseline=baseline,
                                   plots=rel))
    return written + [md] + plot_files


def build_run_report(run_dir, which: str = "last", plots: bool = True) -> list[Path]:
    """Write report.md and plots/ (training curves, per-class AP, pseudo-labels) of a run."""
    from mlrpl.experiments.reports.tables import per_class_for_run, run_markdown
    run_dir = Path(run_dir)
    if not (run_dir / rundir.CONFIG).is_file():
        raise MlrplError(f"{run_dir}: not a run directory (no {rundir.CONFIG})")
    files, per_class = [], None
    if plots:
        files, per_class = _run_plots(run_dir, run_dir / "plots", run_dir.name, which)
    else:
        try:
            per_class = per_class_for_run(run_dir, which)
        except Exception as e:
            warnings.warn(f"{run_dir}: no per-class AP ({e})", stacklevel=2)
    md = run_dir / "report.md"
    md.write_text(run_markdown(run_dir, per_class,
                               [str(p.relative_to(run_dir)) for p in files]))
    return [md] + files


def is_sweep_dir(path) -> bool:
    p = Path(path)
    return (p / SWEEP_FILE).is_file() or ((p / "runs").is_dir()
                                         and not (p / rundir.CONFIG).is_file())


def build_report(path, reference: bool | None = None, run_plots=None, baseline=None,
                 which: str = "last", plots: bool = True) -> list[Path]:
    """A sweep directory's or a run directory's report (see the module docstring)."""
    p = Path(path)
    if not p.is_dir():
        raise MlrplError(f"{p}: no such directory")
    if is_sweep_dir(p):
        return build_sweep_report(p, reference, run_plots, baseline, plots)
    return build_run_report(p, which, plots)

"""Sweeps (methods x proportions x seeds), resumption, failures, reports and the published table."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mlrpl.cli import main
from tests.conftest import REPO
from tests.test_engine import tiny

NAMES = ("red_circle", "green_square", "blue_triangle", "yellow_star", "white_ring",
         "purple_cross")
# ssgrl's cpu-cached recipe (D = 256, 12 epochs) made small for the tests
SSGRL_SMALL = ["method.trunk.dim=16", "method.trunk.attention_dim=8", "train.epochs=2"]


def _embeddings(folder):
    emb = folder / "emb"
    np.save(emb.with_suffix(".npy"), np.random.default_rng(0).normal(size=(6, 7)).astype("f4"))
    (folder / "emb.names.txt").write_text("\n".join(NAMES) + "\n")
    return emb.with_suffix(".npy")


def _write_spec(path, shapes, cache_dir, emb, out, methods, **extra):
    base = tiny(shapes, cache_dir, out / "unused", "train.progress=never", f"data.embeddings={emb}")
    spec = {"base": {"overrides": base}, "methods": methods, "proportions": [0.3, 0.7],
            "seeds": [0], "out": str(out), "method_overrides": {"ssgrl": SSGRL_SMALL}, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def _results(out):
    with open(out / "results.csv") as fh:
        return {r["run_dir"].split("/")[-1]: r for r in csv.DictReader(fh)}


def _log_since(out, start):
    return (out / "sweep.log").read_text()[start:]


@pytest.fixture(scope="module")
def sweep(shapes, cache_dir, tmp_path_factory):
    """Two invocations of one sweep: the first with an interrupted method (ssgrl stops after
    epoch 1 of 2, as a killed sweep would) and a failing one (a bad override); the second with
    both fixed, after a finished run lost its checkpoint."""
    tmp = tmp_path_factory.mktemp("sweep")
    emb = _embeddings(tmp)
    out = tmp / "out"
    spec = tmp / "sweep.yaml"
    snap = {"out": out, "spec": spec, "emb": emb}
    _write_spec(spec, shapes, cache_dir, emb, out, [
        "pbce", {"name": "ssgrl", "overrides": ["train.stop_after_epochs=1"]},
        {"name": "pbce", "label": "pbce_bad", "overrides": ["method.dropout=1.5"]}])
    snap["rc1"] = main(["sweep", "--config", str(spec)])
    snap["results1"] = _results(out)
    snap["log1"] = (out / "sweep.log").read_text()
    snap["md1"] = (out / "results.md").read_text()
    snap["error1"] = (out / "runs/pbce_bad_p0.3_s0/error.txt").read_text()
    snap["record1"] = json.loads((out / "runs/pbce_p0.3_s0/sweep_run.json").read_text())
    snap["ssgrl_row0"] = (out / "runs/ssgrl_p0.3_s0/summary.csv").read_text().splitlines()[:2]
    snap["pbce_mtime"] = (out / "runs/pbce_p0.3_s0/last.pt").stat().st_mtime_ns
    # a finished run whose checkpoint and metrics are gone (killed before its first epoch ended)
    (out / "runs/pbce_p0.7_s0/last.pt").unlink()
    (out / "runs/pbce_p0.7_s0/metrics.json").unlink()
    _write_spec(spec, shapes, cache_dir, emb, out, [
        "pbce", "ssgrl", {"name": "pbce", "label": "pbce_bad", "overrides": ["method.dropout=0.2"]}],
        report={"reference": True})
    snap["rc2"] = main(["sweep", "--config", str(spec)])
    snap["log2"] = _log_since(out, len(snap["log1"]))
    snap["results2"] = _results(out)
    return snap


def test_failing_run_is_reported_and_the_others_complete(sweep):
    r = sweep["results1"]
    assert sweep["rc1"] == 1
    assert sorted(r) == sorted(f"{m}_p{p}_s0" for m in ("pbce", "ssgrl", "pbce_bad")
                               for p in (0.3, 0.7))
    assert {k: v["status"] for k, v in r.items()} == {
        "pbce_p0.3_s0": "done", "pbce_p0.7_s0": "done", "ssgrl_p0.3_s0": "incomplete",
        "ssgrl_p0.7_s0": "incomplete", "pbce_bad_p0.3_s0": "failed", "pbce_bad_p0.7_s0": "failed"}
    assert "dropout" in sweep["error1"] and "Traceback" in sweep["error1"]
    assert "dropout" in r["pbce_bad_p0.3_s0"]["error"]
    assert "FAILED  pbce_bad_p0.3_s0" in sweep["log1"]
    assert "## Runs not done" in sweep["md1"] and "pbce_bad_p0.7_s0" in sweep["md1"]
    done = r["pbce_p0.3_s0"]
    assert float(done["p"]) == 0.3 and int(done["seed"]) == 0 and int(done["epochs"]) == 2
    assert done["method_name"] == "pbce" and 1 <= int(done["best_epoch"]) <= 2
    assert float(done["best_mAP"]) >= float(done["mAP"]) - 1e-9
    for key in ("mAP", "CF1", "OF1", "ap_rank", "OF1_top3", "loss_bce", "best_CF1", "wall_s"):
        assert done[key] != "", key
    assert sweep["record1"]["action"] == "trained" and sweep["record1"]["wall_s"] > 0


def test_rerun_skips_finished_resumes_interrupted_restarts_the_rest(sweep):
    out, log, r = sweep["out"], sweep["log2"], sweep["results2"]
    assert sweep["rc2"] == 0
    assert all(v["status"] == "done" and int(v["epochs"]) == 2 for v in r.values()), r
    assert "skip    pbce_p0.3_s0" in log
    assert (out / "runs/pbce_p0.3_s0/last.pt").stat().st_mtime_ns == sweep["pbce_mtime"]
    assert "start   ssgrl_p0.3_s0: resume" in log and "start   ssgrl_p0.7_s0: resume" in log
    assert "start   pbce_p0.7_s0: restart" in log and "start   pbce_bad_p0.3_s0: restart" in log
    assert "total   " in log
    # the interrupted run continued from its checkpoint: epoch 1 untouched, epoch 2 added
    rows = (out / "runs/ssgrl_p0.3_s0/summary.csv").read_text().splitlines()
    assert rows[:2] == sweep["ssgrl_row0"] and len(rows) == 3
    assert not (out / "runs/pbce_bad_p0.3_s0/error.txt").exists()
    actions = {k: json.loads((out / f"runs/{k}/sweep_run.json").read_text())["action"] for k in r}
    assert actions["pbce_p0.3_s0"] == "skipped" and actions["ssgrl_p0.7_s0"] == "resumed"
    assert actions["pbce_p0.7_s0"] == "restarted"
    spec = yaml.safe_load((out / "sweep.yaml").read_text())
    assert [m["label"] for m in spec["methods"]] == ["pbce", "ssgrl", "pbce_bad"]
    assert len(spec["runs"]) == 6 and spec["methods"][1]["overrides"] == SSGRL_SMALL
    assert (out / "runs/ssgrl_p0.3_s0/per_class_last.csv").is_file()


def test_results_tables_and_plots(sweep):
    out = sweep["out"]
    md = (out / "results.md").read_text()
    for title in ("### mAP (%), last epoch", "### CF1 (%), last epoch", "### OF1 (%), last epoch",
                  "### mAP (%), best epoch on the evaluation split (optimistic)",
                  "### mAP gain over `pbce` (points), last epoch", "| 30% | 70% | Avg |"):
        assert title in md, title
    last = md.split("## Last epoch")[1].split("## Best epoch")[0]
    assert "| pbce |" in last and "| ssgrl |" in last and "| pbce_bad |" in last
    # the reference table is there, after and apart from ours, and says so
    ref = md.index("## Published (ResNet-101, full datasets, HCP protocol) — not comparable")
    assert ref > md.index("## Best epoch") and "| SST | 76.7 / 75.8 / 71.2" not in md[:ref]
    # our rows never appear in it (ssgrl is only named as the counterpart of SSGRL)
    assert "\n| ssgrl |" not in md[ref:] and "\n| pbce |" not in md[ref:]
    assert "| SSGRL | 74.1 / 73.9 / 68.1 |" in md[ref:] and "| ssgrl |" in md[ref:]
    # gain cells are paired differences with pbce
    r = sweep["results2"]
    gain = float(r["ssgrl_p0.3_s0"]["mAP"]) - float(r["pbce_p0.3_s0"]["mAP"])
    gains = md.split("### mAP gain over `pbce` (points), last epoch")[1]
    assert f"| ssgrl | {gain:+.2f} |" in gains
    for png in ("map_vs_proportion.png", "f1_vs_proportion.png", "curves_by_method.png",
                "runs/pbce_p0.3_s0/training_curves.png", "runs/pbce_p0.3_s0/per_class_ap.png",
                "runs/ssgrl_p0.3_s0/per_class_ap.png"):
        f = out / "plots" / png
        assert f.is_file() and f.read_bytes()[:4] == b"\x89PNG", png


def test_report_rebuilds_from_disk(sweep, capsys):
    out = sweep["out"]
    before_md = (out / "results.md").read_text()
    before_csv = (out / "results.csv").read_text()
    (out / "results.md").unlink()
    (out / "results.csv").unlink()
    import shutil
    shutil.rmtree(out / "plots")
    # a run's saved per-class AP is gone too: it is recomputed from its checkpoint
    (out / "runs/pbce_p0.7_s0/per_class_last.csv").unlink()
    assert main(["report", str(out), "--run-plots", "pbce_p0.7_s0"]) == 0
    assert (out / "results.csv").read_text() == before_csv
    md = (out / "results.md").read_text()
    # same tables; the sweep asked for the reference table (report.reference: true)
    assert md.split("## Plots")[0] == before_md.split("## Plots")[0]
    assert "## Published" in md
    assert (out / "plots/runs/pbce_p0.7_s0/per_class_ap.png").is_file()
    assert (out / "runs/pbce_p0.7_s0/per_class_last.csv").is_file()
    assert (out / "plots/map_vs_proportion.png").is_file()
    assert main(["report", str(out), "--no-reference", "--no-plots"]) == 0
    plain = (out / "results.md").read_text()
    assert "## Published" not in plain and "### mAP (%), last epoch" in plain
    assert main(["report", str(out), "--reference", "--no-plots"]) == 0
    assert "not comparable with the numbers above" in (out / "results.md").read_text()


def test_report_of_one_run(sweep):
    run = sweep["out"] / "runs/ssgrl_p0.7_s0"
    assert main(["report", str(run)]) == 0
    for f in ("report.md", "plots/training_curves.png", "plots/per_class_ap.png"):
        assert (run / f).is_file(), f
    md = (run / "report.md").read_text()
    assert "| mAP |" in md and "## Per-class AP (last epoch)" in md and "red_circle" in md
    # per-class rows carry the known positives of this run's mask
    with open(run / "per_class_last.csv") as fh:
        rows = list(csv.DictReader(fh))
    mask = np.load(run / "mask.npy")
    assert [int(r["train_known_pos"]) for r in rows] == (mask == 1).sum(0).tolist()


def test_pseudo_label_plot_and_table(tmp_path):
    from mlrpl.experiments.reports.plots import plot_pseudo_labels
    from mlrpl.experiments.reports.tables import pl_sources, pseudo_label_table
    summary = [{"epoch": e, "pl_intra_n": 10 * e, "pl_intra_precision": 0.8, "pl_intra_recall":
                0.1 * e, "pl_intra_precision/cat": 0.5} for e in range(3)]
    assert pl_sources(summary[0]) == ["intra"]
    assert plot_pseudo_labels(summary, tmp_path / "pl.png").is_file()
    assert plot_pseudo_labels([{"epoch": 0, "mAP": 1.0}], tmp_path / "none.png") is None
    rows = [{"method": "sst", "p": 0.3, "seed": s, "status": "done", "pl_intra_precision": 80.0,
             "pl_intra_recall": 10.0 + s} for s in (0, 1)]
    assert "| sst | intra | 80.0 / 10.5 |" in "\n".join(pseudo_label_table(rows, ["sst"], [0.3]))


def test_changed_config_is_not_silently_reused(sweep):
    out, spec = sweep["out"], sweep["spec"]
    mtime = (out / "runs/pbce_p0.3_s0/last.pt").stat().st_mtime_ns
    args = ["sweep", "--config", str(spec), "--methods", "pbce", "--proportions", "0.3",
            "--no-report"]
    assert main(args + ["optim.lr=0.05"]) == 1
    assert "optim.lr" in (out / "runs/pbce_p0.3_s0/error.txt").read_text()
    assert (out / "runs/pbce_p0.3_s0/last.pt").stat().st_mtime_ns == mtime
    assert main(args) == 0  # back to the sweep's own configuration: finished, skipped
    assert not (out / "runs/pbce_p0.3_s0/error.txt").exists()
    rec = json.loads((out / "runs/pbce_p0.3_s0/sweep_run.json").read_text())
    assert rec["status"] == "done" and rec["action"] == "skipped"


def test_dry_run_lists_what_would_happen(sweep, capsys):
    assert main(["sweep", "--config", str(sweep["spec"]), "--dry-run", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "12 runs" in out  # 3 methods x 2 proportions x 2 seeds
    lines = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert lines["pbce_p0.3_s0"].startswith("skip") and lines["pbce_p0.3_s1"] == "train"


def test_bad_sweep_configs_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    cases = [({"methods": ["pbce"], "proportions": [0.5], "out": str(out), "seed": [0]},
              ("unknown config key 'seed'", "did you mean 'seeds'")),
             ({"methods": [{"name": "pbce", "lable": "x"}], "proportions": [0.5], "out": str(out)},
              ("unknown config key 'lable' in the entry of method 'pbce'", "did you mean 'label'")),
             ({"base": {"confg": "x.yaml"}, "methods": ["pbce"], "proportions": [0.5],
               "out": str(out)}, ("unknown config key 'confg' in 'base'", "'config'")),
             ({"methods": ["pbce"], "proportions": [0.5], "seeds": [0, 1.5], "out": str(out)},
              ("bad value for 'seeds[1]'",)),
             ({"methods": ["pbce"], "proportions": [0.5], "report": {"reference": "maybe"},
               "out": str(out)}, ("bad value for 'report.reference'",)),
             ({"methods": ["pbce"], "proportions": [0.5], "regime": "gpu", "out": str(out)},
              ("bad value for 'regime'", "cpu-cached")),
             # no method declares a recipe for `modern`: the sweep must say how to train it
             ({"methods": ["pbce"], "proportions": [0.5], "regime": "modern", "out": str(out)},
              ("method 'pbce' declares no recipe for regime 'modern'", "method_overrides")),
             ({"methods": ["pbcee"], "proportions": [0.5], "out": str(out)},
              "unknown method 'pbcee'; did you mean 'pbce'"),
             ({"methods": ["pbce"], "proportions": [0.5, 1.5], "out": str(out)},
              "proportion 1.5 is not in (0, 1]"),
             ({"methods": ["pbce"], "proportions": [0.5]}, "'out'"),
             ({"base": "nowhere.yaml", "methods": ["pbce"], "proportions": [0.5],
               "out": str(out)}, "base config 'nowhere.yaml' not found"),
             ({"methods": ["pbce", "pbce"], "proportions": [0.5], "out": str(out)},
              "appears twice")]
    for spec, msg in cases:
        f = tmp_path / "s.yaml"
        f.write_text(yaml.safe_dump(spec))
        assert main(["sweep", "--config", str(f)]) == 2
        err = capsys.readouterr().err
        for part in (msg if isinstance(msg, tuple) else (msg,)):
            assert part in err, (part, err)
    assert not out.exists()


def test_recipes_travel_with_methods():
    """Each method trains with its own recipe for the sweep's regime, under method_overrides."""
    from mlrpl.methods import recipe
    from mlrpl.experiments.sweep import load_sweep, run_config
    spec = load_sweep(data={"methods": ["pbce", "ssgrl"], "proportions": [0.3], "out": "o",
                            "method_overrides": {"ssgrl": ["optim.lr=0.002"]}})
    assert spec.regime == "cpu-cached"
    pbce, ssgrl = (run_config(spec, r) for r in spec.runs())
    assert ssgrl.method.trunk.dim == 256 and ssgrl.train.epochs == 12 and ssgrl.optim.lr == 0.002
    assert pbce.train.epochs == 20 and pbce.optim.lr == 0.001       # pbce: the defaults
    assert spec.methods[1].recipe == recipe("ssgrl", "cpu-cached")
    assert spec.runs()[1].overrides == [*recipe("ssgrl", "cpu-cached"), "optim.lr=0.002"]
    # a regime without a recipe works when the sweep says how to train the method
    spec = load_sweep(data={"methods": ["pbce"], "proportions": [0.3], "out": "o",
                            "regime": "modern", "method_overrides": {"pbce": ["train.epochs=3"]}})
    assert run_config(spec, spec.runs()[0]).train.epochs == 3


def test_shipped_sweep_configs_resolve():
    from mlrpl.methods import list_methods
    from mlrpl.experiments.sweep import load_sweep, run_config
    for name, out in (("coco128_cpu", "benchmarks/results/coco128"),
                      ("voc2007-2k_cpu", "benchmarks/results/voc2007-2k")):
        spec = load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
        names = [m.name for m in spec.methods]
        assert sorted(names) == list_methods() and names[:2] == ["pbce", "ssgrl"]  # methods: all
        assert spec.proportions == [0.1, 0.3, 0.5, 0.7, 0.9] and spec.seeds == [0, 1, 2]
        assert str(spec.out) == out and spec.base_config.endswith("_pbce_cpu.yaml")
        runs = spec.runs()
        assert len(runs) == 15 * len(spec.methods) and runs[0].name == "pbce_p0.1_s0"
        cfg = run_config(spec, runs[1])
        assert cfg.seed == 1 and cfg.data.known_proportion == 0.1 and cfg.method.name == "pbce"
        assert cfg.run.dir == f"{out}/runs/pbce_p0.1_s1" and cfg.model.freeze == "all"
        assert spec.regime == "cpu-cached"
        ssgrl = run_config(spec, runs[15])   # its recipe, not written in the sweep config
        assert ssgrl.method.trunk.dim == 256 and ssgrl.train.epochs == 12
        assert ssgrl.optim.lr == 0.001
    assert "configs/sweeps/*.yaml" in (REPO / "pyproject.toml").read_text()


def test_a_sweep_base_that_starts_from_another_file():
    """The fine-tuning sweep's base preset has a ``base:`` of its own: its keys and its
    parent's both reach every run (as with ``mlrpl train --config``)."""
    from mlrpl.experiments.sweep import load_sweep, run_config
    spec = load_sweep(REPO / "configs" / "sweeps" / "voc2007-2k_finetune_cpu.yaml")
    pbce, _, ssgrl = (run_config(spec, r) for r in spec.runs()[:3])
    assert pbce.model.freeze == "hcp" and pbce.model.cache_prefix     # the base file
    assert pbce.data.dataset == "voc2007" and pbce.data.holdout == 0.2  # its parent
    assert pbce.optim.backbone_lr_mult == 0.01 and pbce.train.epochs == 12
    assert ssgrl.method.name == "ssgrl" and ssgrl.optim.backbone_lr_mult == 0.1
    assert ssgrl.method.trunk.dim == 256 and ssgrl.optim.lr == 0.001


def test_published_table_is_data_with_a_source():
    from mlrpl.experiments.reports.published import PUBLISHED, SOURCE, TITLE, published_markdown
    assert PUBLISHED["SST"]["MS-COCO"] == {"mAP": 76.7, "OF1": 75.8, "CF1": 71.2}
    assert PUBLISHED["DSRB"]["VOC 2007"]["mAP"] == 91.5
    assert set(PUBLISHED) == {"SSGRL", "GCN-ML", "PLCL", "SPLC", "CSL", "SST", "HST", "SARB",
                              "DSRB", "SR"}
    md = published_markdown(["ssgrl", "pbce"], "VOC 2007")
    assert TITLE in md and "ICCV 2023" in SOURCE and "ICCV 2023" in md
    assert md.index("VOC 2007") < md.index("MS-COCO")  # the closest dataset first
    assert "| SSGRL | 89.5 / 87.7 / 84.5 |" in md and "| ssgrl |" in md


@pytest.mark.slow
def test_sweep_spread_over_two_processes(shapes, cache_dir, tmp_path):
    """torchrun with 2 processes: run i on process i % 2, each a plain single-process run."""
    out = tmp_path / "out"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "base": {"overrides": tiny(shapes, cache_dir, out / "x", "train.epochs=1",
                                   "train.progress=never")},
        "methods": ["pbce"], "proportions": [0.3, 0.7], "seeds": [0], "out": str(out)}))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mlrpl", "sweep", "--config", str(spec)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (out / "sweep.log").read_text()
    assert "[rank 0/2] start   pbce_p0.3_s0" in log and "[rank 1/2] start   pbce_p0.7_s0" in log
    assert "1 process(es)" in r.stdout and "2 process(es)" not in r.stdout
    res = _results(out)
    assert {k: v["status"] for k, v in res.items()} == {"pbce_p0.3_s0": "done",
                                                        "pbce_p0.7_s0": "done"}
    assert json.loads((out / "runs/pbce_p0.7_s0/sweep_run.json").read_text())["rank"] == 1
    assert (out / "results.md").is_file()


def test_config_drift_ignores_keys_added_to_the_schema_later():
    from mlrpl.engine.rundir import config_drift
    saved = {"seed": 0, "method": {"name": "hst", "satl": {"bins": 50}}}
    assert config_drift(saved, {"seed": 0, "method": {"name": "hst", "satl": {
        "bins": 50, "positive_quantile": 0.1}}}) == []
    assert config_drift(saved, {"seed": 1, "method": {"name": "hst", "satl": {"bins": 50}}}) == ["seed"]
    assert config_drift(saved, {"seed": 0, "method": {"name": "hst"}}) == ["method.satl.bins"]


def test_changed_method_code_redoes_a_finished_run(shapes, cache_dir, tmp_path, capsys):
    """A finished run whose method's code changed is trained again (the old one moved aside),
    unless the sweep is told to reuse it; results rows carry the code each run was made with."""
    from mlrpl.engine.rundir import code_version
    from mlrpl.methods import method_code_digest
    out = tmp_path / "out"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "base": {"overrides": tiny(shapes, cache_dir, out / "x", "train.epochs=1",
                                   "train.progress=never")},
        "methods": ["pbce"], "proportions": [0.3], "seeds": [0], "out": str(out)}))
    args = ["sweep", "--config", str(spec), "--no-report"]
    run = out / "runs/pbce_p0.3_s0"
    assert main(args) == 0
    made = json.loads((run / "run.json").read_text())
    assert made["method_code"] == method_code_digest("pbce")
    made["method_code"] = "0" * 16            # as if pbce's code had changed since
    (run / "run.json").write_text(json.dumps(made))
    mtime = (run / "last.pt").stat().st_mtime_ns
    start = len((out / "sweep.log").read_text())

    assert main(args + ["--reuse-stale"]) == 0
    assert "skip    pbce_p0.3_s0" in _log_since(out, start)
    assert (run / "last.pt").stat().st_mtime_ns == mtime
    capsys.readouterr()
    assert main(args + ["--dry-run"]) == 0
    assert "redo (method code changed since this run)" in capsys.readouterr().out

    start = len((out / "sweep.log").read_text())
    assert main(args) == 0
    log = _log_since(out, start)
    assert "redo    pbce_p0.3_s0: method code changed since this run" in log
    assert "start   pbce_p0.3_s0: redo" in log
    [aside] = (out / "runs").glob("pbce_p0.3_s0.stale-*")
    assert json.loads((aside / "run.json").read_text())["method_code"] == "0" * 16
    assert (aside / "last.pt").stat().st_mtime_ns == mtime
    assert json.loads((run / "run.json").read_text())["method_code"] == method_code_digest("pbce")
    assert json.loads((run / "sweep_run.json").read_text())["action"] == "redone"

    recorded = yaml.safe_load((out / "sweep.yaml").read_text())
    assert recorded["regime"] == "cpu-cached"
    assert {k: recorded[k] for k in ("mlrpl_version", "git_commit", "git_dirty")} == code_version()
    assert main(["report", str(out), "--no-plots"]) == 0
    rows = _results(out)
    assert list(rows) == ["pbce_p0.3_s0"]     # the run moved aside is not a row
    for key in ("mlrpl_version", "git_commit", "git_dirty"):
        assert rows["pbce_p0.3_s0"][key] == ("" if made[key] is None else str(made[key]))
    (run / "run.json").unlink()               # a run made before run.json existed
    assert main(["report", str(out), "--no-plots"]) == 0
    assert _results(out)["pbce_p0.3_s0"]["git_commit"] == ""


def test_recorded_runs_keep_their_configs():
    """The shipped sweep configs still make the configs of the recorded runs (one run per method
    of each sweep; `config_drift` over all of them is part of a recipe change's review)."""
    from mlrpl.config import resolved
    from mlrpl.engine.rundir import read_config
    from mlrpl.engine.rundir import config_drift
    from mlrpl.experiments.sweep import load_sweep, run_config
    checked = 0
    for f in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        spec = load_sweep(f)
        first = {}
        for run in spec.runs():
            if read_config(run.dir(REPO / spec.out)):
                first.setdefault(run.method, run)
        for run in first.values():
            saved = read_config(run.dir(REPO / spec.out))
            assert config_drift(saved, resolved(run_config(spec, run))) == [], (f.name, run.name)
            checked += 1
    assert checked >= 20

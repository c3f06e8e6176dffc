"""Sweeps: methods × known-label proportions × seeds over one dataset and backbone.

    mlrpl sweep --config configs/sweeps/coco128_cpu.yaml
    mlrpl sweep --config S.yaml --methods pbce,ssgrl --seeds 0 train.epochs=5   # narrowed
    torchrun --nproc_per_node=4 -m mlrpl sweep --config S.yaml                  # 4 devices

A sweep config is a YAML file::

    base: ../coco128_pbce_cpu.yaml   # an experiment config: relative to this file, the current
                                     # directory or the package; or a mapping
                                     # {config: PATH, overrides: [key=value, ...] or {nested: ...}}
    methods: all                     # every registered method, or a list of names and/or
                                     # {name: hst, label: hst_k5, overrides: [method.k=5]}
    method_overrides:                # optional, by label or name: [key=value, ...] or a mapping
      ssgrl: [method.trunk.dim=256]
    proportions: [0.1, 0.3, 0.5, 0.7, 0.9]   # data.known_proportion
    seeds: [0, 1, 2]                 # seed (also the partial-label mask's seed)
    out: benchmarks/results/coco128  # the sweep directory (relative to the current directory)
    report: {reference: true, baseline: pbce, run_plots: [pbce_p0.1_s0]}   # optional

Each run's config is: the base config (its ``method:`` keys only when the run's method is the
one named there) ← base overrides ← command-line overrides ← the method's overrides ←
``method.name``, ``data.known_proportion``, ``seed``, ``run.dir=<out>/runs/<label>_p<p>_s<seed>``.
Runs go in the order methods → proportions → seeds.

What is on disk decides what a run does, so an interrupted sweep continues where it stopped:
``metrics.json`` with all configured epochs → skipped; ``last.pt`` → resumed from it; a run
directory without ``last.pt`` → restarted from scratch. A finished or resumable run whose saved
config differs from the sweep's (other than paths, devices and ``train.stop_after_epochs``) is not
touched: it is reported failed, naming the keys, until its directory is removed. A run that raises
is reported (``<run>/error.txt``, the sweep log, ``results.csv``) and the others go on; the exit
status is 1 when any run failed.

Several devices: under ``torchrun`` with WORLD_SIZE > 1, run *i* goes to process *i* % WORLD_SIZE
and trains as one ordinary single-process run on its own device (``train.device=cuda:<LOCAL_RANK>``
when CUDA is available and the config says ``auto``/``cuda``; on CPU each process gets
``cpu_count / LOCAL_WORLD_SIZE`` threads unless ``train.threads`` is set). No process group is
created: the processes meet only at two barriers (after the feature cache, before the report)
through torchrun's key-value store, and rank 0 writes the report. The sweep directory must be on
a file system every process sees.

Written in ``<out>``: ``sweep.yaml`` (the resolved spec of the latest invocation and its list
of runs; reports also include run directories left by earlier, wider invocations), ``sweep.log``
(wall time of every run and of the sweep), ``runs/<run>/`` (ordinary run directories plus
``sweep_run.json``: status, action and wall time; ``error.txt`` on failure;
``per_class_last.csv``), then the report (:mod:`mlrpl.reports`): ``results.csv``,
``results.md``, ``plots/``.
"""
from __future__ import annotations

import gc
import json
import os
import re
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mlrpl.errors import ConfigError, MlrplError

RUN_RECORD = "sweep_run.json"
ERROR_FILE = "error.txt"
SPEC_FILE = "sweep.yaml"
LOG_FILE = "sweep.log"
PACKAGE_DIR = Path(__file__).resolve().parent

# Config keys that may differ between a finished run and the sweep asking for it again without
# changing the experiment (paths, devices, progress, the per-invocation epoch budget).
_DRIFT_IGNORED = ("run.", "train.stop_after_epochs", "train.device", "train.threads",
                  "train.progress", "train.tensorboard", "data.num_workers", "data.root",
                  "model.cache_dir")


# ---- the spec -----------------------------------------------------------------------------------
@dataclass
class MethodEntry:
    label: str                        # names the runs and the table rows
    name: str                         # the registered method
    overrides: list[str] = field(default_factory=list)


@dataclass
class RunSpec:
    name: str                         # <label>_p<p>_s<seed>
    method: str                       # label
    method_name: str
    p: float
    seed: int
    overrides: list[str]

    def dir(self, out: Path) -> Path:
        return out / "runs" / self.name


@dataclass
class SweepSpec:
    source: str | None
    base_config: str | None
    base_overrides: list[str]
    methods: list[MethodEntry]
    proportions: list[float]
    seeds: list[int]
    out: Path
    report: dict

    def runs(self) -> list[RunSpec]:
        runs = []
        for m in self.methods:
            for p in self.proportions:
                for s in self.seeds:
                    runs.append(RunSpec(run_name(m.label, p, s), m.label, m.name, p, s,
                                        list(m.overrides)))
        return runs

    def to_dict(self) -> dict:
        from mlrpl.version import __version__
        return {
            "mlrpl_version": __version__,
            "source": self.source,
            "base": {"config": self.base_config, "overrides": list(self.base_overrides)},
            "methods": [{"label": m.label, "name": m.name, "overrides": list(m.overrides)}
                        for m in self.methods],
            "proportions": list(self.proportions),
            "seeds": list(self.seeds),
            "out": str(self.out),
            "report": dict(self.report),
            "runs": [{"name": r.name, "method": r.method, "method_name": r.method_name,
                      "p": r.p, "seed": r.seed, "dir": f"runs/{r.name}"} for r in self.runs()],
        }


def run_name(label: str, p: float, seed: int) -> str:
    """``pbce_p0.3_s0``: the directory of one run under ``<out>/runs``."""
    return f"{label}_p{float(p):g}_s{int(seed)}"


def _dotlist(value, where: str, prefix: str = "") -> list[str]:
    """Overrides given as ``[key=value, ...]`` or as a nested mapping -> ``key=value`` strings."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if isinstance(v, dict) and v:
                out += _dotlist(v, where, f"{prefix}{k}.")
            else:
                # YAML (hence OmegaConf's override parser) reads JSON: lists, numbers, null, strings.
                out.append(f"{prefix}{k}={json.dumps(v)}")
        return out
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{where}: override {item!r} is not a 'key=value' string")
        return list(value)
    raise ConfigError(f"{where}: expected a list of key=value strings or a mapping, "
                      f"got {type(value).__name__}")


def _find_config(path: str, sweep_file: Path | None) -> Path:
    """An experiment config named in a sweep: relative to the sweep file, the current directory,
    then the package (so ``configs/x.yaml`` also works from an installed copy)."""
    p = Path(path).expanduser()
    cands = [p] if p.is_absolute() else (
        ([sweep_file.parent / p] if sweep_file else []) + [Path.cwd() / p, PACKAGE_DIR / p])
    for c in cands:
        if c.is_file():
            return c.resolve()
    raise ConfigError(f"base config {path!r} not found (looked in "
                      f"{', '.join(str(c.parent) for c in cands)})")


def _number_list(value, key: str, where: str, kind):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: '{key}' must be a non-empty list")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise ConfigError(f"{where}: bad value {v!r} in '{key}'; expected "
                              f"{'integers' if kind is int else 'numbers'}")
        out.append(kind(v))
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: '{key}' lists a value twice: {out}")
    return out


_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def load_sweep(path=None, data: dict | None = None, overrides=(), out=None, methods=None,
               proportions=None, seeds=None) -> SweepSpec:
    """Read and check a sweep config (a YAML file, or `data`); the keyword arguments narrow or
    replace its axes as the command line does. Raises ConfigError naming the bad key."""
    from mlrpl.methods import list_methods
    sweep_file = None
    if path is not None:
        sweep_file = Path(path)
        if not sweep_file.is_file():
            raise ConfigError(f"{sweep_file}: sweep config not found")
        try:
            data = yaml.safe_load(sweep_file.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{sweep_file}: not valid YAML ({e})") from None
    where = str(sweep_file) if sweep_file else "sweep config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with base, methods, proportions, seeds, out")
    known = {"base", "methods", "method_overrides", "proportions", "seeds", "out", "report"}
    unknown = sorted(set(data) - known)
    if unknown:
        import difflib
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'"
                          + (f"; did you mean '{close[0]}'?" if close else
                             f" (expected {sorted(known)})"))

    base = data.get("base")
    base_config, base_over = None, []
    if isinstance(base, str):
        base_config = base
    elif isinstance(base, dict):
        extra = sorted(set(base) - {"config", "overrides"})
        if extra:
            raise ConfigError(f"{where}: unknown key 'base.{extra[0]}' (expected config, overrides)")
        base_config = base.get("config")
        base_over = _dotlist(base.get("overrides"), f"{where}: base.overrides")
    elif base is not None:
        raise ConfigError(f"{where}: 'base' must be a config path or {{config, overrides}}")
    if base_config is not None:
        base_config = str(_find_config(str(base_config), sweep_file))
    base_over += _dotlist(list(overrides), "command line")

    registered = list_methods()
    raw_methods = data.get("methods", "all") if methods is None else methods
    spec_methods = raw_methods
    if raw_methods == "all":
        # the baselines first (the tables compare against them), then the rest by name
        first = [m for m in ("pbce", "ssgrl") if m in registered]
        raw_methods = first + [m for m in registered if m not in first]
    if isinstance(raw_methods, str):
        raw_methods = [m.strip() for m in raw_methods.split(",") if m.strip()]
    if not isinstance(raw_methods, list) or not raw_methods:
        raise ConfigError(f"{where}: 'methods' must be 'all' or a non-empty list")
    per_method = data.get("method_overrides") or {}
    if not isinstance(per_method, dict):
        raise ConfigError(f"{where}: 'method_overrides' must map a method to its overrides")
    entries: list[MethodEntry] = []
    for m in raw_methods:
        if isinstance(m, str):
            m = {"name": m}
        if not isinstance(m, dict) or "name" not in m:
            raise ConfigError(f"{where}: a 'methods' entry must be a name or {{name, label, "
                              f"overrides}}, got {m!r}")
        extra = sorted(set(m) - {"name", "label", "overrides"})
        if extra:
            raise ConfigError(f"{where}: unknown key '{extra[0]}' in the entry of method "
                              f"{m['name']!r} (expected name, label, overrides)")
        name = str(m["name"])
        if name not in registered:
            import difflib
            close = difflib.get_close_matches(name, registered, n=1)
            raise ConfigError(f"{where}: unknown method {name!r}"
                              + (f"; did you mean {close[0]!r}?" if close else "")
                              + f" (registered: {registered})")
        label = str(m.get("label", name))
        if not _LABEL.match(label):
            raise ConfigError(f"{where}: method label {label!r} is not a plain name "
                              f"(letters, digits, _ . + -)")
        ov = _dotlist(per_method.get(name) if label == name else
                      (per_method.get(label, per_method.get(name))),
                      f"{where}: method_overrides.{label}")
        ov += _dotlist(m.get("overrides"), f"{where}: overrides of method {label!r}")
        entries.append(MethodEntry(label, name, ov))
    labels = [e.label for e in entries]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{where}: method {dup[0]!r} appears twice; give the variants "
                          f"different 'label's")
    unused = sorted(set(per_method) - set(labels) - {e.name for e in entries})
    # With `methods: all`, overrides may name methods that are not registered (yet): a sweep
    # config can prepare for them. Otherwise a name outside the list is a typo.
    if unused and methods is None and spec_methods != "all":
        raise ConfigError(f"{where}: method_overrides names {unused[0]!r}, which is not in "
                          f"'methods'")

    props = _number_list(data.get("proportions") if proportions is None else proportions,
                         "proportions", where, float)
    for p in props:
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"{where}: proportion {p} is not in (0, 1]")
    seed_list = _number_list(data.get("seeds", [0]) if seeds is None else seeds,
                             "seeds", where, int)
    out_dir = out if out is not None else data.get("out")
    if not out_dir:
        raise ConfigError(f"{where}: 'out' (the sweep directory) is required")
    report = data.get("report") or {}
    if not isinstance(report, dict):
        raise ConfigError(f"{where}: 'report' must be a mapping")
    extra = sorted(set(report) - {"reference", "baseline", "run_plots"})
    if extra:
        raise ConfigError(f"{where}: unknown key 'report.{extra[0]}' "
                          f"(expected reference, baseline, run_plots)")
    return SweepSpec(str(sweep_file) if sweep_file else None, base_config, base_over, entries,
                     props, seed_list, Path(out_dir), dict(report))


def read_spec_file(out) -> dict | None:
    """The resolved spec written in a sweep directory (None when absent)."""
    f = Path(out) / SPEC_FILE
    return yaml.safe_load(f.read_text()) if f.is_file() else None


# ---- run configs --------------------------------------------------------------------------------
def _base_dict(spec: SweepSpec) -> dict:
    if spec.base_config is None:
        return {}
    from omegaconf import OmegaConf
    try:
        return OmegaConf.to_container(OmegaConf.load(spec.base_config), resolve=False) or {}
    except Exception as e:  # yaml errors of all kinds
        raise ConfigError(f"{spec.base_config}: not a valid YAML config ({e})") from None


def run_config(spec: SweepSpec, run: RunSpec, base: dict | None = None, extra=()):
    """The experiment config of one run (ConfigError when it is not valid)."""
    from mlrpl.config import load_config
    base = dict(_base_dict(spec) if base is None else base)
    method = base.get("method")
    if isinstance(method, dict) and method.get("name", "pbce") != run.method_name:
        # The base's method keys belong to the method named there; others start from defaults.
        base.pop("method")
    overrides = [*spec.base_overrides, *run.overrides, f"method.name={run.method_name}",
                 f"data.known_proportion={run.p!r}", f"seed={run.seed}",
                 f"run.dir={run.dir(spec.out)}", *extra]
    return load_config(None, overrides, base=base)


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_drift(saved: dict, new: dict) -> list[str]:
    """Keys whose value differs between a run's saved config and the sweep's config for it.

    A key the saved config lacks is not drift: it was added to the schema after the run was made,
    and a new key's default keeps the earlier behaviour. A key the new config lacks is."""
    a, b = _flat(saved), _flat(new)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if not k.startswith(_DRIFT_IGNORED) and k in a
            and a.get(k) != b.get(k)]


def run_state(run_dir: Path, epochs: int) -> str:
    """``finished`` | ``resume`` (a last.pt to continue) | ``restart`` (a directory without
    last.pt) | ``new``."""
    mfile = run_dir / "metrics.json"
    if mfile.is_file():
        try:
            if int(json.loads(mfile.read_text()).get("epochs", -1)) == int(epochs):
                return "finished"
        except (ValueError, OSError):
            pass
    if (run_dir / "last.pt").is_file():
        return "resume"
    if run_dir.exists():
        return "restart"
    return "new"


# ---- the log and the process group-free coordination ------------------------------------------
class SweepLog:
    """Lines with a time stamp, printed and appended to ``<out>/sweep.log``."""

    def __init__(self, path: Path, rank: int, world: int):
        self.path, self.tag = path, (f" [rank {rank}/{world}]" if world > 1 else "")

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}{self.tag} {msg}"
        print(f"[sweep]{self.tag} {msg}", flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


class Workers:
    """The processes of a sweep launched by torchrun: rank, world, and barriers through
    torchrun's key-value store. Deliberately no process group: each run is single-process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)) or 1)
        self.store = None
        if self.world > 1:
            import torch.distributed as tdist
            try:
                store, _, _ = next(tdist.rendezvous("env://"))
            except Exception as e:
                raise MlrplError(f"WORLD_SIZE={self.world}: cannot reach torchrun's store "
                                 f"({e}); launch with torchrun") from None
            # torchrun may restart the workers on the same store: one namespace per attempt
            attempt = (f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
                       f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")
            self.store = tdist.PrefixStore(f"mlrpl-sweep/{attempt}", store)

    def barrier(self, name: str, poll_s: float = 1.0) -> None:
        if self.store is None:
            return
        self.store.add(name, 1)
        while self.store.add(name, 0) < self.world:
            time.sleep(poll_s)

    def all_ok(self, ok: bool) -> bool:
        """True on every rank when every rank says ok (call on every rank, once)."""
        if self.store is None:
            return ok
        self.store.add("failed", 0 if ok else 1)
        self.barrier("failed-count")
        return self.store.add("failed", 0) == 0


# ---- running ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _record(run_dir: Path, run: RunSpec, **kw) -> dict:
    prev = _read_json(run_dir / RUN_RECORD)
    rec = {"name": run.name, "method": run.method, "method_name": run.method_name, "p": run.p,
           "seed": run.seed, "wall_s_total": float(prev.get("wall_s_total", 0.0))}
    rec.update(kw)
    rec["wall_s_total"] = round(rec["wall_s_total"] + float(kw.get("wall_s", 0.0)), 3)
    rec["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_json(run_dir / RUN_RECORD, rec)
    return rec


def _release_logging() -> None:
    """Close the file handlers the trainer attached to the ``mlrpl`` logger."""
    import logging
    lg = logging.getLogger("mlrpl")
    for h in list(lg.handlers):
        if isinstance(h, logging.FileHandler):
            lg.removeHandler(h)
            h.close()


def _save_per_class(trainer, run_dir: Path) -> None:
    """Per-class AP of the final model beside the run, so reports need no data to plot it."""
    from mlrpl.reports.tables import per_class_from_scores, write_per_class
    _, scores = trainer.evaluate(trainer.val_ds, trainer.exp.val.labels)
    rows = per_class_from_scores(scores, trainer.exp.val.labels, trainer.exp.train.classes,
                                 trainer.exp.partial, trainer.exp.train.labels,
                                 threshold=trainer.cfg.eval.threshold)
    write_per_class(rows, run_dir / "per_class_last.csv")


def execute_run(spec: SweepSpec, run: RunSpec, cfg, log: SweepLog, rank: int = 0) -> dict:
    """Train (or skip, resume, restart) one run; never raises for the run's own failures."""
    from mlrpl.config import resolved
    run_dir = run.dir(spec.out)
    if isinstance(cfg, Exception):  # the config itself was rejected
        return _fail(run_dir, run, "config", cfg, 0.0, log, rank)
    epochs = int(cfg.train.epochs)
    state = run_state(run_dir, epochs)
    if state in ("finished", "resume") and (run_dir / "config.yaml").is_file():
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        drift = config_drift(saved, resolved(cfg))
        if drift:
            err = MlrplError(
                f"the existing run {run_dir} was made with another configuration (differs in "
                f"{', '.join(drift[:8])}{' ...' if len(drift) > 8 else ''}); left untouched: "
                f"remove the directory to redo it with the sweep's configuration")
            return _fail(run_dir, run, state, err, 0.0, log, rank)
    if state == "finished":
        metrics = _read_json(run_dir / "metrics.json")
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        rec = _record(run_dir, run, status="done", action="skipped", wall_s=0.0, rank=rank)
        log(f"skip    {run.name}: finished earlier ({epochs} epochs, last mAP "
            f"{metrics.get('last', {}).get('mAP', float('nan')):.2f})")
        return rec

    from mlrpl.engine.trainer import Trainer
    if state != "resume":
        cfg.run.overwrite = True  # a directory without last.pt holds nothing worth keeping
    action = {"resume": "resumed", "restart": "restarted", "new": "trained"}[state]
    verb = {"resume": "resume", "restart": "restart"}.get(state, "train")
    log(f"start   {run.name}: {verb} "
        f"({run.method_name}, p={run.p:g}, seed={run.seed}, {epochs} epochs, {cfg.train.device})")
    t0 = time.time()
    trainer = None
    try:
        trainer = Trainer(cfg, resume=state == "resume")
        result = trainer.fit()
        if not (run_dir / "metrics.json").is_file() and result.get("last"):
            # resuming a checkpoint that had already done every epoch writes no epoch
            _write_json(run_dir / "metrics.json", result)
        status = "done" if int(result["epochs"]) >= epochs else "incomplete"
        if status == "done":
            try:
                _save_per_class(trainer, run_dir)
            except Exception as e:  # a report detail: never fails the run
                log(f"warning {run.name}: per-class AP not saved ({type(e).__name__}: {e})")
        wall = time.time() - t0
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        rec = _record(run_dir, run, status=status, action=action, wall_s=round(wall, 3),
                      epochs=int(result["epochs"]), epochs_configured=epochs, rank=rank,
                      device=str(trainer.device), error=None)
        last = result.get("last") or {}
        best = result.get("best") or {}
        log(f"{status:<7} {run.name} in {wall:.1f} s: {result['epochs']}/{epochs} epochs, last "
            f"mAP {last.get('mAP', float('nan')):.2f}, best {best.get('mAP', float('nan')):.2f} "
            f"at epoch {int(result['best_epoch']) + 1}")
        return rec
    except Exception as e:
        return _fail(run_dir, run, action, e, time.time() - t0, log, rank)
    finally:
        del trainer
        _release_logging()
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass


def _fail(run_dir: Path, run: RunSpec, action: str, err: BaseException, wall: float,
          log: SweepLog, rank: int) -> dict:
    text = f"{type(err).__name__}: {err}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).write_text(
        text + "\n\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    rec = _record(run_dir, run, status="failed", action=action, wall_s=round(wall, 3),
                  rank=rank, error=text)
    log(f"FAILED  {run.name} after {wall:.1f} s: {text.splitlines()[0] if text else ''} "
        f"(details in {run_dir / ERROR_FILE})")
    return rec


def _cache_signature(cfg) -> str | None:
    from mlrpl.config import resolved
    if cfg.model.freeze != "all" or not cfg.model.cache_features:
        return None
    r = resolved(cfg)
    data = {k: v for k, v in r["data"].items()
            if k not in ("known_proportion", "protocol", "fpc_n", "mask_seed", "mask_file",
                         "embeddings")}
    return json.dumps([data, r["model"], r["train"]["amp"], r["train"]["eval_batch_size"]],
                      sort_keys=True, default=str)


def build_caches(configs: list, log: SweepLog) -> None:
    """The frozen backbone's features, once per distinct (data, backbone) before any run."""
    from mlrpl.engine.evaluate import build_cache
    seen = set()
    for cfg in configs:
        if isinstance(cfg, Exception):
            continue
        sig = _cache_signature(cfg)
        if sig is None or sig in seen:
            continue
        seen.add(sig)
        t0 = time.time()
        try:
            for line in build_cache(cfg):
                log(f"cache   {line}")
            log(f"cache   ready in {time.time() - t0:.1f} s ({cfg.model.backbone})")
        except Exception as e:  # the runs will fail on their own and say why
            log(f"cache   not built ({type(e).__name__}: {e}); runs will try themselves")
        finally:
            _release_logging()


def _place(cfg, workers: Workers) -> None:
    """One device per process when the sweep is spread over several."""
    import torch
    if isinstance(cfg, Exception) or workers.world <= 1:
        return
    if torch.cuda.is_available() and cfg.train.device in ("auto", "cuda"):
        cfg.train.device = f"cuda:{workers.local_rank}"
    if (not torch.cuda.is_available() or str(cfg.train.device).startswith("cpu")) \
            and not cfg.train.threads:
        cfg.train.threads = max(1, (os.cpu_count() or 1) // max(workers.local_world, 1))


def run_sweep(config=None, overrides=(), out=None, methods=None, proportions=None, seeds=None,
              reference=None, dry_run=False, report=True, argv=None) -> int:
    """Run a sweep (see the module docstring). Returns the exit status: 0, or 1 when a run
    failed. Bad sweep configs raise ConfigError before anything is written."""
    spec = load_sweep(config, overrides=overrides, out=out, methods=methods,
                      proportions=proportions, seeds=seeds)
    runs = spec.runs()
    base = _base_dict(spec)
    configs = []
    for run in runs:
        try:
            configs.append(run_config(spec, run, base))
        except Exception as e:  # reported as that run's failure; the others go on
            configs.append(e)

    if dry_run:
        print(f"sweep {spec.source or ''}: {len(runs)} runs -> {spec.out}")
        for run, cfg in zip(runs, configs):
            if isinstance(cfg, Exception):
                what = f"config error: {cfg}"
            else:
                what = {"finished": "skip (finished)", "resume": "resume from last.pt",
                        "restart": "restart", "new": "train"}[
                    run_state(run.dir(spec.out), cfg.train.epochs)]
            print(f"  {run.name:<32} {what}")
        return 0

    workers = Workers()
    env_world = os.environ.get("WORLD_SIZE")
    if workers.world > 1:
        os.environ["WORLD_SIZE"] = "1"  # each run is one process: the trainer must not init DDP
    try:
        return _run(spec, runs, configs, workers, reference, report, argv)
    finally:
        if env_world is not None:
            os.environ["WORLD_SIZE"] = env_world


def _run(spec, runs, configs, workers: Workers, reference, report, argv) -> int:
    out = spec.out
    log = SweepLog(out / LOG_FILE, workers.rank, workers.world)
    t_start = time.time()
    if workers.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "runs").mkdir(exist_ok=True)
        d = spec.to_dict()
        d["command"] = " ".join(shlex.quote(a) for a in (argv or sys.argv))
        d["processes"] = workers.world
        tmp = out / f".{SPEC_FILE}.tmp"
        tmp.write_text(yaml.safe_dump(d, sort_keys=False))
        tmp.replace(out / SPEC_FILE)
        n_bad = sum(isinstance(c, Exception) for c in configs)
        log(f"sweep   {len(runs)} runs ({len(spec.methods)} methods x {len(spec.proportions)} "
            f"proportions x {len(spec.seeds)} seeds) -> {out}"
            + (f" on {workers.world} processes" if workers.world > 1 else "")
            + (f"; {n_bad} with an invalid config" if n_bad else ""))
        build_caches(configs, log)
    workers.barrier("cache")

    mine = [(i, r, c) for i, (r, c) in enumerate(zip(runs, configs))
            if i % workers.world == workers.rank]
    counts: dict[str, int] = {}
    for _, run, cfg in mine:
        _place(cfg, workers)
        rec = execute_run(spec, run, cfg, log, workers.rank)
        key = rec["status"] if rec["status"] != "done" else rec.get("action", "done")
        counts[key] = counts.get(key, 0) + 1
    wall = time.time() - t_start
    log(f"total   {wall:.1f} s for {len(mine)} runs: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    ok = workers.all_ok(counts.get("failed", 0) == 0)
    workers.barrier("done")
    status = 0 if ok else 1
    if workers.rank == 0:
        if workers.world > 1:
            log(f"total   {time.time() - t_start:.1f} s, all processes "
                f"({'no run failed' if ok else 'some runs failed'})")
        if report:
            from mlrpl.reports import build_sweep_report
            try:
                written = build_sweep_report(out, reference=reference)
                log(f"report  {', '.join(str(p) for p in written)}")
            except Exception as e:
                log(f"report  failed: {type(e).__name__}: {e}")
                traceback.print_exc()
                status = 1
    return status

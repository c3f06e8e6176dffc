"""Sweeps: methods × known-label proportions × seeds over one dataset and backbone.

    mlrpl sweep --config configs/sweeps/coco128_cpu.yaml
    mlrpl sweep --config S.yaml --methods pbce,ssgrl --seeds 0 sched.name=step   # narrowed
    torchrun --nproc_per_node=4 -m mlrpl sweep --config S.yaml                  # 4 devices

The sweep config (its YAML format and schema) is :mod:`mlrpl.experiments.spec`.

Each run's config is: the base config (its ``method:`` keys only when the run's method is the
one named there) ← base overrides ← command-line overrides ← the method's recipe for the sweep's
``regime`` (:func:`mlrpl.methods.recipe`) ← the sweep's ``method_overrides`` for it ← the entry's
overrides ← ``method.name``, ``data.known_proportion``, ``seed``,
``run.dir=<out>/runs/<label>_p<p>_s<seed>``. A recipe comes after the command line: a recipe key
(e.g. ``train.epochs`` of the SARL methods) is changed through ``method_overrides``.
Runs go in the order methods → proportions → seeds.

What is on disk decides what a run does, so an interrupted sweep continues where it stopped:
``metrics.json`` with all configured epochs → skipped; ``last.pt`` → resumed from it; a run
directory without ``last.pt`` → restarted from scratch. A finished or resumable run whose saved
config differs from the sweep's (other than paths, devices and ``train.stop_after_epochs``) is not
touched: it is reported failed, naming the keys, until its directory is removed. A finished or
resumable run whose method's code changed since it was made (``run.json``'s ``method_code`` is
not :func:`mlrpl.methods.method_code_digest`, or is missing) is trained again, its directory
moved aside to ``<run>.stale-<time>``, unless the sweep is told ``--reuse-stale``. A run that raises
is reported (``<run>/error.txt``, the sweep log, ``results.csv``) and the others go on; the exit
status is 1 when any run failed.

Several devices: under ``torchrun`` with WORLD_SIZE > 1, run *i* goes to process *i* % WORLD_SIZE
and trains as one ordinary single-process run on its own device (``train.device=cuda:<LOCAL_RANK>``
when CUDA is available and the config says ``auto``/``cuda``; on CPU each process gets
``cpu_count / LOCAL_WORLD_SIZE`` threads unless ``train.threads`` is set). No process group is
created: the processes meet only at two barriers (after the feature cache, before the report)
through torchrun's key-value store, and rank 0 writes the report. The sweep directory must be on
a file system every process sees.

Written in ``<out>``: ``sweep.yaml`` (the resolved spec of the latest invocation, the code version
it ran, and its list of runs; reports also include run directories left by earlier, wider
invocations), ``sweep.log`` (wall time of every run and of the sweep), ``runs/<run>/`` (ordinary
run directories plus ``sweep_run.json``: status, action and wall time; ``error.txt`` on failure;
``per_class_last.csv``), then the report (:mod:`mlrpl.experiments.reports`): ``results.csv``,
``results.md``, ``plots/``.
"""
from __future__ import annotations

import gc
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import yaml

from mlrpl.engine import rundir
from mlrpl.errors import MlrplError
from mlrpl.experiments.spec import SWEEP_FILE, RunSpec, SweepSpec, load_sweep  # noqa: F401 (load_sweep)

LOG_FILE = "sweep.log"

# Config keys that may differ between a finished run and the sweep asking for it again without
# changing the experiment (paths, devices, progress, the per-invocation epoch budget).
# ---- run configs --------------------------------------------------------------------------------
def _base_dict(spec: SweepSpec) -> dict:
    if spec.base_config is None:
        return {}
    from omegaconf import OmegaConf

    from mlrpl.config import load_yaml_chain
    # the base file with the files its own ``base:`` key names merged in, as ``mlrpl train``
    chain = load_yaml_chain(Path(spec.base_config))
    return OmegaConf.to_container(OmegaConf.merge(*chain), resolve=False) or {}


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


def run_state(run_dir: Path, epochs: int) -> str:
    """``finished`` | ``resume`` (a last.pt to continue) | ``restart`` (a directory without
    last.pt) | ``new``."""
    try:
        metrics = rundir.read_json(run_dir / rundir.METRICS)
        if int(metrics.get("epochs", -1)) == int(epochs) or metrics.get("stopped_early"):
            return "finished"
    except (TypeError, ValueError):
        pass
    if (run_dir / rundir.LAST).is_file():
        return "resume"
    if run_dir.exists():
        return "restart"
    return "new"


def stale_reason(run_dir: Path, method_name: str) -> str | None:
    """Why an existing run must be trained again for its method's code (None: it need not)."""
    from mlrpl.methods import method_code_digest
    made = rundir.read_run_record(run_dir).get("method_code")
    if made == method_code_digest(method_name):
        return None
    return "method code changed since this run" + (
        "" if made else f" (its {rundir.RUN_RECORD} records no method code)")


def set_aside(run_dir: Path) -> Path:
    """Move a run directory to ``<run>.stale-<time>`` (never deleted); returns the new path."""
    from mlrpl.utils.files import move_aside
    return move_aside(run_dir, "stale")


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
def _record(run_dir: Path, run: RunSpec, **kw) -> dict:
    prev = rundir.read_json(run_dir / rundir.SWEEP_RECORD)
    rec = {"name": run.name, "method": run.method, "method_name": run.method_name, "p": run.p,
           "seed": run.seed, "wall_s_total": float(prev.get("wall_s_total", 0.0))}
    rec.update(kw)
    rec["wall_s_total"] = round(rec["wall_s_total"] + float(kw.get("wall_s", 0.0)), 3)
    rec["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rundir.write_json(run_dir / rundir.SWEEP_RECORD, rec)
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
    from mlrpl.experiments.reports.tables import per_class_from_scores, write_per_class
    _, scores = trainer.evaluate(trainer.val_ds, trainer.exp.val.labels)
    rows = per_class_from_scores(scores, trainer.exp.val.labels, trainer.exp.train.classes,
                                 trainer.exp.partial, trainer.exp.train.labels,
                                 threshold=trainer.cfg.eval.threshold)
    write_per_class(rows, run_dir / rundir.PER_CLASS)


def _drift_error(run_dir: Path, cfg) -> MlrplError | None:
    """The error of an existing run made with another configuration (None when it is not)."""
    from mlrpl.config import resolved
    saved = rundir.read_config(run_dir)
    drift = rundir.config_drift(saved, resolved(cfg)) if saved else []
    if not drift:
        return None
    return MlrplError(
        f"the existing run {run_dir} was made with another configuration (differs in "
        f"{', '.join(drift[:8])}{' ...' if len(drift) > 8 else ''}); left untouched: "
        f"remove the directory to redo it with the sweep's configuration")


def execute_run(spec: SweepSpec, run: RunSpec, cfg, log: SweepLog, rank: int = 0,
                reuse_stale: bool = False) -> dict:
    """Train (or skip, resume, restart, redo) one run; never raises for the run's own failures.

    The run's directory is locked while it is handled: a run in use by another process (another
    sweep over the same folder, a ``mlrpl train`` by hand) is reported as failed, untouched."""
    run_dir = run.dir(spec.out)
    if isinstance(cfg, Exception):  # the config itself was rejected
        return _fail(run_dir, run, "config", cfg, 0.0, log, rank)
    lock = rundir.RunLock(run_dir)
    try:
        lock.acquire()
    except MlrplError as e:
        log(f"busy    {run.name}: {e}")
        return {"name": run.name, "method": run.method, "method_name": run.method_name,
                "p": run.p, "seed": run.seed, "status": "failed", "action": "busy",
                "error": str(e), "wall_s": 0.0, "rank": rank}  # nothing written in its folder
    try:
        return _execute_locked(run_dir, spec, run, cfg, log, rank, reuse_stale)
    finally:
        lock.release()


def _execute_locked(run_dir: Path, spec: SweepSpec, run: RunSpec, cfg, log: SweepLog, rank: int,
                    reuse_stale: bool) -> dict:
    epochs = int(cfg.train.epochs)
    state = run_state(run_dir, epochs)
    if state in ("finished", "resume"):
        err = _drift_error(run_dir, cfg)
        if err is not None:
            return _fail(run_dir, run, state, err, 0.0, log, rank)
        why = None if reuse_stale else stale_reason(run_dir, run.method_name)
        if why:
            aside = set_aside(run_dir)
            log(f"redo    {run.name}: {why}; the earlier run moved to {aside.name}")
            state = "stale"
    if state == "finished":
        return _skip(run_dir, run, epochs, log, rank)
    return _train(run_dir, run, cfg, state, log, rank)


def _skip(run_dir: Path, run: RunSpec, epochs: int, log: SweepLog, rank: int) -> dict:
    metrics = rundir.read_json(run_dir / rundir.METRICS)
    (run_dir / rundir.ERROR).unlink(missing_ok=True)
    rec = _record(run_dir, run, status="done", action="skipped", wall_s=0.0, rank=rank)
    log(f"skip    {run.name}: finished earlier ({epochs} epochs, last mAP "
        f"{metrics.get('last', {}).get('mAP', float('nan')):.2f})")
    return rec


# What a sweep writes in a run directory beside the trainer's files.
_OWN_FILES = {rundir.SWEEP_RECORD, rundir.ERROR}

# state -> (what the log says, the action recorded)
_STARTS = {"resume": ("resume", "resumed"), "restart": ("restart", "restarted"),
           "new": ("train", "trained"), "stale": ("redo", "redone")}


def _take_own_files(run_dir: Path) -> dict:
    """A directory holding only what the sweep wrote (a run that failed before the trainer
    kept anything) is emptied, so the trainer starts it afresh; returns the sweep's record."""
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - _OWN_FILES:
        return {}
    rec = rundir.read_json(run_dir / rundir.SWEEP_RECORD)
    for name in _OWN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    return rec


def _trainer(cfg, state: str, run_dir: Path):
    from mlrpl.engine.trainer import Trainer
    prev = _take_own_files(run_dir) if state == "restart" else {}
    try:
        return Trainer(cfg, resume=state == "resume")
    finally:
        if prev:  # the record goes back: its wall time adds up over the attempts
            rundir.write_json(run_dir / rundir.SWEEP_RECORD, prev)


def _train(run_dir: Path, run: RunSpec, cfg, state: str, log: SweepLog, rank: int) -> dict:
    if state != "resume":
        cfg.run.overwrite = True  # a directory without last.pt holds nothing worth keeping
    verb, action = _STARTS[state]
    epochs = int(cfg.train.epochs)
    log(f"start   {run.name}: {verb} "
        f"({run.method_name}, p={run.p:g}, seed={run.seed}, {epochs} epochs, {cfg.train.device})")
    t0 = time.time()
    trainer = None
    try:
        trainer = _trainer(cfg, state, run_dir)
        result = trainer.fit()
        return _trained(run_dir, run, trainer, result, action, time.time() - t0, log, rank)
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


def _trained(run_dir: Path, run: RunSpec, trainer, result: dict, action: str, wall: float,
             log: SweepLog, rank: int) -> dict:
    """Record and log a run that trained (to the end or not)."""
    epochs = int(trainer.cfg.train.epochs)
    if not (run_dir / rundir.METRICS).is_file() and result.get("last"):
        # resuming a checkpoint that had already done every epoch writes no epoch
        rundir.write_json(run_dir / rundir.METRICS, result)
    status = "done" if int(result["epochs"]) >= epochs else "incomplete"
    if status == "done":
        try:
            _save_per_class(trainer, run_dir)
        except Exception as e:  # a report detail: never fails the run
            log(f"warning {run.name}: per-class AP not saved ({type(e).__name__}: {e})")
    (run_dir / rundir.ERROR).unlink(missing_ok=True)
    rec = _record(run_dir, run, status=status, action=action, wall_s=round(wall, 3),
                  epochs=int(result["epochs"]), epochs_configured=epochs, rank=rank,
                  device=str(trainer.device), error=None)
    last = result.get("last") or {}
    best = result.get("best") or {}
    log(f"{status:<7} {run.name} in {wall:.1f} s: {result['epochs']}/{epochs} epochs, last "
        f"mAP {last.get('mAP', float('nan')):.2f}, best {best.get('mAP', float('nan')):.2f} "
        f"at epoch {result['best_epoch']}")
    return rec


def _fail(run_dir: Path, run: RunSpec, action: str, err: BaseException, wall: float,
          log: SweepLog, rank: int) -> dict:
    text = f"{type(err).__name__}: {err}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / rundir.ERROR).write_text(
        text + "\n\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    rec = _record(run_dir, run, status="failed", action=action, wall_s=round(wall, 3),
                  rank=rank, error=text)
    log(f"FAILED  {run.name} after {wall:.1f} s: {text.splitlines()[0] if text else ''} "
        f"(details in {run_dir / rundir.ERROR})")
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
              reference=None, dry_run=False, report=True, argv=None, reuse_stale=False) -> int:
    """Run a sweep (see the module docstring). Returns the exit status: 0, or 1 when a run
    failed. Bad sweep configs raise ConfigError before anything is written. `reuse_stale`: keep
    finished and resumable runs whose method's code changed since they were made."""
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
        return _dry_run(spec, runs, configs, reuse_stale)

    workers = Workers()
    env_world = os.environ.get("WORLD_SIZE")
    if workers.world > 1:
        os.environ["WORLD_SIZE"] = "1"  # each run is one process: the trainer must not init DDP
    try:
        return _run(spec, runs, configs, workers, reference, report, argv, reuse_stale)
    finally:
        if env_world is not None:
            os.environ["WORLD_SIZE"] = env_world


_PLANS = {"finished": "skip (finished)", "resume": "resume from last.pt", "restart": "restart",
          "new": "train"}


def _dry_run(spec: SweepSpec, runs: list[RunSpec], configs: list, reuse_stale: bool) -> int:
    print(f"sweep {spec.source or ''}: {len(runs)} runs -> {spec.out}")
    for run, cfg in zip(runs, configs):
        if isinstance(cfg, Exception):
            what = f"config error: {cfg}"
        else:
            state = run_state(run.dir(spec.out), cfg.train.epochs)
            why = (None if reuse_stale or state not in ("finished", "resume")
                   else stale_reason(run.dir(spec.out), run.method_name))
            what = f"redo ({why})" if why else _PLANS[state]
        print(f"  {run.name:<32} {what}")
    return 0


def _start(spec: SweepSpec, runs: list, configs: list, workers: Workers, argv,
           log: SweepLog) -> None:
    """Rank 0, before any run: the sweep directory, its resolved spec, the feature caches."""
    from mlrpl.utils.files import atomic_write_text
    out = spec.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    d = spec.to_dict()
    d["command"] = " ".join(shlex.quote(a) for a in (argv or sys.argv))
    d["processes"] = workers.world
    atomic_write_text(out / SWEEP_FILE, yaml.safe_dump(d, sort_keys=False))
    n_bad = sum(isinstance(c, Exception) for c in configs)
    log(f"sweep   {len(runs)} runs ({len(spec.methods)} methods x {len(spec.proportions)} "
        f"proportions x {len(spec.seeds)} seeds, regime {spec.regime}) -> {out}"
        + (f" on {workers.world} processes" if workers.world > 1 else "")
        + (f"; {n_bad} with an invalid config" if n_bad else ""))
    build_caches(configs, log)


def _report(out: Path, reference, log: SweepLog) -> bool:
    from mlrpl.experiments.reports import build_sweep_report
    try:
        written = build_sweep_report(out, reference=reference)
        log(f"report  {', '.join(str(p) for p in written)}")
        return True
    except Exception as e:
        log(f"report  failed: {type(e).__name__}: {e}")
        traceback.print_exc()
        return False


def _run(spec, runs, configs, workers: Workers, reference, report, argv, reuse_stale) -> int:
    log = SweepLog(spec.out / LOG_FILE, workers.rank, workers.world)
    t_start = time.time()
    if workers.rank == 0:
        _start(spec, runs, configs, workers, argv, log)
    workers.barrier("cache")

    mine = [(i, r, c) for i, (r, c) in enumerate(zip(runs, configs))
            if i % workers.world == workers.rank]
    counts: dict[str, int] = {}
    for _, run, cfg in mine:
        _place(cfg, workers)
        rec = execute_run(spec, run, cfg, log, workers.rank, reuse_stale)
        key = rec["status"] if rec["status"] != "done" else rec.get("action", "done")
        counts[key] = counts.get(key, 0) + 1
    wall = time.time() - t_start
    log(f"total   {wall:.1f} s for {len(mine)} runs: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    ok = workers.all_ok(counts.get("failed", 0) == 0)
    workers.barrier("done")
    if workers.rank != 0:
        return 0 if ok else 1
    if workers.world > 1:
        log(f"total   {time.time() - t_start:.1f} s, all processes "
            f"({'no run failed' if ok else 'some runs failed'})")
    if report and not _report(spec.out, reference, log):
        ok = False
    return 0 if ok else 1

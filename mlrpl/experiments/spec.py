"""The sweep spec: its schema, how a sweep YAML is read and checked, and the resolved spec that a
sweep writes in its directory (``sweep.yaml``), which the reports read back.

A sweep config is a YAML file::

    base: ../coco128_pbce_cpu.yaml   # an experiment config: relative to this file, the current
                                     # directory or the package; or a mapping
                                     # {config: PATH, overrides: [key=value, ...] or {nested: ...}}
    regime: cpu-cached               # the training regime (mlrpl.methods.REGIMES): each method
                                     # trains with its own recipe for it
    methods: all                     # every registered method, or a list of names and/or
                                     # {name: hst, label: hst_k5, overrides: [method.k=5]}
    method_overrides:                # optional, by label or name: [key=value, ...] or a mapping
      ssgrl: [method.trunk.dim=256]
    proportions: [0.1, 0.3, 0.5, 0.7, 0.9]   # data.known_proportion
    seeds: [0, 1, 2]                 # seed (also the partial-label mask's seed)
    out: benchmarks/results/coco128  # the sweep directory (relative to the current directory)
    report: {reference: true, baseline: pbce, run_plots: [pbce_p0.1_s0]}   # optional

The schema is :class:`SweepConfig` (OmegaConf, as the experiment config): an unknown key is an
error naming it with the closest existing one, a value of the wrong type an error naming its key.
A method that declares no recipe for the sweep's regime needs ``method_overrides`` of its own:
a sweep never trains a method with another method's recipe.

Imports nothing of the engine, the sweep runner or the reports (the reports read specs here).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import OmegaConf

from mlrpl.errors import ConfigError

SWEEP_FILE = "sweep.yaml"
PACKAGE_DIR = Path(__file__).resolve().parents[1]   # the mlrpl package (its configs/)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ---- the schema ---------------------------------------------------------------------------------
@dataclass
class BaseItem:
    config: Optional[str] = None     # an experiment config file
    overrides: Any = None            # [key=value, ...] or a nested mapping


@dataclass
class MethodItem:
    name: str = ""                   # a registered method (required)
    label: Optional[str] = None      # names the runs and the table rows (default: name)
    overrides: Any = None            # [key=value, ...] or a nested mapping


@dataclass
class ReportOptions:
    reference: bool = False          # the published table, separate, in results.md
    baseline: str = "pbce"           # the method the gain tables compare against
    run_plots: Optional[List[str]] = None   # runs whose own plots are drawn


@dataclass
class SweepConfig:
    base: Any = None                 # a path, or BaseItem
    regime: str = "cpu-cached"       # one of mlrpl.methods.REGIMES
    methods: Any = "all"             # "all", "a,b", or a list of names / MethodItem
    method_overrides: Dict[str, Any] = field(default_factory=dict)
    proportions: Optional[List[float]] = None
    seeds: List[int] = field(default_factory=lambda: [0])
    out: Optional[str] = None
    report: ReportOptions = field(default_factory=ReportOptions)


# ---- the resolved spec --------------------------------------------------------------------------
@dataclass
class MethodEntry:
    label: str                        # names the runs and the table rows
    name: str                         # the registered method
    overrides: list[str] = field(default_factory=list)   # method_overrides, then the entry's
    recipe: list[str] = field(default_factory=list)      # the method's recipe for the regime


@dataclass
class RunSpec:
    name: str                         # <label>_p<p>_s<seed>
    method: str                       # label
    method_name: str
    p: float
    seed: int
    overrides: list[str]              # the recipe, then the method's overrides

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
    regime: str = "cpu-cached"

    def runs(self) -> list[RunSpec]:
        return [RunSpec(run_name(m.label, p, s), m.label, m.name, p, s,
                        [*m.recipe, *m.overrides])
                for m in self.methods for p in self.proportions for s in self.seeds]

    def to_dict(self) -> dict:
        from mlrpl.engine.rundir import code_version
        return {
            **code_version(),
            "source": self.source,
            "base": {"config": self.base_config, "overrides": list(self.base_overrides)},
            "regime": self.regime,
            "methods": [{"label": m.label, "name": m.name, "recipe": list(m.recipe),
                         "overrides": list(m.overrides)} for m in self.methods],
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


def read_spec_file(out) -> dict | None:
    """The resolved spec written in a sweep directory (None when absent)."""
    f = Path(out) / SWEEP_FILE
    return yaml.safe_load(f.read_text()) if f.is_file() else None


# ---- reading a sweep config ---------------------------------------------------------------------
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


def _checked(schema_cls, data, origin: str) -> dict:
    """`data` merged onto the schema (unknown keys and wrong types are errors), as plain data."""
    from mlrpl.config import checked_merge
    node = checked_merge(OmegaConf.structured(schema_cls), data, origin=origin)
    return OmegaConf.to_container(node, resolve=False)


def _read(path, data) -> tuple[Path | None, Any]:
    if path is None:
        return None, data
    sweep_file = Path(path)
    if not sweep_file.is_file():
        raise ConfigError(f"{sweep_file}: sweep config not found")
    from mlrpl.config import read_yaml
    return sweep_file, read_yaml(sweep_file, "a sweep config (a YAML mapping)")


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


def _base(base, sweep_file: Path | None, where: str) -> tuple[str | None, list[str]]:
    """(the base config's resolved path or None, the base overrides)."""
    if base is None:
        return None, []
    if isinstance(base, str):
        base = {"config": base}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: 'base' must be a config path or {{config, overrides}}")
    item = _checked(BaseItem, base, f" in 'base' of {where}")
    path = item["config"]
    return (None if path is None else str(_find_config(str(path), sweep_file)),
            _dotlist(item["overrides"], f"{where}: base.overrides"))


def _method_items(raw, registered: list[str], where: str) -> list[dict]:
    """The `methods` value as checked MethodItem dicts (``all`` and ``a,b`` expanded)."""
    if raw == "all":
        # the baselines first (the tables compare against them), then the rest by name
        first = [m for m in ("pbce", "ssgrl") if m in registered]
        raw = first + [m for m in registered if m not in first]
    if isinstance(raw, str):
        raw = [m.strip() for m in raw.split(",") if m.strip()]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: 'methods' must be 'all' or a non-empty list")
    return [_method_item(m, registered, where) for m in raw]


def _method_item(m, registered: list[str], where: str) -> dict:
    if isinstance(m, str):
        m = {"name": m}
    if not isinstance(m, dict) or "name" not in m:
        raise ConfigError(f"{where}: a 'methods' entry must be a name or {{name, label, "
                          f"overrides}}, got {m!r}")
    item = _checked(MethodItem, m, f" in the entry of method {m['name']!r} in {where}")
    if item["name"] not in registered:
        import difflib
        close = difflib.get_close_matches(item["name"], registered, n=1)
        raise ConfigError(f"{where}: unknown method {item['name']!r}"
                          + (f"; did you mean {close[0]!r}?" if close else "")
                          + f" (registered: {registered})")
    item["label"] = item["label"] or item["name"]
    if not _LABEL.match(item["label"]):
        raise ConfigError(f"{where}: method label {item['label']!r} is not a plain name "
                          f"(letters, digits, _ . + -)")
    return item


def _own_overrides(item: dict, per_method: dict):
    """The method_overrides of an entry: by its label, else by its method's name (a variant with
    its own label takes its method's); None when the sweep gives none."""
    if item["label"] in per_method:
        return per_method[item["label"]]
    return per_method.get(item["name"])


def _recipe(item: dict, regime: str, has_overrides: bool, where: str) -> list[str]:
    """The method's recipe for the regime; a method without one needs method_overrides."""
    from mlrpl.methods import get_method_class, recipe
    found = recipe(item["name"], regime)
    if found is None and not has_overrides:
        declared = sorted(get_method_class(item["name"]).recipes)
        raise ConfigError(
            f"{where}: method {item['name']!r} declares no recipe for regime {regime!r} "
            f"(it declares {declared or 'none'}) and the sweep gives it no method_overrides; "
            f"give its settings under method_overrides.{item['label']} or choose a regime it "
            f"declares")
    return found or []


def _entries(items: list[dict], per_method: dict, regime: str, where: str) -> list[MethodEntry]:
    entries = []
    for item in items:
        own = _own_overrides(item, per_method)
        ov = _dotlist(own, f"{where}: method_overrides.{item['label']}")
        ov += _dotlist(item["overrides"], f"{where}: overrides of method {item['label']!r}")
        entries.append(MethodEntry(item["label"], item["name"], ov,
                                   _recipe(item, regime, own is not None, where)))
    labels = [e.label for e in entries]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{where}: method {dup[0]!r} appears twice; give the variants "
                          f"different 'label's")
    return entries


def _check_unused(per_method: dict, entries: list[MethodEntry], where: str) -> None:
    unused = sorted(set(per_method) - {e.label for e in entries} - {e.name for e in entries})
    if unused:
        raise ConfigError(f"{where}: method_overrides names {unused[0]!r}, which is not in "
                          f"'methods'")


def _axis(values, key: str, where: str) -> list:
    if not values:
        raise ConfigError(f"{where}: '{key}' must be a non-empty list")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: '{key}' lists a value twice: {values}")
    return list(values)


def _replaced(data: dict, **given) -> dict:
    """The spec with the command line's replacements (a single number is a list of one)."""
    data = {**data, **{k: v for k, v in given.items() if v is not None}}
    for key in ("proportions", "seeds"):
        if isinstance(data.get(key), (int, float)) and not isinstance(data.get(key), bool):
            data[key] = [data[key]]
    return data


def load_sweep(path=None, data: dict | None = None, overrides=(), out=None, methods=None,
               proportions=None, seeds=None) -> SweepSpec:
    """Read and check a sweep config (a YAML file, or `data`); the keyword arguments narrow or
    replace its axes as the command line does. Raises ConfigError naming the bad key."""
    from mlrpl.methods import REGIMES, list_methods
    sweep_file, data = _read(path, data)
    where = str(sweep_file) if sweep_file else "sweep config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with base, methods, proportions, seeds, out")
    if methods is not None and isinstance(data.get("methods"), list):
        # a name that is one of the config's labels selects that entry, overrides and all
        given = methods.split(",") if isinstance(methods, str) else list(methods)
        labelled = {str(m.get("label") or m.get("name")) if isinstance(m, dict) else str(m): m
                    for m in data["methods"]}
        methods = [labelled.get(str(m).strip(), m) for m in given]
    cfg = _checked(SweepConfig, _replaced(data, methods=methods, proportions=proportions,
                                          seeds=seeds, out=None if out is None else str(out)),
                   f" in {where}")
    if cfg["regime"] not in REGIMES:
        raise ConfigError(f"{where}: bad value for 'regime': {cfg['regime']!r}; expected one of "
                          f"{sorted(REGIMES)}")
    base_config, base_over = _base(cfg["base"], sweep_file, where)
    base_over += _dotlist(list(overrides), "command line")
    per_method = cfg["method_overrides"]
    entries = _entries(_method_items(cfg["methods"], list_methods(), where), per_method,
                       cfg["regime"], where)
    # With `methods: all`, overrides may name methods that are not registered (yet): a sweep
    # config can prepare for them. Otherwise a name outside the list is a typo.
    if methods is None and data.get("methods", "all") != "all":
        _check_unused(per_method, entries, where)
    props = _axis(cfg["proportions"], "proportions", where)
    for p in props:
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"{where}: proportion {p} is not in (0, 1]")
    if not cfg["out"]:
        raise ConfigError(f"{where}: 'out' (the sweep directory) is required")
    return SweepSpec(str(sweep_file) if sweep_file else None, base_config, base_over, entries,
                     props, _axis(cfg["seeds"], "seeds", where), Path(cfg["out"]),
                     cfg["report"], cfg["regime"])

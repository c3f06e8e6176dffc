"""Experiment configuration: typed defaults, a YAML file, dotted overrides (OmegaConf).

    cfg = load_config("configs/coco128_pbce_cpu.yaml", ["method.name=pbce", "train.epochs=5"])

The schema below is the whole set of keys; an unknown key is an error that names it and
suggests the closest existing one. A method's own keys live under ``method`` and are declared by
the method's ``Config`` dataclass (see :mod:`mlrpl.methods`), so they are checked too.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mlrpl.errors import ConfigError, check_value_in
from mlrpl.models.backbones import FREEZE_POLICIES


@dataclass
class DataConfig:
    dataset: str = "yolo"            # reader name (mlrpl.data.readers.READERS)
    root: str = "${oc.env:MLRPL_DATA,data}/coco128"
    train_split: Optional[str] = "train2017"
    val_split: Optional[str] = "val2017"   # null: hold out `holdout` of the train split
    val_root: Optional[str] = None   # evaluation labels in another file / root than `root`
    holdout: float = 0.2             # used when val_split is null (and no val_root)
    split_seed: int = 0              # seed of that holdout split (fixed across experiment seeds)
    reader_options: dict = field(default_factory=dict)
    # as_read | opaque: the classes renamed c00, c01, ... after reading (what a name-based class
    # prior knows without the names; the labels are unchanged)
    class_names: str = "as_read"
    known_proportion: float = 1.0    # p of the partial-label protocol
    protocol: str = "hcp"            # hcp | rps | fpc | single-positive | full
    fpc_n: Optional[int] = None
    mask_seed: Optional[int] = None  # null: `seed`
    mask_file: Optional[str] = None  # a published / saved mask instead of simulating
    # Labels that already hold unknowns are used as they are; true lets the protocol hide more.
    simulate_on_partial: bool = False
    image_size: int = 448
    embeddings: Optional[str] = None  # .npy with .names.txt beside it; null: search, then encoder
    on_bad_image: str = "error"      # error | skip
    num_workers: int = 0


@dataclass
class PriorConfig:
    # none | imagenet: the backbone's ImageNet classifier mapped to the dataset's classes by
    # label-name similarity (ConSE), added to the method's logits (mlrpl.models.prior)
    name: str = "none"
    top_k: int = 10                  # ImageNet classes mixed into each class
    temperature: float = 0.1         # softmax temperature over their name similarities
    # wordnet: also every ImageNet category WordNet places under the class's name, in full
    # ("dog": all its breeds); names: the top_k name neighbours alone
    match: str = "wordnet"
    weight: float = 1.0              # scale of the prior's logit added to the method's logits
    # known_labels: before training, each class's prior is scored on the training split's known
    # labels and scaled by a trust in [0, 1] (0 where it does not beat chance; the class name's
    # similarity where too few labels are known: mlrpl.models.prior_trust); none: full trust
    trust: str = "known_labels"
    # window sizes the ImageNet classifier also looks at, as fractions of the feature map's side
    # (1: the whole image); per class the best window of each size, the sizes averaged in logit
    # space, so an object that does not dominate the photo still scores. [1.0]: whole image only
    regions: Any = field(default_factory=lambda: [1.0, 0.5, 0.25])


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: Any = True           # true | false | path to a weight file
    freeze: str = "all"              # none | hcp | all
    cache_features: bool = True      # only with freeze=all: compute feature maps once
    # only with freeze=hcp: compute the frozen layers' output once and train the last stage on
    # it (no image augmentation: the cached-maps regime with a backbone stage that learns)
    cache_prefix: bool = False
    cache_dir: str = "${oc.env:MLRPL_CACHE,.cache/mlrpl}"
    prior: PriorConfig = field(default_factory=PriorConfig)


@dataclass
class OptimConfig:
    name: str = "adam"               # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9            # sgd
    backbone_lr_mult: float = 1.0
    grad_clip: Optional[float] = None


@dataclass
class SchedConfig:
    name: str = "step"               # none | step | cosine | onecycle
    step_size: int = 10
    gamma: float = 0.1
    pct_start: float = 0.2           # onecycle
    min_lr: float = 0.0              # cosine


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 64
    amp: Optional[str] = None        # null | bf16 | fp16
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None    # torch's intra-op threads; null: torch's default (all cores)
    progress: str = "auto"           # auto (terminal: a bar; else a line per 10%) | always | never
    tensorboard: Optional[bool] = None  # events in tb/: null when tensorboard is installed
    stop_after_epochs: Optional[int] = None  # end this invocation early (resume continues)
    deterministic: bool = False      # torch.use_deterministic_algorithms
    # Which epoch is "best" (best.pt, metrics.json's best): `eval` picks it on the evaluation
    # split, an optimistic choice (the epoch is chosen on the data it is scored on);
    # `train_holdout` holds `select_holdout` of the training images out of training and picks it
    # on their known labels (partial as they are), never looking at the evaluation split.
    select: str = "eval"
    select_holdout: float = 0.1
    early_stop: Optional[int] = None  # stop after this many epochs without a better best epoch


@dataclass
class EvalConfig:
    threshold: float = 0.5


@dataclass
class RunConfig:
    dir: str = "runs/${method.name}_p${data.known_proportion}_s${seed}"
    overwrite: bool = False


@dataclass
class ExperimentConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = field(default_factory=lambda: {"name": "pbce"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Method-agnostic plug-ins, applied in order: [{name: logicmix, prob: 0.5}, {name: ema}, ...]
    # (mlrpl.plugins); each entry's keys are checked against its plug-in's Config.
    plugins: Any = field(default_factory=list)


# The backbone freeze policies (mlrpl.models.backbones.apply_freeze checks its argument here too).

_CHOICES = {
    "data.protocol": ("hcp", "rps", "fpc", "single-positive", "full"),
    "data.on_bad_image": ("error", "skip"),
    "model.freeze": FREEZE_POLICIES,
    "model.prior.name": ("none", "imagenet"),
    "model.prior.trust": ("known_labels", "none"),
    "model.prior.match": ("wordnet", "names"),
    "data.class_names": ("as_read", "opaque"),
    "optim.name": ("adam", "adamw", "sgd"),
    "sched.name": ("none", "step", "cosine", "onecycle"),
    "train.amp": (None, "bf16", "fp16"),
    "train.progress": ("auto", "always", "never"),
    "train.select": ("eval", "train_holdout"),
}


def check_choice(key: str, value) -> None:
    """A ConfigError unless `value` is one of the values ``_CHOICES`` allows for `key`."""
    check_value_in(key, value, _CHOICES[key])


def _all_keys(node, prefix="") -> list[str]:
    out = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, DictConfig):
            out += _all_keys(v, full + ".")
    return out


def _suggest(key: str, schema) -> str:
    keys = _all_keys(schema)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:  # also try the last component alone
        last = {k.rsplit(".", 1)[-1]: k for k in keys}
        hit = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(last), n=1, cutoff=0.6)
        close = [last[hit[0]]] if hit else []
    return f"; did you mean '{close[0]}'?" if close else ""


def _method_schema(name: str):
    from mlrpl.methods import get_method_class
    return OmegaConf.structured(get_method_class(name).Config)


def checked_merge(schema, *parts, origin=""):
    """``OmegaConf.merge(schema, *parts)`` whose errors are one-line ConfigErrors (an unknown key
    with the closest known one, a bad value); `origin` says where the parts came from."""
    try:
        return OmegaConf.merge(schema, *parts)
    except ConfigKeyError as e:
        raise ConfigError(f"unknown config key '{e.full_key}'{origin}{_suggest(e.full_key, schema)}") from None
    except ValidationError as e:
        raise ConfigError(f"bad value for '{e.full_key}'{origin}: {e.msg}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"configuration error{origin}: {e}") from None


def yaml_error(path, e: Exception, expected: str) -> ConfigError:
    """One line for a YAML file that cannot be read: where (line, column) and what."""
    if isinstance(e, UnicodeDecodeError):
        return ConfigError(f"{path}: not UTF-8 text (byte {e.start}); expected {expected}")
    mark = getattr(e, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return ConfigError(f"{path}{where}: not valid YAML ({what}); expected {expected}")


def read_yaml(path, expected: str = "a YAML mapping"):
    """A YAML file's content, or one ConfigError naming the file, line and column."""
    import yaml
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise yaml_error(path, e, expected) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a YAML file; expected {expected}") from None


def load_yaml_chain(p: Path, seen=()) -> list:
    """A YAML config and, first, the files its ``base:`` key names (relative to it)."""
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    if p.resolve() in seen:
        raise ConfigError(f"{p}: 'base' files include each other")
    data = read_yaml(p, "a YAML config (a mapping of config keys)")
    if data is None:
        raise ConfigError(f"{p}: an empty config file; expected a mapping of config keys (e.g. "
                          f"'train: {{epochs: 5}}')")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a YAML {type(data).__name__}, not a config; expected a mapping "
                          f"of config keys (e.g. 'train: {{epochs: 5}}')")
    try:
        node = OmegaConf.create(data)
    except Exception as e:  # keys OmegaConf cannot hold
        raise ConfigError(f"{p}: not a valid config ({str(e).splitlines()[0]})") from None
    bases = node.pop("base", None) if isinstance(node, DictConfig) else None
    chain = []
    for b in ([bases] if isinstance(bases, str) else list(bases or [])):
        chain += load_yaml_chain((p.parent / b), seen + (p.resolve(),))
    return chain + [node]


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                base: dict | None = None) -> DictConfig:
    """Defaults ← `base` (a saved config) ← YAML file ← dotted overrides, all checked.

    A YAML file may start from others: ``base: other.yaml`` (or a list), relative to it."""
    parts = []
    if base is not None:
        parts.append(OmegaConf.create(base))
    if path is not None:
        parts += load_yaml_chain(Path(path))
    try:
        parts.append(OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:
        raise ConfigError(f"bad override in {list(overrides)}: {e}; expected key=value") from None
    schema = OmegaConf.structured(ExperimentConfig)
    # The method's schema depends on the chosen method: find the name first.
    name = "pbce"
    for part in parts:
        n = OmegaConf.select(part, "method.name", default=None)
        if n is not None:
            name = n
    method_schema = _method_schema(name)
    schema.method = method_schema
    methods = [OmegaConf.create({"method": OmegaConf.to_container(p.method)})
               if "method" in p else OmegaConf.create({}) for p in parts]
    rest = [OmegaConf.create({k: v for k, v in OmegaConf.to_container(p).items() if k != "method"})
            for p in parts]
    cfg = checked_merge(schema, *rest)
    try:
        cfg.method = OmegaConf.merge(method_schema, *[m.method for m in methods if "method" in m])
    except ConfigKeyError as e:
        raise ConfigError(f"unknown config key 'method.{e.full_key}' for method {name!r}"
                          f"{_suggest('method.' + e.full_key, OmegaConf.create({'method': method_schema}))}") from None
    except ValidationError as e:
        raise ConfigError(f"bad value for 'method.{e.full_key}': {e.msg}") from None
    for key in _CHOICES:
        check_choice(key, OmegaConf.select(cfg, key))
    _check_ranges(cfg)
    if cfg.model.cache_prefix and cfg.model.freeze != "hcp":
        raise ConfigError(f"model.cache_prefix=true needs model.freeze=hcp (the frozen layers "
                          f"before a last stage that trains), got model.freeze="
                          f"{cfg.model.freeze!r}")
    from mlrpl.plugins import check_plugins
    cfg.plugins = check_plugins(cfg.plugins)
    return cfg


# key -> (test, what was expected). A value outside its range is an error before any work.
_RANGES = {
    "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32) (numpy's seed range)"),
    "data.mask_seed": (lambda v: v is None or 0 <= v < 2**32, "an integer in [0, 2**32) or null"),
    "data.split_seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "data.known_proportion": (lambda v: 0.0 < v <= 1.0, "a proportion in (0, 1]"),
    "data.holdout": (lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)"),
    "data.image_size": (lambda v: v >= 1, "a positive integer"),
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "data.fpc_n": (lambda v: v is None or v >= 1, "an integer >= 1"),
    "method.trunk.graph_k": (lambda v: v is None or v >= 1,
                             "an integer >= 1 (neighbours per class) or null (every class)"),
    "method.trunk.refine_classes": (lambda v: v is None or v >= 1,
                                    "an integer >= 1 (classes per image) or null (every class)"),
    "method.trunk.refine_all_up_to": (lambda v: v is None or v >= 0, "an integer >= 0"),
    "model.prior.top_k": (lambda v: 1 <= v <= 1000, "an integer in [1, 1000]"),
    "model.prior.temperature": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "model.prior.weight": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "model.prior.regions": (lambda v: not isinstance(v, (str, bytes)) and len(v) >= 1
                            and all(0.0 < float(x) <= 1.0 for x in v),
                            "a non-empty list of window sizes, each a fraction of the feature "
                            "map's side in (0, 1] (1 = the whole image), e.g. [1.0, 0.5, 0.25]"),
    "optim.lr": (lambda v: math.isfinite(v) and v > 0, "a positive learning rate"),
    "optim.weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "optim.momentum": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "optim.backbone_lr_mult": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "optim.grad_clip": (lambda v: v is None or (math.isfinite(v) and v > 0),
                        "a positive number or null"),
    "sched.step_size": (lambda v: v >= 1, "an integer >= 1"),
    "sched.gamma": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "sched.pct_start": (lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)"),
    "sched.min_lr": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "train.epochs": (lambda v: v >= 1, "an integer >= 1 (a run that trains for no epoch "
                                       "would write a checkpoint of an untrained model)"),
    "train.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.threads": (lambda v: v is None or v >= 1, "an integer >= 1 or null"),
    "train.stop_after_epochs": (lambda v: v is None or v >= 1, "an integer >= 1 or null"),
    "train.select_holdout": (lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)"),
    "train.early_stop": (lambda v: v is None or v >= 1, "an integer >= 1 (epochs) or null"),
    "eval.threshold": (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
}


def _check_ranges(cfg) -> None:
    for key, (ok, expected) in _RANGES.items():
        v = OmegaConf.select(cfg, key, default=None)
        try:
            good = bool(ok(v))
        except (TypeError, ValueError):  # None or text where a number is needed
            good = False
        if not good:
            raise ConfigError(f"bad value for '{key}': {v!r}; expected {expected}")


# Paths kept as the user gave them in config.yaml and checkpoints when they depend on the
# environment (``${oc.env:MLRPL_DATA,data}/coco128``): a run or checkpoint moved to another machine
# finds its data and cache there. Relative paths are never made absolute.
PATH_KEYS = ("data.root", "data.val_root", "data.embeddings", "data.mask_file",
             "model.cache_dir", "model.pretrained")


def resolved(cfg: DictConfig) -> dict:
    """Plain dict (what goes into config.yaml and checkpoints): every value resolved but the
    environment-dependent paths of ``PATH_KEYS``, which are kept as given."""
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve the configuration: {e}") from None
    given = OmegaConf.to_container(cfg, resolve=False)
    for key in PATH_KEYS:
        section, name = key.split(".")
        raw = (given.get(section) or {}).get(name)
        if isinstance(raw, str) and "${oc.env:" in raw:
            out[section][name] = raw
    # the reader options that decide what the labels mean (VOC's difficult rule), recorded
    from mlrpl.data.readers import with_recorded_defaults
    return with_recorded_defaults(out)


# Keys added after runs were recorded whose default computes something else than those runs did:
# a record (config.yaml, a checkpoint's config) without them gets the value that reproduces it.
# Today: the SARL trunk's top-k label graph and refined classes, dense in earlier records; the
# prior's WordNet matching, name neighbours alone in earlier records.
EARLIER_VALUES = {("method", "trunk"): {"graph_k": None, "refine_classes": None,
                                        "refine_all_up_to": 128},
                  ("model", "prior"): {"match": "names"}}


def with_earlier_values(config: dict) -> dict:
    """A plain config dict with the keys of :data:`EARLIER_VALUES` it lacks filled in with the
    behaviour it was recorded with. Returns a new dict; ``config`` is not changed.

    >>> with_earlier_values({"method": {"name": "ssgrl", "trunk": {"dim": 8}}})["method"]["trunk"]
    {'graph_k': None, 'refine_classes': None, 'refine_all_up_to': 128, 'dim': 8}
    """
    if not isinstance(config, dict):
        return config
    out = dict(config)
    for path, values in EARLIER_VALUES.items():
        parents, node = [out], out
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
            parents.append(node)
        else:
            filled = {**values, **node}
            for key, parent in zip(reversed(path), reversed(parents[:-1])):
                filled = {**parent, key: filled}
            out = filled
    return out


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(resolved(cfg) if isinstance(cfg, DictConfig) else cfg))

"""What every backbone is: preprocessing, the :class:`Backbone` base class, freeze policies, the
frozen-prefix wrapper, weight files and the registry the families register in."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlrpl.data.transforms import build_transform
from mlrpl.errors import ConfigError, check_value_in
from mlrpl.utils.registry import Registry

# none: every layer trains; hcp: all but the last stage frozen (their BatchNorm in eval mode);
# all: the whole backbone frozen (its feature maps can be cached)
FREEZE_POLICIES = ("none", "hcp", "all")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 448


# ---- preprocessing ----------------------------------------------------------------------------
@dataclass
class Preprocess:
    """How images must be prepared for a backbone. ``to_dict()`` gives plain types only."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = DEFAULT_INPUT_SIZE
    interpolation: str = "bicubic"
    weights: str | None = None       # where the weights came from; None: random initialisation

    def __post_init__(self):
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.input_size = int(self.input_size)
        self.interpolation = str(self.interpolation)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "input_size": self.input_size,
                "interpolation": self.interpolation, "weights": self.weights}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        known = {"mean", "std", "input_size", "interpolation", "weights"}
        extra = sorted(set(d) - known)
        if extra:
            raise ConfigError(f"unknown preprocessing field(s) {extra}; expected {sorted(known)}")
        return cls(**d)

    def transform(self, train: bool, size: int | None = None):
        return build_transform(train, self.input_size if size is None else size, self.mean,
                               self.std, self.interpolation)


# ---- base class -------------------------------------------------------------------------------
class Backbone(nn.Module):
    """Base class. Subclasses set the modules, ``out_channels``, ``stride``, ``preprocess`` and
    implement ``forward`` and ``stages``."""

    def __init__(self, name: str, out_channels: int, stride: int, preprocess: Preprocess):
        super().__init__()
        self.name = name
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.preprocess = preprocess
        self.freeze_policy = "none"
        # The pretrained ImageNet-1k classifier (weight (1000, out_channels), bias (1000,)) when
        # the loaded weights held one: neither a parameter nor a buffer (the backbone's state and
        # digest stay the same); ``model.prior: imagenet`` copies it into the model.
        self.imagenet_head: tuple[torch.Tensor, torch.Tensor] | None = None
        # Top-most modules kept in eval mode whatever train() is asked (frozen BatchNorm etc.).
        self._eval_modules: tuple[str, ...] = ()

    # -- stages ---------------------------------------------------------------------------------
    def stages(self) -> dict[str, list[str]]:
        """Ordered mapping: stage name -> paths of its modules (relative to this module). The
        last entry is the stage that ``hcp`` leaves trainable."""
        raise NotImplementedError

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages())

    def last_stage(self) -> list[str]:
        st = self.stages()
        if not st:
            raise ConfigError(f"backbone {self.name!r} has no identifiable stages; freeze policy "
                              f"'hcp' cannot be applied (use 'none' or 'all')")
        return list(st.values())[-1]

    # -- the frozen part and the last stage (freeze: hcp) --------------------------------------
    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the input of the last stage (what ``hcp`` leaves frozen). With
        ``forward_last_stage``, ``forward(x) == forward_last_stage(forward_frozen(x))``."""
        raise self._cannot_split()

    def forward_last_stage(self, h: torch.Tensor) -> torch.Tensor:
        """The output of ``forward_frozen`` -> the backbone's maps (the stage ``hcp`` trains)."""
        raise self._cannot_split()

    def _cannot_split(self) -> ConfigError:
        return ConfigError(f"backbone {self.name!r} cannot be split before its last stage; "
                           f"model.cache_prefix needs efficientnet_lite0 or a torchvision ResNet")

    # -- freezing -------------------------------------------------------------------------------
    @property
    def is_frozen(self) -> bool:
        """True when nothing in the backbone trains (policy ``all``)."""
        return self.freeze_policy == "all"

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            if self.freeze_policy == "all":
                super().train(False)
            else:
                for path in self._eval_modules:
                    self.get_submodule(path).eval()
        return self

    # -- preprocessing --------------------------------------------------------------------------
    def transform(self, train: bool, size: int | None = None):
        """The torchvision transform for this backbone (PIL image -> normalised tensor)."""
        return self.preprocess.transform(train, size)

    # -- weights --------------------------------------------------------------------------------
    def load_weights(self, state: dict, source: str, head_prefix: str | None = None):
        """Load `state` strictly, without the classifier under `head_prefix` (kept aside as
        ``imagenet_head`` when it is the ImageNet-1k one); a mismatch raises a ConfigError naming
        a few of the offending keys."""
        state = _unwrap_prefix(state, set(self.state_dict()))
        if head_prefix:
            self.keep_imagenet_head(state, head_prefix)
            state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
        own = self.state_dict()
        # Old checkpoints have no BatchNorm `num_batches_tracked`; load_state_dict fills it in.
        missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
        unexpected = sorted(set(state) - set(own))
        shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
            if shapes:
                parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
            raise ConfigError(f"{source}: the weights do not fit backbone {self.name!r}: "
                              + "; ".join(parts))
        self.load_state_dict(state, strict=True)

    def load_weight_path(self, path, head_prefix: str, weights: str | None = None) -> None:
        """:meth:`load_weights` from a weight file, recorded in ``preprocess.weights`` as
        `weights` (default ``file:<path>``)."""
        self.load_weights(load_weight_file(path), f"weight file {path}", head_prefix)
        self.preprocess.weights = weights or f"file:{path}"

    def keep_imagenet_head(self, state: dict, prefix: str) -> None:
        """Keep the ImageNet-1k classifier ``<prefix>weight`` / ``<prefix>bias`` of a state dict
        (its wrapper prefix already stripped) when it fits this backbone."""
        w, b = state.get(prefix + "weight"), state.get(prefix + "bias")
        if (w is not None and b is not None and tuple(w.shape) == (1000, self.out_channels)
                and tuple(b.shape) == (1000,)):
            self.imagenet_head = (w.detach().float().clone(), b.detach().float().clone())

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}, "
                f"freeze={self.freeze_policy!r}")


def _unwrap_prefix(state: dict, expected: set[str]) -> dict:
    """Strip a common wrapper prefix (``module.`` from DDP, ``backbone.`` from an mlrpl model)."""
    if set(state) & expected:
        return state
    for prefix in ("module.", "backbone.", "model.", "module.backbone."):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(sub) & expected:
            return sub
    return state


def apply_freeze(backbone: Backbone, policy: str) -> Backbone:
    """Apply a freeze policy in place (and return the backbone).

    ``none``: every parameter trains. ``hcp``: only the last stage (``backbone.last_stage()``)
    trains; all other modules have ``requires_grad=False`` and stay in eval mode (BatchNorm
    statistics frozen) even after ``.train()``. ``all``: nothing trains and the whole backbone
    stays in eval mode.
    """
    if not isinstance(backbone, Backbone):
        raise ConfigError(f"apply_freeze needs a Backbone, got {type(backbone).__name__}")
    policy = str(policy).lower() if policy is not None else "none"
    check_value_in("model.freeze", policy, FREEZE_POLICIES)
    if policy == "none":
        for p in backbone.parameters():
            p.requires_grad_(True)
        eval_modules: tuple[str, ...] = ()
    elif policy == "all":
        for p in backbone.parameters():
            p.requires_grad_(False)
        eval_modules = ()
    else:
        keep = backbone.last_stage()
        modules = dict(backbone.named_modules())
        bad = [k for k in keep if k not in modules]
        if bad:
            raise ConfigError(f"backbone {backbone.name!r}: last-stage module(s) {bad} not found")

        def inside(name: str) -> bool:
            return any(name == k or name.startswith(k + ".") for k in keep)

        for n, p in backbone.named_parameters():
            p.requires_grad_(inside(n))
        frozen = {n for n in modules if n and not inside(n)
                  and not any(k.startswith(n + ".") for k in keep)}   # ancestors stay in train
        eval_modules = tuple(n for n in modules if n in frozen
                             and (n.rpartition(".")[0] not in frozen))
    backbone.freeze_policy = policy
    backbone._eval_modules = eval_modules
    backbone.train(backbone.training)
    return backbone


# ---- registry ---------------------------------------------------------------------------------
# name -> builder ``fn(pretrained, **kw) -> Backbone``; the built-ins register below, other
# packages through the entry-point group ``mlrpl.backbones`` (loaded on the first lookup).
_BACKBONES = Registry("backbone", None, None, "mlrpl.backbones", ConfigError)


def register_backbone(name: str):
    """Decorator: register ``fn(pretrained, **kw) -> Backbone`` under `name` (a name already
    taken is an error, even by the same function)."""
    def deco(fn):
        if _BACKBONES.taken(name):
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES.add(name, fn)
        return fn
    return deco


def list_backbones() -> list[str]:
    """Registered backbone names (any timm model is also available as ``timm:<model_name>``)."""
    return _BACKBONES.names()


def _normalize_pretrained(pretrained: Any) -> bool | str:
    """True / False / the path of an existing weight file."""
    if pretrained is None:
        return False
    if isinstance(pretrained, bool):
        return pretrained
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if isinstance(pretrained, str):
        s = pretrained.strip()
        low = s.lower()
        if low in ("true", "yes", "on"):
            return True
        if low in ("false", "no", "off", "none", "null", ""):
            return False
        path = Path(s).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.pretrained: weight file not found: {path} (expected true, "
                              f"false or the path of a weight file)")
        return str(path)
    raise ConfigError(f"model.pretrained: bad value {pretrained!r}; expected true, false or the "
                      f"path of a weight file")


def load_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (``torch.load(weights_only=True)``); a ``state_dict`` /
    ``model`` wrapper is unwrapped. Raises ConfigError when unreadable."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"weight file not found: {p}")
    from mlrpl.utils.torchio import unreadable_reason
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - never retried with weights_only=False
        raise ConfigError(f"cannot read weight file {p}: {unreadable_reason(e)}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ConfigError(f"weight file {p} does not hold a state dict (a mapping of names to "
                          f"tensors)")
    return obj


class FrozenPart(nn.Module):
    """A backbone's layers before its last stage, as a module: what ``model.cache_prefix``
    computes once (with ``freeze: hcp`` they neither train nor change their BatchNorm
    statistics, so their output on an un-augmented image never changes)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_frozen(x)

    def cache_state(self) -> dict:
        """The tensors the output depends on (the cache key's digest): the last stage's
        weights, which train, are left out, so a resumed run finds its cache."""
        keep = self.backbone.last_stage()
        return {k: v for k, v in self.backbone.state_dict().items()
                if not any(k.startswith(p + ".") for p in keep)}



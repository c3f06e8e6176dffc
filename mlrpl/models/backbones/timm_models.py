"""Any timm model that supports ``features_only``, as ``timm:<model_name>``."""
from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from mlrpl.errors import ConfigError
from mlrpl.models.backbones.base import (DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, Backbone,
                                         Preprocess)


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

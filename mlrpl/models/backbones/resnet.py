"""torchvision ResNets (18 to 152) up to ``layer4``."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mlrpl.errors import ConfigError
from mlrpl.models.backbones.base import (DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, Backbone,
                                         Preprocess, register_backbone)


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



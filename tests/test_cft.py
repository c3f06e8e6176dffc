"""CFT's selection set and the class prior (docs/methods/baselines.md#cft): the re-fit is kept
per class on training images held out of training before the run, never on images the model
trained on; with ``model.prior`` the re-fit and the selection score the model's own logits
(the layer's output plus the prior)."""
import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mlrpl.cli import main
from mlrpl.config import load_config
from mlrpl.engine.experiment import MLRModel
from mlrpl.engine.trainer import Trainer
from mlrpl.errors import ConfigError
from mlrpl.metrics import per_class_ap
from mlrpl.plugins.base import PluginContext
from mlrpl.plugins.cft import CFT, CFTConfig

from tests.test_engine import rows, tiny


# ---- in the training run -------------------------------------------------------------------------
def test_cft_keeps_a_class_selected_on_images_never_trained_on(shapes, cache_dir, tmp_path):
    """An all but untrained head (lr 1e-6, one epoch): the re-fit must help, and it is kept for
    some class on the held-out images' known labels; those images never reach a training batch,
    and the re-fit saw exactly the images the run trained on."""
    run = tmp_path / "r"
    t = Trainer(load_config(None, tiny(shapes, cache_dir, run, "optim.lr=1e-6", "train.epochs=1",
                                       "train.select=train_holdout", "train.select_holdout=0.25",
                                       "plugins=[{name: cft, lr: 0.05}]")))
    seen = []
    step = t.plugins.transform_batch

    def spy(batch, epoch):
        seen.append(batch["index"].cpu())
        return step(batch, epoch)
    t.plugins.transform_batch = spy
    t.fit()
    held = {str(p) for p in t.selection.paths()}
    trained = [str(p) for p in t.exp.train.paths()]
    seen = torch.cat(seen).tolist()
    assert len(held) == 12 and len(trained) == 36
    assert len(set(seen)) == 32 and set(seen) <= set(range(36))   # 4 batches of 8, the last dropped
    assert not held & {trained[i] for i in seen}          # no held-out image in a batch
    last = rows(run)[-1]
    assert int(last["cft_classes_kept"]) >= 1
    assert int(last["cft_select_images"]) == 12 and int(last["cft_fit_images"]) == 36
    assert int(last["cft_select_on_eval_split"]) == 0
    assert "12 training images held out" in json.loads((run / "metrics.json").read_text())[
        "best_chosen_on"]
    assert bool(t.plugins.items[0].kept.any())


def test_cft_without_held_out_images_is_refused_before_training(shapes, cache_dir, tmp_path):
    run = tmp_path / "r"
    with pytest.raises(ConfigError) as e:
        Trainer(load_config(None, tiny(shapes, cache_dir, run, "plugins=[{name: cft}]")))
    msg = str(e.value)
    assert "\n" not in msg and "train.select=train_holdout" in msg
    assert "plugins.cft.select=eval_split" in msg
    assert not run.exists()                               # nothing trained, nothing left
    with pytest.raises(ConfigError, match="plugins.cft.holdout.*train.select_holdout"):
        load_config(None, ["plugins=[{name: cft, holdout: 0.3}]"])
    load_config(None, ["plugins=[{name: cft, holdout: 0.2}]"])   # what recorded configs hold


def test_cft_verb_selects_on_the_runs_held_out_images(shapes, cache_dir, tmp_path, capsys):
    held, plain = tmp_path / "held", tmp_path / "plain"
    Trainer(load_config(None, tiny(shapes, cache_dir, held, "train.epochs=1",
                                   "train.select=train_holdout",
                                   "train.select_holdout=0.25"))).fit()
    assert main(["cft", "--checkpoint", str(held / "last.pt"), "steps=20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["stats"]["cft_select_images"] == 12 and r["stats"]["cft_fit_images"] == 36
    rec = torch.load(held / "cft.pt", weights_only=False)["cft"]
    assert rec["select_from"].startswith("training images held out of training before the run")
    # a run that held nothing out: one line saying so and what to do, nothing written
    Trainer(load_config(None, tiny(shapes, cache_dir, plain, "train.epochs=1"))).fit()
    capsys.readouterr()
    assert main(["cft", "--checkpoint", str(plain / "last.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.select=train_holdout" in err[0]
    assert "select=eval_split" in err[0] and "upper bound" in err[0]
    assert not (plain / "cft.pt").exists()
    assert main(["cft", "--checkpoint", str(plain / "last.pt"), "select=eval_split", "steps=20",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["stats"]["cft_select_on_eval_split"] == 1 and r["stats"]["cft_select_images"] == 24


# ---- with the class prior ------------------------------------------------------------------------
class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, batch=None):
        return {"logits": self.fc(x)}


class Prior(nn.Module):
    """Class 0's prior separates its positives (x_2 > 0) by a margin of 40; class 1 has none."""

    def forward(self, x):
        return torch.stack([20.0 * torch.sign(x[:, 2]), torch.zeros(len(x))], 1)


def _data(n, seed):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    y = torch.stack([torch.where(x[:, 2] > 0, 1, -1), torch.where(x[:, 0] > 0, 1, -1)], 1)
    return x, y.to(torch.int8)


def _batches(model, x):
    for i in range(0, len(x), 50):
        xb = x[i:i + 50]
        yield {"index": torch.arange(i, i + len(xb)), "features": xb}, model({"features": xb})


def test_cft_refits_through_the_prior_and_never_worsens_what_it_separates():
    """Class 0's head is noise but the prior already ranks every held-out positive first: its AP
    with the prior is 1 before the re-fit, so it keeps its weights bit for bit (on the head's
    scores alone it would "improve" and be replaced). Class 1's head is inverted: kept."""
    model = MLRModel(nn.Identity(), Head(), Prior())
    with torch.no_grad():
        model.method.fc.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]))
        model.method.fc.bias.zero_()
    w0 = model.method.fc.weight.detach().clone()
    (x, y), (xs, ys) = _data(200, 0), _data(100, 1)
    cft = CFT(OmegaConf.structured(CFTConfig(steps=200, lr=0.05)),
              PluginContext(2, ["a", "b"], y.numpy(), 0, select_images=len(xs)), model)
    stats = cft.run(_batches(model, x), model, y.numpy(), _batches(model, xs), ys.numpy())
    assert cft.kept.tolist() == [False, True] and stats["cft_classes_kept"] == 1
    assert torch.equal(model.method.fc.weight[0], w0[0])         # class 0 untouched
    assert model.method.fc.weight[1, 0] > 0                       # class 1 points the right way
    with torch.no_grad():
        ap = per_class_ap(model({"features": xs})["logits"].numpy(), ys.numpy())
    assert ap[0] == 1.0 and ap[1] > 0.9
    # the fit sees the prior as a fixed offset: where it separates with a wide margin, the loss
    # is flat and the weights hardly move; without the offset they would move far
    w, _ = cft.fit(x[:, None, :], y, w0, torch.zeros(2), Prior()(x))
    w_plain, _ = cft.fit(x[:, None, :], y, w0, torch.zeros(2))
    assert (w[0] - w0[0]).abs().max() < 0.05 < (w_plain[0] - w0[0]).abs().max()

"""Representation blending: sarb, dsrb and their components (docs/methods/sarb.md,
docs/methods/dsrb.md)."""
import math

import pytest
import torch

from mlrpl.losses import soft_partial_bce
from mlrpl.methods.components.blending import (BlendStats, draw_classes, instance_blend,
                                                instance_selection, prototype_blend,
                                                unit_interval)
from mlrpl.methods.components.quadrant_prototypes import (peak_quadrant, pprb_map_form,
                                                          quadrant_means)
from tests.test_anatomy import context
from tests.test_transfer import batch_of, train_twice_with_resume

SMALL = {"trunk": {"dim": 8, "attention_dim": 4}}


def method(name, **cfg):
    from mlrpl.methods import create_method
    torch.manual_seed(0)
    m = create_method(name, context(), **{**SMALL, "start_epoch": 0, **cfg}).train()
    m.prototypes.centres.normal_()
    m.prototypes.valid.fill_(True)
    return m


# ---- selection ----------------------------------------------------------------------------------
def test_instance_selection_and_blend_hand_case():
    # partner of image 0 is image 2, of image 1 itself (odd batch), of image 2 image 0
    target = torch.tensor([[0, 0, 1, -1], [0, 1, 0, 0], [1, -1, 0, 0]])
    sel = instance_selection(target)
    assert sel.tolist() == [[True, False, False, False], [False] * 4,
                            [False, False, True, False]]
    sem = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    alpha = torch.tensor(0.25, requires_grad=True)
    blended, sel2, soft = instance_blend(sem, target, alpha)
    assert torch.equal(sel, sel2)
    assert torch.allclose(blended[0, 0], 0.25 * sem[0, 0] + 0.75 * sem[2, 0])
    assert torch.allclose(blended[2, 2], 0.25 * sem[2, 2] + 0.75 * sem[0, 2])
    keep = ~sel
    assert torch.equal(blended[keep], sem[keep])
    # soft target 1 - α on blended entries, 1/0 on known ones (unknown ones are not counted)
    assert soft[0].tolist() == [0.75, 0.0, 1.0, 0.0] and soft[2, 2].item() == 0.75
    soft.sum().backward()
    assert alpha.grad.item() == -2.0                    # through the targets


def test_draw_classes_only_eligible_entries():
    eligible = torch.tensor([[False, True, False, True], [False] * 4, [True, False, False, False]])
    seen = set()
    for _ in range(50):
        chosen, rows = draw_classes(eligible)
        assert rows.tolist() == [True, False, True]
        assert eligible[0, chosen[0]] and chosen[2] == 0
        seen.add(int(chosen[0]))
    assert seen == {1, 3}                               # uniform among the eligible


@pytest.mark.parametrize("name", ["sarb", "dsrb"])
def test_prototype_blending_only_touches_unknown_entries(name):
    m = method(name)
    # image 1 has no unknown label: it takes no part (never class 0)
    target = [[1, 0, -1, 0], [1, -1, 1, -1], [0, 1, -1, 1]]
    for seed in range(20):
        torch.manual_seed(seed)
        b = batch_of(target, epoch=1)
        out = m(b["features"], b)
        sel = out["blend_prototype"]
        assert not (sel & (b["target"] != 0)).any()
        assert sel.sum(1).tolist() == [1, 0, 1]
        assert not (out["blend_instance"] & (b["target"] != 0)).any()
    # the released behaviour: class 0 of the image without an unknown label
    if name == "sarb":
        q = method(name, reference_quirks=True)
        b = batch_of(target, epoch=1)
        out = q(b["features"], b)
        assert out["blend_prototype"][1].tolist() == [True, False, False, False]


@pytest.mark.parametrize("name", ["sarb", "dsrb"])
def test_all_known_batch_blends_nothing(name):
    """docs/methods/sarb.md D1: with every entry known, blended logits and targets are the plain
    ones."""
    m = method(name)
    target = [[1, -1, -1, 1], [1, 1, -1, -1], [-1, 1, -1, 1]]
    b = batch_of(target, epoch=1)
    out = m(b["features"], b)
    plain = (b["target"] > 0).float()
    for module in ("instance", "prototype"):
        assert not out[f"blend_{module}"].any()
        assert torch.equal(out[f"logits_{module}"], out["logits"])
        assert torch.equal(out[f"soft_{module}"], plain)
        assert torch.equal(out[f"weight_{module}"], b["target"] != 0)
    # and the classifier on unchanged features gives the plain logits bit for bit
    assert torch.equal(m.trunk.classify(out["semantic"])[0], out["logits"])
    terms = m.loss(out, b, 1)
    assert terms["blend_instance"].item() == pytest.approx(terms["bce"].item(), abs=1e-6)


@pytest.mark.parametrize("name", ["sarb", "dsrb"])
def test_one_pass_over_changed_images_equals_full_batch_passes(name):
    """The blended forwards run the graph network once, on only the images a blend changed; the
    logits, losses and gradients equal one full-batch pass per module."""
    m = method(name)
    # image 1: no instance blend (its partner is itself), no unknown entry for the prototypes
    target = [[0, 1, -1, 0], [1, -1, 1, -1], [1, 0, 0, 1]]
    torch.manual_seed(3)
    b = batch_of(target, epoch=1)
    drawn = []
    choice = m.prototype_choice
    m.prototype_choice = lambda *a: drawn.append(choice(*a)) or drawn[-1]
    out = m(b["features"], b)
    assert out["blend_instance"].any(1).tolist() == [True, False, True]
    assert out["blend_prototype"].any(1).tolist() == [True, False, True]
    alpha, beta = m.coefficients()
    blended, _, _ = instance_blend(out["semantic"], b["target"], alpha)
    full = {"instance": m.trunk.classify(blended)[0]}
    chosen, rows, protos = drawn[0]
    blended, _, _ = prototype_blend(out["semantic"], b["target"], chosen, rows, protos, beta)
    full["prototype"] = m.trunk.classify(blended)[0]
    for module in full:
        torch.testing.assert_close(out[f"logits_{module}"], full[module], rtol=0, atol=1e-6)
    params = [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(out[f"logits_{k}"].sum() for k in full), params,
                                allow_unused=True, retain_graph=True)
    ref = torch.autograd.grad(sum(v.sum() for v in full.values()), params, allow_unused=True)
    for g, r in zip(grads, ref):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sarb", "dsrb"])
def test_terms_schedule_and_coefficients(name):
    m = method(name, start_epoch=1)
    b0 = batch_of([[1, 0, -1, 0], [1, 1, 0, -1], [0, 1, -1, 1]], epoch=0)
    out = m(b0["features"], b0)
    terms = m.loss(out, b0, 0)
    assert set(terms) == {"bce", "contrast", "blend_instance", "blend_prototype"}
    assert terms["blend_instance"].item() == 0 and "logits_instance" not in out
    assert terms["contrast"].item() == pytest.approx(0.05 * 0.75 * out["contrast"].item())
    b1 = dict(b0, epoch=1)
    out = m(b1["features"], b1)
    sum(m.loss(out, b1, 1).values()).backward()
    assert m.alpha.grad.abs() > 0 and m.beta.grad.abs() > 0
    # α, β clamped into [0, 1]: functionally in forward, in place after the step
    with torch.no_grad():
        m.alpha.fill_(1.7)
        m.beta.fill_(-0.2)
    a, bt = m.coefficients()
    assert a.item() == 1.0 and bt.item() == 0.0
    m.update_state(out, b1)
    assert m.alpha.item() == 1.0 and m.beta.item() == 0.0
    assert {"alpha", "beta"} <= {k.split(".")[-1] for k in m.state_dict()}


# ---- α, β on the bounds of [0, 1] (as released) ---------------------------------------------
def test_unit_interval_value_and_gradient():
    for v in (0.0, 1.0, 1.3, -0.2, 0.5, 0.123456789, 1 - 2 ** -24):
        p = torch.tensor(v, requires_grad=True)
        got = unit_interval(p)
        assert torch.equal(got.detach(), p.detach().clamp(0, 1))
        (3 * got).backward()
        assert p.grad.item() == 3.0                     # straight through, on the bounds too
        if 0 <= v <= 1:                                 # inside: the parameter bit for bit
            assert torch.equal(got.detach(), p.detach())
    # what a plain torch.clamp would do on the bound: no gradient at all
    p = torch.tensor(1.0, requires_grad=True)
    (3 * p.clamp(0, 1)).backward()
    assert p.grad.item() == 0.0


@pytest.mark.parametrize("name", ["sarb", "dsrb"])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (0.0, 1.0)])
def test_coefficients_on_the_bound_keep_gradient_and_drop_zero_targets(name, alpha, beta):
    """With α (β) exactly on 0 or 1, as the in-place clamp leaves it: (a) the gradient reaches it
    (the release clamped ``.data``, so its coefficient kept its gradient; torch.clamp passes
    none), (b) a blended entry whose soft target is exactly 0 is left out of the loss (the
    released loss drops a 0 target) and one whose soft target is 1 is counted."""
    m = method(name)
    with torch.no_grad():
        m.alpha.fill_(alpha)
        m.beta.fill_(beta)
    target = [[0, 1, -1, 0], [1, 0, 1, -1], [1, -1, 0, 1]]
    torch.manual_seed(0)
    b = batch_of(target, epoch=1)
    out = m(b["features"], b)
    known = b["target"] != 0
    for module, coef in (("instance", alpha), ("prototype", beta)):
        sel, soft, weight = out[f"blend_{module}"], out[f"soft_{module}"], out[f"weight_{module}"]
        assert sel.any()
        assert torch.equal(soft[sel], torch.full_like(soft[sel], 1 - coef))
        if coef == 1.0:     # (b) target 0: dropped, only the known entries count
            assert torch.equal(weight, known)
        else:               # target 1: counted as a positive
            assert torch.equal(weight, known | sel)
    terms = m.loss(out, b, 1)
    # the loss is the soft BCE over exactly those entries (the dropped ones change nothing)
    for module, coef in (("instance", alpha), ("prototype", beta)):
        sel = out[f"blend_{module}"]
        counted = known | (sel if coef == 0.0 else torch.zeros_like(sel))
        want = soft_partial_bce(out[f"logits_{module}"], out[f"soft_{module}"], counted)
        assert terms[f"blend_{module}"].item() == pytest.approx(want.item(), abs=1e-7)
        if coef == 1.0:     # counting the 0 targets as negatives would give another number
            as_negative = soft_partial_bce(out[f"logits_{module}"], out[f"soft_{module}"],
                                           known | sel)
            assert as_negative.item() != pytest.approx(want.item(), abs=1e-6)
    # (a) the gradient reaches both coefficients on their bounds
    sum(terms.values()).backward()
    assert m.alpha.grad is not None and m.alpha.grad.abs().item() > 0
    assert m.beta.grad is not None and m.beta.grad.abs().item() > 0
    # ... where a plain torch.clamp in the forward would have passed none
    m.zero_grad(set_to_none=True)
    m.coefficients = lambda: (m.alpha.clamp(0, 1), m.beta.clamp(0, 1))
    torch.manual_seed(0)
    out = m(b["features"], b)
    sum(m.loss(out, b, 1).values()).backward()
    assert m.alpha.grad.item() == 0.0 and m.beta.grad.item() == 0.0


def test_coefficients_inside_the_unit_interval_are_the_parameters():
    m = method("sarb")
    with torch.no_grad():
        m.alpha.fill_(0.3)
        m.beta.fill_(0.8)
    a, bt = m.coefficients()
    assert torch.equal(a.detach(), m.alpha.detach()) and torch.equal(bt.detach(), m.beta.detach())
    (2 * a + 5 * bt).backward()
    assert m.alpha.grad.item() == 2.0 and m.beta.grad.item() == 5.0


def test_sarb_draws_one_k_per_step_and_respects_fewer_prototypes():
    m = method("sarb", num_prototypes=3)
    with torch.no_grad():
        m.prototypes.centres.copy_(torch.arange(3.0)[None, :, None].expand(4, 3, 8))
        m.prototypes.valid[1, 1:] = False               # class 1 has one prototype
        m.prototypes.valid[2] = False                   # class 2 none: never drawn
    target = torch.tensor([[0, 0, 0, 1]] * 4)
    ks = set()
    for seed in range(30):
        torch.manual_seed(seed)
        b = batch_of(target.tolist(), epoch=1)
        out = m.trunk(b["features"])
        chosen, rows, protos = m.prototype_choice(out, b["target"])
        assert rows.all() and not (chosen == 2).any() and not (chosen == 3).any()
        for c, p in zip(chosen.tolist(), protos[:, 0].tolist()):
            if c == 1:
                assert p == 0.0                          # k mod 1
        k0 = {p for c, p in zip(chosen.tolist(), protos[:, 0].tolist()) if c == 0}
        assert len(k0) <= 1                              # one k for the whole batch
        ks |= k0
    assert ks == {0.0, 1.0, 2.0}


# ---- DSRB: quadrants, pooled form == map form ------------------------------------------------------
def test_peak_quadrant_split():
    # 7 x 7: rows 0-2 top, 3-6 bottom; columns 0-2 left, 3-6 right
    def at(r, c):
        att = torch.full((1, 1, 49), 0.01)
        att[0, 0, r * 7 + c] = 1.0
        return peak_quadrant(att, torch.ones(1, 49, 2), (7, 7)).item()
    assert [at(0, 0), at(2, 2), at(0, 3), at(3, 0), at(3, 3), at(6, 6), at(2, 6)] == \
        [0, 0, 1, 2, 3, 3, 1]
    # the peak of Σ_d a f (the attention-weighted map), not of the attention alone
    att = torch.tensor([[[0.6] + [0.0] * 47 + [0.4]]])
    f = torch.ones(1, 49, 2)
    f[0, 0] = 0.1
    assert peak_quadrant(att, f, (7, 7)).item() == 3


def test_quadrant_means_cap_fallback_occupancy_shrink():
    feats = torch.tensor([[1.0], [3.0], [5.0], [7.0], [100.0], [2.0]])
    classes = torch.tensor([0, 0, 0, 0, 0, 2])
    quads = torch.tensor([0, 0, 0, 1, 0, 3])
    centres, valid, occ = quadrant_means(feats, classes, quads, num_classes=3, cap=3)
    assert occ.tolist() == [[4, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    # the first 3 of quadrant 0 (100 is beyond the cap); empty quadrants: mean of the kept maps
    assert centres[0, :, 0].tolist() == pytest.approx([3.0, 7.0, 4.0, 4.0])
    assert valid.tolist() == [[True] * 4, [False] * 4, [True] * 4]
    assert centres[2, :, 0].tolist() == [2.0] * 4 and (centres[1] == 0).all()
    shrunk = quadrant_means(feats, classes, quads, num_classes=3, cap=3, shrink=True)[0]
    assert shrunk[0, 0, 0].item() == pytest.approx(9 / 4) and shrunk[0, 1, 0].item() == 3.5
    assert shrunk[0, 2, 0].item() == pytest.approx(4.0)  # the fallback counts no zero row


def test_pprb_pooled_form_equals_map_form():
    """docs/methods/dsrb.md D1: prototypes stored pooled and blended on F equal the released map
    form."""
    g = torch.Generator().manual_seed(0)
    n_img, C, H, W, D = 6, 3, 7, 7, 5
    att = torch.softmax(3 * torch.randn(n_img, C, H * W, generator=g), -1)
    f = torch.randn(n_img, H * W, D, generator=g) + 0.5
    maps = att[..., None] * f[:, None]                          # (N, C, HW, D)
    semantic = maps.sum(2)                                      # F = Σ_h a f
    assert torch.allclose(semantic, att @ f, atol=1e-6)
    target = torch.tensor([[1, 0, -1], [1, 1, 0], [0, 1, 1], [1, -1, 1], [1, 0, 0], [-1, 1, 0]])
    b, c = (target > 0).nonzero(as_tuple=True)                  # dataset order
    quads = peak_quadrant(att, f, (H, W))
    centres, _, occ = quadrant_means(semantic[b, c], c, quads[b, c], C, cap=1)
    assert (occ == 0).any() and (occ > 1).any()                 # fallback and cap both exercised
    chosen = torch.tensor([1, 2, 0, 1, 2, 0])
    other = torch.tensor([0, 3, 1, 2, 2, 3])
    beta = torch.tensor(0.3)
    rows = torch.ones(n_img, dtype=torch.bool)
    pooled, sel, _ = prototype_blend(semantic, target, chosen, rows, centres[chosen, other], beta)
    idx = torch.arange(n_img)
    want = pprb_map_form(maps[b, c].view(-1, H, W, D), c, C, maps[idx, chosen].view(-1, H, W, D),
                         chosen, other, 0.3, cap=1)
    assert torch.allclose(pooled[idx, chosen], want, atol=1e-5)
    # IPRB: blending the maps then summing equals blending F
    alpha = torch.tensor(0.6)
    blended, sel, _ = instance_blend(semantic, target, alpha)
    map_blend = torch.where(sel[..., None, None], alpha * maps + (1 - alpha) * maps.flip(0), maps)
    assert torch.allclose(blended, map_blend.sum(2), atol=1e-5)


def test_dsrb_blends_with_another_quadrant():
    m = method("dsrb")
    with torch.no_grad():     # prototype of quadrant q = q in every dimension
        m.prototypes.centres.copy_(torch.arange(4.0)[None, :, None].expand(4, 4, 8))
    target = torch.tensor([[0, 0, 0, 0]] * 3)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        b = batch_of(target.tolist(), epoch=1, seed=seed)
        out = m.trunk(b["features"])
        chosen, rows, protos = m.prototype_choice(out, b["target"])
        own = peak_quadrant(out["attention"], out["positions"], out["spatial"])
        for i in range(3):
            q = protos[i, 0].item()
            assert q != own[i, chosen[i]].item()
            seen.add((own[i, chosen[i]].item(), q))
    assert len({q for _, q in seen}) >= 3


# ---- counters ---------------------------------------------------------------------------------
def test_blend_stats_columns():
    s = BlendStats()
    sel = torch.tensor([[True, False], [True, True]])
    full = torch.tensor([[1, -1], [-1, 0]])
    proto = torch.tensor([[True, False], [False, False]])
    s.update({"blend_instance": sel, "blend_prototype": proto}, {"full": full}, 0.5, 0.25)
    s.update({"blend_instance": sel}, {"full": None}, 0.7, 0.75)
    out = s.compute()
    assert out["blend_instance_n"] == 6 and out["blend_prototype_n"] == 1
    # judged: (0,0) +, (1,0) -; (1,1) hidden unknown
    assert out["blend_instance_precision"] == 50.0 and out["blend_prototype_precision"] == 100.0
    assert out["alpha_mean"] == pytest.approx(0.6) and out["beta_mean"] == pytest.approx(0.5)
    s.reset()
    assert s.compute()["blend_instance_n"] == 0 and math.isnan(s.compute()["alpha_mean"])


# ---- end to end -------------------------------------------------------------------------------
EXTRA = {"sarb": ["method.prototype_interval=1", "method.num_prototypes=3",
                  "method.kmeans_n_init=2"],
         "dsrb": ["method.prototype_interval=1", "method.prototype_cap=5"]}


@pytest.mark.parametrize("name", ["sarb", "dsrb"])
def test_trains_and_resumes_exactly(shapes, cache_dir, tmp_path, name):
    a, ka, ra, rb = train_twice_with_resume(shapes, cache_dir, tmp_path, name, EXTRA[name])
    keys = ("loss_bce", "loss_contrast", "loss_blend_instance", "loss_blend_prototype", "mAP",
            "blend_instance_n", "blend_prototype_n", "alpha_mean", "beta_mean", "alpha", "beta")
    for key in keys:
        assert [x[key] for x in ra] == [x[key] for x in rb], key
    # blending starts at E0 = 1
    assert ra[0]["blend_instance_n"] == "0" and ra[0]["blend_prototype_n"] == "0"
    assert float(ra[0]["alpha_mean"]) == 0.5 and float(ra[0]["loss_blend_prototype"]) == 0
    assert int(ra[1]["blend_instance_n"]) > 0 and int(ra[1]["blend_prototype_n"]) > 0
    assert float(ra[1]["loss_blend_prototype"]) > 0
    assert 0 <= float(ra[1]["blend_prototype_precision"]) <= 100
    assert 0 <= float(ra[1]["alpha"]) <= 1 and float(ra[1]["alpha"]) != 0.5
    state = ka["model"]
    assert state["method.prototypes.epoch"].item() == 1 and state["method.prototypes.valid"].any()
    assert {"method.alpha", "method.beta"} <= set(state)
    from mlrpl.engine.evaluate import evaluate_checkpoint
    again = evaluate_checkpoint(a / "last.pt")
    assert again["metrics"]["mAP"] == pytest.approx(float(ra[-1]["mAP"]), abs=1e-3)
    if name == "dsrb":
        occ = state["method.prototypes.occupancy"]
        assert occ.sum() > 0 and (occ.sum(1) > 0).sum() == state["method.prototypes.valid"].any(1).sum()
        from mlrpl.experiments.reports.blending import plot_quadrant_occupancy
        png = plot_quadrant_occupancy(a / "last.pt", tmp_path / "occ.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_occupancy_plot_refuses_other_methods(tmp_path):
    from mlrpl.errors import MlrplError
    from mlrpl.experiments.reports.blending import plot_quadrant_occupancy
    with pytest.raises(MlrplError, match="no location-aware prototypes"):
        plot_quadrant_occupancy("x.pt", tmp_path / "o.png",
                                ckpt={"model": {"method.prototypes.centres": torch.zeros(1)}})


_DDP_SCRIPT = r'''
import json, sys
import torch, torch.distributed as td
from mlrpl.config import load_config
from mlrpl.engine.trainer import Trainer
from tests.test_transfer import state_differs_from_rank0
common, out = json.loads(sys.argv[1]), sys.argv[2]
report = {}
for method, extra in (("sarb", ["method.prototype_interval=1", "method.num_prototypes=3"]),
                      ("dsrb", ["method.prototype_interval=1", "method.prototype_cap=5"])):
    t = Trainer(load_config(None, common + [f"run.dir={out}/{method}", f"method.name={method}",
                                            *extra]))
    t.fit()
    differs = state_differs_from_rank0(t.model.method)
    row = t.history[-1]
    report[method] = {"differs": differs,
                      "row": [row["blend_instance_n"], row["blend_prototype_n"], row["alpha_mean"]],
                      "valid": int(t.model.method.prototypes.valid.sum())}
json.dump(report, open(f"{out}/report{td.get_rank()}.json", "w"))
'''


@pytest.mark.slow
def test_two_gloo_processes_share_prototypes_and_coefficients(shapes, cache_dir, tmp_path):
    from tests.test_transfer import run_two_gloo_processes
    reports = run_two_gloo_processes(_DDP_SCRIPT, shapes, cache_dir, tmp_path)
    for rep in reports:
        for name in ("sarb", "dsrb"):
            assert [k for k in rep[name]["differs"] if "running_" not in k] == [], name
            assert rep[name]["valid"] > 0
    for name in ("sarb", "dsrb"):
        assert reports[0][name]["row"] == reports[1][name]["row"]
        assert reports[0][name]["row"][0] > 0 and reports[0][name]["row"][1] > 0

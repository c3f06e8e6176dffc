"""sarb, dsrb, satl and hst beyond the SARL trunk at many classes: the per-step parts cost O(C)
(the blends touch the blended entries only, no (B, C, D) blend of the whole batch), the
prototype passes group the rows once instead of masking them per class, and each form gives the
numbers of the literal form it replaced (written out here) on small sizes; every method trains
at C = 1000 on a tiny trunk."""
import numpy as np
import pytest
import torch

from mlrpl.losses import instance_contrastive
from mlrpl.methods.components.blending import (instance_blend, instance_selection,
                                                prototype_blend, soft_targets)
from tests.test_anatomy import context
from tests.test_transfer import batch_of

SMALL = {"trunk": {"dim": 8, "attention_dim": 4}}


def method(name, num_classes=4, **cfg):
    from mlrpl.methods import create_method
    torch.manual_seed(0)
    m = create_method(name, context(num_classes), **{**SMALL, "start_epoch": 0, **cfg}).train()
    if hasattr(m, "prototypes"):
        m.prototypes.centres.normal_()
        m.prototypes.valid.fill_(True)
    return m


def random_target(b, c, seed=0, known=0.5, positive=0.3):
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(b, c, generator=g) < positive, 1, -1)
    return torch.where(torch.rand(b, c, generator=g) < known, sign, 0).to(torch.int8)


# ---- blends: the former whole-batch forms ----------------------------------------------------------
def where_instance_blend(semantic, target, alpha):
    sel = instance_selection(target)
    mixed = alpha * semantic + (1 - alpha) * semantic.flip(0)
    return torch.where(sel[..., None], mixed, semantic), sel, soft_targets(target, sel, 1 - alpha)


def where_prototype_blend(semantic, target, chosen, rows, prototypes, beta):
    sel = torch.zeros_like(target, dtype=torch.bool)
    sel[torch.arange(len(chosen)), chosen] = rows
    mixed = beta * semantic + (1 - beta) * prototypes[:, None, :].to(semantic.dtype)
    return torch.where(sel[..., None], mixed, semantic), sel, soft_targets(target, sel, 1 - beta)


def reference_dsrb_choice(m, out, target):
    """dsrb's prototype choice with the peak quadrant of every (image, class)."""
    from mlrpl.methods.components.blending import draw_classes
    from mlrpl.methods.components.quadrant_prototypes import peak_quadrant
    protos = m.prototypes
    chosen, rows = draw_classes((target == 0) & protos.any[None])
    shift = torch.randint(1, 4, (len(chosen),))
    own = peak_quadrant(out["attention"].detach(), out["positions"].detach(), out["spatial"])
    own = own.gather(1, chosen[:, None])[:, 0]
    return chosen, rows, protos.centres[chosen, (own - shift) % 4]


def reference_blending_forward(m, features, batch):
    """The former forward: both blends formed on the whole batch (torch.where), the changed
    images' rows taken from them."""
    out = m.trunk(features)
    target = batch["target"]
    out["contrast"] = instance_contrastive(out["semantic"], target)
    alpha, beta = m.coefficients()
    sem = out["semantic"]
    blends = {"instance": where_instance_blend(sem, target, alpha)}
    if m.cfg.name == "dsrb":
        chosen, rows, protos = reference_dsrb_choice(m, out, target)
    else:
        chosen, rows, protos = m.prototype_choice(out, target)
    blends["prototype"] = where_prototype_blend(sem, target, chosen, rows, protos, beta)
    rows = {k: sel.any(1).nonzero().flatten() for k, (_, sel, _) in blends.items()}
    new = m.trunk.classify(torch.cat([blends[k][0][rows[k]] for k in blends]))[0]
    new = new.split([len(r) for r in rows.values()])
    for (k, (_, sel, soft)), logits in zip(blends.items(), new):
        out[f"logits_{k}"] = out["logits"].index_put((rows[k],), logits)
        out[f"soft_{k}"] = soft
        out[f"weight_{k}"] = (target != 0) | (sel & (soft.detach() > 0))
        out[f"blend_{k}"] = sel
    return out


@pytest.mark.parametrize("c,d", [(5, 3), (40, 16)])
def test_entry_blends_equal_the_whole_batch_forms(c, d):
    g = torch.Generator().manual_seed(1)
    for b in (1, 4, 5):
        target = random_target(b, c, seed=b)
        sem = torch.randn(b, c, d, generator=g, requires_grad=True)
        alpha = torch.tensor(0.3, requires_grad=True)
        got, want = instance_blend(sem, target, alpha), where_instance_blend(sem, target, alpha)
        for x, y in zip(got, want):
            assert torch.equal(x, y)
        w = torch.randn(b, c, d, generator=g)
        ga = torch.autograd.grad((got[0] * w).sum() + got[2].sum(), (sem, alpha))
        wa = torch.autograd.grad((want[0] * w).sum() + want[2].sum(), (sem, alpha))
        for x, y in zip(ga, wa):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
        chosen = torch.randint(c, (b,), generator=g)
        rows = torch.rand(b, generator=g) < 0.7
        protos = torch.randn(b, d, generator=g)
        got = prototype_blend(sem, target, chosen, rows, protos, alpha)
        want = where_prototype_blend(sem, target, chosen, rows, protos, alpha)
        for x, y in zip(got, want):
            assert torch.equal(x, y)
        ga = torch.autograd.grad((got[0] * w).sum() + got[2].sum(), (sem, alpha))
        wa = torch.autograd.grad((want[0] * w).sum() + want[2].sum(), (sem, alpha))
        for x, y in zip(ga, wa):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


REFINED = {"dim": 8, "attention_dim": 4, "refine_classes": 5, "refine_all_up_to": 8}


@pytest.mark.parametrize("name", ["sarb", "dsrb"])
@pytest.mark.parametrize("num_classes,trunk", [(4, None), (30, None), (30, REFINED)],
                         ids=["4", "30", "30-refined"])
def test_blending_forward_equals_the_whole_batch_form(name, num_classes, trunk):
    """Same random draws, same logits bit for bit, same losses; gradients to float round-off
    (the blended features reach the trunk's input by other autograd paths). With each image's
    5 best classes refined (30 classes above refine_all_up_to 8), the second pass computes the
    pre-graph scores of the blended entries only and takes the others from the first pass: the
    reference computes them all again."""
    m = method(name, num_classes, **({"trunk": trunk} if trunk else {}))
    for seed in range(3):
        target = random_target(5, num_classes, seed=seed)
        b = batch_of(target.tolist(), epoch=1, seed=seed)
        torch.manual_seed(seed)
        got = m(b["features"], b)
        torch.manual_seed(seed)
        want = reference_blending_forward(m, b["features"], b)
        assert got["blend_prototype"].any()
        assert ("pre_graph_logits" in got) == bool(trunk)   # the path that reuses them
        for key in ("logits", "logits_instance", "logits_prototype", "soft_instance",
                    "soft_prototype", "weight_instance", "weight_prototype", "blend_instance",
                    "blend_prototype", "contrast"):
            assert torch.equal(got[key], want[key]), key
        lg, lw = m.loss(got, b, 1), m.loss(want, b, 1)
        assert {k: v.item() for k, v in lg.items()} == {k: v.item() for k, v in lw.items()}
        params = [p for p in m.parameters() if p.requires_grad]
        gg = torch.autograd.grad(sum(lg.values()), params, allow_unused=True)
        gw = torch.autograd.grad(sum(lw.values()), params, allow_unused=True)
        for x, y in zip(gg, gw):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_dsrb_choice_equals_the_whole_batch_peak_quadrant():
    m = method("dsrb", 12)
    for seed in range(5):
        target = random_target(4, 12, seed=seed, known=0.3)
        b = batch_of(target.tolist(), epoch=1, seed=seed)
        out = m.trunk(b["features"])
        torch.manual_seed(seed)
        got = m.prototype_choice(out, b["target"])
        torch.manual_seed(seed)
        want = reference_dsrb_choice(m, out, b["target"])
        for x, y in zip(got, want):
            assert torch.equal(x, y)


# ---- prototypes: the former per-class forms --------------------------------------------------------
def masked_quadrant_means(features, classes, quadrants, num_classes, cap=100, shrink=False):
    """The former quadrant means: every class and quadrant masked out of all the rows."""
    dim = features.shape[1]
    centres = torch.zeros(num_classes, 4, dim)
    valid = torch.zeros(num_classes, 4, dtype=torch.bool)
    occupancy = torch.zeros(num_classes, 4, dtype=torch.long)
    features = features.float()
    for c in torch.unique(classes).tolist():
        fc, qc = features[classes == c], quadrants[classes == c]
        kept = []
        for q in range(4):
            fq = fc[qc == q]
            occupancy[c, q] = len(fq)
            fq = fq[:cap]
            if len(fq):
                centres[c, q] = fq.sum(0) / (len(fq) + 1) if shrink else fq.mean(0)
                kept.append(fq)
        fallback = torch.cat(kept).mean(0)
        for q in range(4):
            if occupancy[c, q] == 0:
                centres[c, q] = fallback
        valid[c] = True
    return centres, valid, occupancy


@pytest.mark.parametrize("cap", [1, 3, 40, 100])
@pytest.mark.parametrize("shrink", [False, True])
def test_grouped_quadrant_means_equal_the_masked_form(cap, shrink):
    from mlrpl.methods.components.quadrant_prototypes import quadrant_means
    g = torch.Generator().manual_seed(cap)
    n, c, d = 400, 9, 7
    classes = torch.randint(c - 2, (n,), generator=g)          # the last two classes: no row
    classes[:60] = 0                                            # a large class (over the cap)
    quadrants = torch.randint(4, (n,), generator=g)
    quadrants[classes == 3] = 2                                 # three empty quadrants
    feats = torch.randn(n, d, generator=g)
    got = quadrant_means(feats, classes, quadrants, c, cap, shrink)
    want = masked_quadrant_means(feats, classes, quadrants, c, cap, shrink)
    for x, y in zip(got, want):
        assert x.dtype == y.dtype and torch.equal(x, y)
    empty = quadrant_means(torch.zeros(0, d), torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, dtype=torch.long), c, cap, shrink)
    assert not empty[1].any() and (empty[0] == 0).all() and empty[0].shape == (c, 4, d)


def masked_kmeans(features, classes, num_classes, k, random_state, n_init):
    """The former k-means pass: each class masked out of all the rows, default threads."""
    from sklearn.cluster import KMeans
    protos = np.zeros((num_classes, k, features.shape[1]), dtype=np.float32)
    valid = np.zeros((num_classes, k), dtype=bool)
    for c in range(num_classes):
        x = features[classes == c]
        if len(x) == 0:
            continue
        n_clusters = min(k, len(x))
        km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state).fit(x)
        protos[c, :n_clusters] = km.cluster_centers_
        valid[c, :n_clusters] = True
    return torch.from_numpy(protos), torch.from_numpy(valid)


def test_kmeans_prototypes_equal_the_masked_form():
    """Bit for bit for classes of at most 256 rows (one chunk of scikit-learn's Lloyd
    iterations, so the thread count cannot matter)."""
    from mlrpl.methods.components.prototypes import kmeans_prototypes
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 6, 300)
    classes[classes == 4] = 5                                    # class 4: no row
    classes[:3] = 2
    classes[classes == 2] = 1
    classes[:2] = 2                                              # class 2: fewer rows than k
    feats = rng.normal(size=(300, 5)).astype(np.float32)
    got = kmeans_prototypes(feats, classes, 7, 4, 11, n_init=2, show_progress=False)
    want = masked_kmeans(feats, classes, 7, 4, 11, 2)
    for x, y in zip(got, want):
        assert torch.equal(x, y)
    assert got[1].sum(1).tolist() == [4, 4, 2, 4, 0, 4, 0]
    assert torch.get_num_threads() >= 1                          # threads restored after


# ---- prototype passes -------------------------------------------------------------------------------
def epoch_context(m, features, partial, batch_size=5, epoch=0):
    """An EpochContext whose pass runs ``m``'s trunk in evaluation mode over ``features``."""
    from mlrpl.methods.base import EpochContext

    def eval_batches(desc):
        m.eval()
        with torch.no_grad():
            for s in range(0, len(features), batch_size):
                e = min(s + batch_size, len(features))
                yield ({"index": torch.arange(s, e), "target": torch.as_tensor(partial[s:e])},
                       m.trunk(features[s:e]))
        m.train()
    return EpochContext(epoch=epoch, seed=0, partial_labels=partial, show_progress=False,
                        eval_batches=eval_batches)


def test_quadrant_recompute_equals_the_former_pass():
    """The quadrant taken at the known positives only (no (B, C, D + 1) copy per batch) and the
    grouped means: the former pass's buffers bit for bit."""
    from mlrpl.methods.components.prototypes import collect_positive_features
    from mlrpl.methods.components.quadrant_prototypes import peak_quadrant
    import dataclasses
    m = method("dsrb", 7)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(23, 6, 4, 4, generator=g)
    partial = random_target(23, 7, seed=4, known=0.7, positive=0.5).numpy()
    ctx = epoch_context(m, feats, partial)

    def with_cat(desc):
        for batch, out in ctx.eval_batches(desc):
            q = peak_quadrant(out["attention"], out["positions"], out["spatial"])
            out = dict(out)
            out["_cat"] = torch.cat([out["semantic"].float(), q[..., None].float()], -1)
            yield batch, out
    rows, classes = collect_positive_features(dataclasses.replace(ctx, eval_batches=with_cat),
                                              "_cat")
    want = masked_quadrant_means(rows[:, :-1], classes, rows[:, -1].round().long(), 7, 2, False)
    n = m.prototypes.recompute(ctx, cap=2)
    assert n == int((partial > 0).sum())
    for got, w in zip((m.prototypes.centres, m.prototypes.valid, m.prototypes.occupancy), want):
        assert torch.equal(got, w)


def test_collect_positive_features_of_several_keys():
    from mlrpl.methods.components.prototypes import collect_positive_features
    m = method("sarb", 5)
    feats = torch.randn(9, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    partial = random_target(9, 5, seed=2, known=0.8, positive=0.5).numpy()
    ctx = epoch_context(m, feats, partial, batch_size=4)
    sem, cls = collect_positive_features(ctx)
    both, cls2 = collect_positive_features(ctx, ("semantic", "logits"))
    b, c = np.nonzero(partial > 0)
    assert cls.tolist() == cls2.tolist() == c.tolist()
    assert torch.equal(both[:, :-1], sem)
    with torch.no_grad():
        m.eval()
        out = m.trunk(feats)
    torch.testing.assert_close(sem, out["semantic"][b, c])      # batches of 4 vs one of 9
    torch.testing.assert_close(both[:, -1], out["logits"][b, c])


@pytest.mark.parametrize("name", ["sarb", "dsrb", "hst"])
def test_prototype_pass_at_1000_classes(name):
    """The pass and the per-class k-means / quadrant means at C = 1000 (a tiny trunk, 40
    images): every class with a known positive gets its prototypes."""
    extra = {"kmeans_n_init": 2} if name != "dsrb" else {}
    m = method(name, 1000, **extra)
    m.prototypes.valid.fill_(False)
    feats = torch.randn(40, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    partial = random_target(40, 1000, seed=1, known=0.3, positive=0.1).numpy()
    ctx = epoch_context(m, feats, partial, batch_size=8, epoch=5)
    n = m.prototypes.recompute(ctx, 2) if name != "dsrb" else m.prototypes.recompute(ctx, 100)
    assert n == int((partial > 0).sum())
    assert torch.equal(m.prototypes.any, torch.from_numpy((partial > 0).any(0)))


# ---- a training step at 1000 classes ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["sarb", "dsrb", "satl", "hst"])
def test_training_step_at_1000_classes(name):
    """Every branch (pseudo-labelling phase; blends with prototypes) on a tiny trunk at C = 1000,
    with the counters and thresholds updated."""
    m = method(name, 1000)
    opt = torch.optim.Adam(list(m.param_groups()), lr=1e-3)
    for seed in range(2):
        target = random_target(4, 1000, seed=seed, known=0.3, positive=0.1)
        b = batch_of(target.tolist(), epoch=5, seed=seed)
        out = m(b["features"], b)
        terms = m.loss(out, b, 5)
        total = sum(terms.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
        m.update_state(out, b)
    if name in ("sarb", "dsrb"):
        assert out["blend_prototype"].sum() == 4 and out["blend_instance"].any()
        assert terms["blend_prototype"].item() > 0
    stats = m.epoch_stats()
    assert isinstance(stats, dict)

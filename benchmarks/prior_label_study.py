"""Where the class prior and the partial labels can (and cannot) add up: a study on cached features.

    MLRPL_DATA=../shared/data python benchmarks/prior_label_study.py            # both sets, ~5 min
    MLRPL_DATA=../shared/data python benchmarks/prior_label_study.py --set voc2007-2k --seeds 0

The CPU sets' pbce + prior runs train a linear head on pooled, frozen EfficientNet-Lite0 features
with the prior's logits as an offset. That model is small enough to retrain in a second, so this
script replays it outside the trainer (the same features, prior, HCP masks, Adam 1e-2, weight
decay 1e-4, cosine over 30 epochs) and asks, at 10% and 30% known, seeds 0-2, last-epoch test mAP:

1. ``head``: pbce + prior, and ``U`` (every training label known), the gap to close;
2. ``oracle``: the same head with every hidden positive (or negative) revealed: how much of the
   gap the missing labels hold;
3. ``ranking of unknown entries``: AP over the unknown training entries of the prior alone, the
   trained head, class prototypes of the known positives and label propagation over a kNN graph
   of the training images, per group of classes by known positives (0, 1-3, 4+);
4. ``recovery``: the head retrained with recovered labels: self-training (confident entries of
   the head, top-m per class, three rounds), the teacher plug-in's calibrated recovery from the
   trusted prior, and a cross-fitted teacher (five heads, each scoring the images it did not see);
5. ``opaque``: COCO128 with names c00..c79: what the prior carries when names mean nothing;
6. ``--windows``: the prior on windows of the feature map (``model.prior.regions``), several
   window sets, each with per-class trust, beside the whole-image prior: test mAP over all classes
   and over the classes with at least 5 test positives (VOC2007-2k's test photos hold 1-4
   positives of 7 of its 18 classes, whose AP swings by tens of points with one image's rank).
7. ``--groups``: the trained head against the prior alone, per group of classes by known
   positives (0, 1-3, 4+), with the prior in windows (``--match wordnet``: today's default);

Numbers go to stdout (and ``--json``). It reproduces the figures quoted in docs/decisions.md
("What did not close the gap") and benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SIX = ["bus", "car", "cat", "motorbike", "person", "train"]
# model.prior.match of the study: the recorded figures are of the name-matched prior ("names");
# --match wordnet studies today's default
MATCH = "names"


def load_set(name: str, opaque: bool = False, windows=None) -> dict:
    """Pooled cached features, prior logits (untrusted), ImageNet posteriors and labels; with
    `windows` (a list of ``model.prior.regions`` lists) also ``p<tag>@<regions>``, the untrusted
    prior on those windows of the cached feature maps."""
    from mlrpl.config import load_config
    from mlrpl.engine.experiment import build_backbone, load_splits, make_dataset
    from mlrpl.models.prior import build_prior
    over = ["model.prior.name=imagenet", f"model.prior.match={MATCH}"] + (
        ["data.class_names=opaque"] if opaque else [])
    if name == "voc2007-2k":
        cfg = load_config(REPO / "configs/voc2007-2k_pbce_cpu.yaml", over + ["data.val_split=test"])
    else:
        cfg = load_config(REPO / "configs/coco128_pbce_cpu.yaml", over)
    train, val = load_splits(cfg)
    backbone = build_backbone(cfg)
    prior = build_prior(cfg, backbone, list(train.classes))
    out = {"classes": list(train.classes)}
    for tag, ls in (("tr", train), ("te", val)):
        ds, _ = make_dataset(cfg, ls, None, backbone, "cpu", False)
        pooled = torch.as_tensor(np.asarray(ds.features, dtype=np.float32)).mean(dim=(2, 3))
        with torch.no_grad():
            out["p" + tag] = prior.untrusted(pooled).numpy()
            out["q" + tag] = prior.imagenet_probabilities(pooled).numpy()
        out["x" + tag], out["y" + tag] = pooled.numpy(), ls.labels
        for regions in windows or []:
            prior.regions = torch.tensor([float(r) for r in regions])
            with torch.no_grad():
                out[f"p{tag}@{regions}"] = np.concatenate([
                    prior.untrusted(torch.as_tensor(np.asarray(ds.features[i:i + 64],
                                                               dtype=np.float32))).numpy()
                    for i in range(0, len(ds.features), 64)])
        prior.regions = torch.ones(1)
    out["similarity"] = np.array(prior.trust_similarity(list(train.classes)))  # as trust reads it
    return out


def evaluate(D, scores) -> tuple[float, float]:
    from mlrpl.metrics import mean_average_precision
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = 100 * mean_average_precision(scores, D["yte"])
        if all(c in D["classes"] for c in SIX):
            i = [D["classes"].index(c) for c in SIX]
            return m, 100 * mean_average_precision(scores[:, i], D["yte"][:, i])
    return m, float("nan")


def train_head(D, target, weight, seed, offset=True, epochs=30, lr=1e-2, wd=1e-4, train_rows=None,
               score_rows=None):
    """pbce (+ prior offset) with soft/weighted targets; returns (test logits, train logits)."""
    bs = 32 if len(D["xtr"]) > 500 else 16
    rows = np.arange(len(D["xtr"])) if train_rows is None else train_rows
    X = torch.as_tensor(D["xtr"][rows])
    off = torch.as_tensor(D["ptr"][rows] if offset else np.zeros_like(D["ptr"][rows]))
    T = torch.as_tensor(target[rows], dtype=torch.float32)
    W = torch.as_tensor(weight[rows], dtype=torch.float32)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    fc = torch.nn.Linear(X.shape[1], T.shape[1])
    opt = torch.optim.Adam(fc.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(len(X) / bs))
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), bs):
            b = perm[i:i + bs]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                fc(X[b]) + off[b], T[b], reduction="none")
            loss = (loss * W[b]).sum() / W[b].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        te = fc(torch.as_tensor(D["xte"])) + (torch.as_tensor(D["pte"]) if offset else 0)
        src = np.arange(len(D["xtr"])) if score_rows is None else score_rows
        tr = fc(torch.as_tensor(D["xtr"][src])) + (torch.as_tensor(D["ptr"][src]) if offset else 0)
    return te.numpy(), tr.numpy()


def mask(D, p, seed):
    from mlrpl.data.simulate import simulate
    return D["ytr"].copy() if p >= 1 else simulate(D["ytr"], "hcp", p=p, seed=seed)


def fit(D, P, seed, **kw):
    return train_head(D, (P > 0).astype(np.float32), (P != 0).astype(np.float32), seed, **kw)


def ap(scores, positive) -> float:
    order = np.argsort(-scores)
    y = positive[order]
    if not y.any():
        return float("nan")
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    return float((precision * y).sum() / y.sum())


def knn_graph(X, k=10, gamma=3):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Xn @ Xn.T
    np.fill_diagonal(S, -1)
    idx = np.argsort(-S, 1)[:, :k]
    A = np.zeros_like(S)
    r = np.arange(len(S))[:, None]
    A[r, idx] = np.clip(S[r, idx], 0, None) ** gamma
    A = A + A.T
    d = np.sqrt(np.maximum(A.sum(1), 1e-12))
    return A / d[:, None] / d[None]


def propagate(Wn, Y, alpha=0.5):
    return np.linalg.solve(np.eye(len(Wn)) - alpha * Wn, Y)


def ranking_study(D, P, seed):
    """AP of several scorers over the unknown training entries, by known-positive group."""
    _, head = fit(D, P, seed)
    Xn = D["xtr"] / np.linalg.norm(D["xtr"], axis=1, keepdims=True)
    Wn = knn_graph(D["xtr"])
    lp = propagate(Wn, (P > 0).astype(float))
    out: dict = {}
    for c in range(P.shape[1]):
        kp = int((P[:, c] > 0).sum())
        u = P[:, c] == 0
        y = D["ytr"][u, c] > 0
        if not y.any():
            continue
        group = "0" if kp == 0 else ("1-3" if kp <= 3 else "4+")
        scorers = {"prior": D["ptr"][u, c], "head": head[u, c]}
        if kp:
            scorers["prototype"] = Xn[u] @ Xn[P[:, c] > 0].mean(0)
            scorers["propagation"] = lp[u, c]
        for k, s in scorers.items():
            out.setdefault(group, {}).setdefault(k, []).append(ap(s, y))
    return out


def recovered_head(D, P, seed, rec):
    """The head retrained with recovered labels (+1/-1) on unknown entries."""
    target = np.where(rec > 0, 1.0, (P > 0)).astype(np.float32)
    weight = ((P != 0) | (rec != 0)).astype(np.float32)
    return train_head(D, target, weight, seed)[0]


def self_training(D, P, seed, share=0.25, rounds=3):
    """Top-m unknown entries per class by the head's score, m = share x the class's expected
    unknown positives (from its known positive rate); retrained each round."""
    _, head = fit(D, P, seed)
    known = P != 0
    rate = ((P > 0).sum(0) + 0.05) / (known.sum(0) + 1)
    res = []
    for _ in range(rounds):
        rec = np.zeros_like(P)
        for c in range(P.shape[1]):
            u = np.flatnonzero(~known[:, c])
            m = max(1, int(round(share * rate[c] * len(u))))
            rec[u[np.argsort(-head[u, c])[:m]], c] = 1
        test = recovered_head(D, P, seed, rec)
        res.append(evaluate(D, test)[0])
        target = np.where(rec > 0, 1.0, (P > 0)).astype(np.float32)
        _, head = train_head(D, target, ((P != 0) | (rec != 0)).astype(np.float32), seed)
    return res


def cross_fitted(D, P, seed, folds=5):
    """Out-of-fold head scores for every training image (each from a head that never saw it)."""
    rng = np.random.default_rng(1000 + seed)
    fold = rng.permutation(len(P)) % folds
    scores = np.zeros(P.shape)
    for f in range(folds):
        rows, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        _, s = fit(D, P, seed, train_rows=rows, score_rows=held)
        scores[held] = s
    return scores


def study(name: str, seeds, proportions) -> dict:
    from mlrpl.models.prior_trust import measure_trust
    from mlrpl.plugins.teacher import TeacherConfig, recover
    D = load_set(name)
    res: dict = {"set": name, "prior_alone": evaluate(D, D["pte"])}
    res["U"] = [evaluate(D, fit(D, mask(D, 1.0, s), s)[0]) for s in seeds]
    for p in proportions:
        row: dict = {}
        for s in seeds:
            P = mask(D, p, s)
            hidden = (P == 0) & (D["ytr"] > 0)
            trust, _ = measure_trust(D["ptr"], P, D["similarity"], D["classes"])
            add = {
                "pbce": evaluate(D, fit(D, P, s, offset=False)[0]),
                "pbce+prior": evaluate(D, fit(D, P, s)[0]),
                "oracle: every hidden positive": evaluate(
                    D, fit(D, np.where(hidden, 1, P), s)[0]),
                "oracle: every hidden negative": evaluate(
                    D, fit(D, np.where((P == 0) & (D["ytr"] < 0), -1, P), s)[0]),
            }
            st = self_training(D, P, s)
            add["self-training, round 1"] = (st[0], float("nan"))
            add["self-training, round 3"] = (st[-1], float("nan"))
            rec, _ = recover(D["ptr"] * trust, P, TeacherConfig())
            add["teacher: trusted prior"] = evaluate(D, recovered_head(D, P, s, rec))
            rec, _ = recover(cross_fitted(D, P, s), P, TeacherConfig())
            add["teacher: cross-fitted head"] = evaluate(D, recovered_head(D, P, s, rec))
            for k, v in add.items():
                row.setdefault(k, []).append(v)
            for group, scorers in ranking_study(D, P, s).items():
                for k, v in scorers.items():
                    row.setdefault(f"unknown-entry AP, classes with {group} known positives: {k}",
                                   []).extend([(100 * x, float("nan")) for x in v])
        res[p] = {k: np.nanmean(np.array(v, dtype=float), 0).round(2).tolist()
                  for k, v in row.items()}
    return res


WINDOWS = [[1.0], [1.0, 0.5], [1.0, 0.35], [1.0, 0.25], [1.0, 0.5, 0.25], [1.0, 0.5, 0.35, 0.25]]


def windows_study(name: str, seeds, proportions) -> dict:
    """pbce + trusted prior with the prior on each window set of ``WINDOWS``: mean test mAP over
    seeds, all classes and the classes with >= 5 test positives, at `proportions` and 100%."""
    from mlrpl.metrics import mean_average_precision
    from mlrpl.models.prior_trust import measure_trust
    D = load_set(name, windows=WINDOWS)
    big = (D["yte"] > 0).sum(0) >= 5
    res: dict = {"set": name, "classes with >= 5 test positives": int(big.sum())}
    for regions in WINDOWS:
        row = {}
        for p in list(proportions) + [1.0]:
            vals = []
            for s in seeds:
                P = mask(D, p, s)
                ptr, pte = D[f"ptr@{regions}"], D[f"pte@{regions}"]
                trust, _ = measure_trust(ptr, P, D["similarity"], D["classes"])
                Dw = {**D, "ptr": ptr * trust, "pte": pte * trust}
                te = fit(Dw, P, s)[0]
                vals.append((evaluate(D, te)[0],
                             100 * mean_average_precision(te[:, big], D["yte"][:, big])))
            row[p] = np.mean(vals, 0).round(2).tolist()
        res[str(regions)] = row
    return res


def groups_study(name: str, seeds, proportions, regions=(1.0, 0.5, 0.25)) -> dict:
    """Where the trained head adds to the prior: test AP of pbce + trusted prior (on `regions`)
    against the prior alone, averaged over the classes with 0, 1-3 and 4+ known training
    positives (each seed's mask), mean over seeds."""
    D = load_set(name, windows=[list(regions)])
    key = str(list(regions))
    ptr, pte = D[f"ptr@{key}"], D[f"pte@{key}"]
    from mlrpl.models.prior_trust import measure_trust
    y = D["yte"] > 0
    tested = y.any(0)

    def per_class(scores):
        return np.array([ap(scores[:, c], y[:, c]) if tested[c] else np.nan
                         for c in range(y.shape[1])])
    alone = per_class(pte)
    res: dict = {"set": name, "regions": list(regions), "prior alone": 100 * np.nanmean(alone)}
    for p in proportions:
        groups = {g: [] for g in ("0", "1-3", "4+")}
        kept = []
        for s in seeds:
            P = mask(D, p, s)
            trust, _ = measure_trust(ptr, P, D["similarity"], D["classes"])
            scores = fit({**D, "ptr": ptr * trust, "pte": pte * trust}, P, s)[0]
            trained = per_class(scores)
            known = (P > 0).sum(0)
            # the variant: a class without a known positive keeps the prior alone (no head)
            alt = scores.copy()
            alt[:, known == 0] = (pte * trust)[:, known == 0]
            kept.append((evaluate(D, scores)[0], evaluate(D, alt)[0]))
            for g, m in (("0", known == 0), ("1-3", (known >= 1) & (known <= 3)),
                         ("4+", known >= 4)):
                m = m & tested
                if m.any():
                    groups[g].append((100 * trained[m].mean(), 100 * alone[m].mean(), m.sum()))
        res[p] = {g: np.mean(v, 0).round(2).tolist() for g, v in groups.items() if v}
        res[f"{p} mAP, head / prior alone where no positive is known"] = \
            np.mean(kept, 0).round(2).tolist()
    return res


def opaque_study() -> dict:
    """COCO128 with opaque names: the ImageNet categories the prior mixes, and how its image
    mean relates to the number of objects per image."""
    import mlrpl.models.prior as pm
    from scipy.stats import spearmanr
    D = load_set("coco128", opaque=True)
    cats = pm.imagenet_categories()
    counts = (D["yte"] > 0).sum(1)
    entropy = -(D["qte"] * np.log(D["qte"] + 1e-12)).sum(1)
    mean_prior = D["pte"].mean(1)
    weights = None
    try:
        from mlrpl.data.embeddings import sentence_embeddings
        A = pm.mixing_matrix(sentence_embeddings(D["classes"]), sentence_embeddings(cats), 10,
                             0.1).numpy()
        weights = [(cats[k], round(float(A[:, k].sum()), 1)) for k in np.argsort(-A.sum(0))[:8]]
    except ImportError:
        pass
    tile = lambda s: np.repeat(s[:, None], len(D["classes"]), 1)   # noqa: E731
    return {"mixed_imagenet_categories": weights,
            "spearman(mean prior, objects per image)": round(spearmanr(mean_prior, counts)[0], 3),
            "spearman(posterior entropy, objects per image)": round(spearmanr(entropy, counts)[0], 3),
            "mAP of the mean prior as every class's score": round(evaluate(D, tile(mean_prior))[0], 2),
            "mAP of the true object count as every class's score":
                round(evaluate(D, tile(counts.astype(float)))[0], 2)}


def main(argv=None):
    ap_ = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap_.add_argument("--set", nargs="*", default=["voc2007-2k", "coco128"])
    ap_.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap_.add_argument("--proportions", type=float, nargs="*", default=[0.1, 0.3])
    ap_.add_argument("--json", default=None, help="also write the numbers to this file")
    ap_.add_argument("--windows", action="store_true",
                     help="only the window study (model.prior.regions), ~2 min per set")
    ap_.add_argument("--match", choices=["names", "wordnet"], default="names",
                     help="model.prior.match (names: the prior the recorded figures studied)")
    ap_.add_argument("--groups", action="store_true",
                     help="only the head against the prior alone by known positives per class")
    args = ap_.parse_args(argv)
    global MATCH
    MATCH = args.match
    if args.groups:
        for name in args.set:
            res = groups_study(name, args.seeds, args.proportions)
            print(f"\n== {name} (prior: match={MATCH}, regions={res['regions']}): mean test AP "
                  f"of the classes with 0 / 1-3 / 4+ known positives, trained head / prior alone "
                  f"(classes), mean over seeds {args.seeds}; prior alone, all classes: "
                  f"{res['prior alone']:.2f}")
            for p in args.proportions:
                a, b = res[f"{p} mAP, head / prior alone where no positive is known"]
                print(f"  {int(100 * p)}%: " + "   ".join(
                    f"{g}: {v[0]:.1f} / {v[1]:.1f} ({v[2]:.0f})" for g, v in res[p].items())
                    + f"   | test mAP {a:.2f}; {b:.2f} with the prior alone for the classes "
                      f"without a known positive")
        return
    torch.set_num_threads(1)
    os.environ.setdefault("MLRPL_DATA", str(REPO.parent / "shared" / "data"))
    if args.windows:
        out = [windows_study(s, args.seeds, args.proportions) for s in args.set]
        for res in out:
            print(f"\n== {res['set']}: pbce + trusted prior, test mAP, mean over seeds "
                  f"{args.seeds}: all classes / the {res['classes with >= 5 test positives']} "
                  f"classes with >= 5 test positives")
            for regions, row in res.items():
                if isinstance(row, dict):
                    print(f"  regions={regions:26s} " + "  ".join(
                        f"{int(100 * p)}%: {v[0]:6.2f} / {v[1]:6.2f}" for p, v in row.items()))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        return
    out = {"sets": [study(s, args.seeds, args.proportions) for s in args.set]}
    if "coco128" in args.set:
        out["opaque"] = opaque_study()
    for res in out["sets"]:
        print(f"\n== {res['set']}: test mAP (all classes / six frequent), mean over seeds "
              f"{args.seeds}")
        print(f"prior alone: {res['prior_alone'][0]:.2f}; U (pbce+prior, 100% known): "
              f"{np.mean([u[0] for u in res['U']]):.2f}")
        for p in args.proportions:
            print(f"-- {int(100 * p)}% known")
            for k, v in res[p].items():
                print(f"  {k:70s} {v[0]:6.2f}" + ("" if math.isnan(v[1]) else f" / {v[1]:.2f}"))
    if "opaque" in out:
        print("\n== COCO128, opaque class names")
        for k, v in out["opaque"].items():
            print(f"  {k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()

"""Every method gives the losses, metrics, pseudo-label counts and weights it gave before the
method anatomy was redesigned (issue "One method, one place").

The values in ``tests/data/method_pins.json`` were computed with the code of commit 63ca781
(before the redesign) by ``python tests/test_pinned.py --write``: each method trains 2 epochs on
the generated shapes set (pseudo-labels from epoch 1), and every loss term, mAP, pseudo-label count
of ``summary.csv`` and a digest of every saved tensor are recorded.
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

PINS = Path(__file__).parent / "data" / "method_pins.json"
NAMES = ["red_circle", "green_square", "blue_triangle", "yellow_star", "white_ring", "purple_cross"]

CASES = {
    "pbce": ["method.name=pbce"],
    "ssgrl": ["method.name=ssgrl"],
    "sst": ["method.name=sst", "method.bank_size=4", "method.threshold_start=0.3",
            "method.cooc_pairs=sample", "method.cooc_sample=6"],
    "hst": ["method.name=hst", "method.prototype_interval=1", "method.num_prototypes=3",
            "method.kmeans_n_init=2", "method.threshold_init=0.3"],
    "satl": ["method.name=satl", "method.satl.min_positives=1"],
    "sst_satl": ["method.name=sst", "method.bank_size=4", "method.thresholds=satl",
                 "method.satl.min_positives=1"],
    "hst_satl": ["method.name=hst", "method.prototype_interval=1", "method.num_prototypes=3",
                 "method.kmeans_n_init=2", "method.thresholds=satl",
                 "method.satl.min_positives=1"],
}
SARL = ["method.trunk.dim=32", "method.trunk.attention_dim=16"]


def _embeddings(folder: Path) -> Path:
    emb = folder / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(6, 7)).astype("f4"))
    (folder / "emb.names.txt").write_text("\n".join(NAMES) + "\n")
    return emb


def run_case(name, shapes, cache_dir, tmp_path) -> dict:
    from mlrpl.config import load_config
    from mlrpl.engine.checkpoint import load_checkpoint
    from mlrpl.engine.trainer import Trainer
    from tests.test_engine import tiny
    extra = list(CASES[name])
    if name != "pbce":
        extra += SARL + [f"data.embeddings={_embeddings(tmp_path)}"]
    if name not in ("pbce", "ssgrl"):
        extra.append("method.start_epoch=1")
    run = tmp_path / name
    Trainer(load_config(None, tiny(shapes, cache_dir, run, *extra))).fit()
    with open(run / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    keep = [k for k in rows[0] if k.startswith("loss_") or k in ("mAP", "CF1", "OF1")
            or (k.startswith("pl_") and k.endswith("_n")) or k.startswith("threshold_")]
    state = load_checkpoint(run / "last.pt")["model"]
    tensors = {k: [float(v.double().sum()), float(v.double().abs().sum())]
               for k, v in sorted(state.items()) if v.is_floating_point()}
    return {"summary": [{k: r[k] for k in keep} for r in rows], "tensors": tensors}


def _close(a: str, b: str) -> bool:
    fa, fb = float(a), float(b)
    if np.isnan(fa) or np.isnan(fb):
        return np.isnan(fa) and np.isnan(fb)
    return abs(fa - fb) <= 1e-4 * max(1.0, abs(fb))


@pytest.mark.parametrize("name", sorted(CASES))
def test_method_matches_pinned_values(name, shapes, cache_dir, tmp_path):
    pins = json.loads(PINS.read_text())[name]
    got = run_case(name, shapes, cache_dir, tmp_path)
    assert len(got["summary"]) == len(pins["summary"])
    for epoch, (g, p) in enumerate(zip(got["summary"], pins["summary"])):
        for key, want in p.items():
            assert key in g, f"{name}: column {key} is gone"
            assert _close(g[key], want), f"{name} epoch {epoch} {key}: {g[key]} != {want}"
    # every tensor saved before is saved now (under its new name when it moved), same values
    moved = {k: v for k, v in got["tensors"].items()}
    for key, (total, absolute) in pins["tensors"].items():
        match = moved.get(key) or moved.get(RENAMED.get(key, key))
        assert match is not None, f"{name}: tensor {key} is not saved any more"
        assert match[0] == pytest.approx(total, rel=1e-4, abs=1e-4, nan_ok=True), key
        assert match[1] == pytest.approx(absolute, rel=1e-4, abs=1e-4, nan_ok=True), key


# State tensors whose name changed in the redesign (old key -> new key).
RENAMED: dict[str, str] = {"method.prototypes": "method.prototypes.centres"}


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlrpl.data.synthetic import make_shapes_dataset
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shapes = make_shapes_dataset(tmp / "data", n_train=48, n_val=24, size=64, num_classes=6,
                                     seed=0)
        out = {}
        for case in CASES:
            (tmp / case).mkdir()
            out[case] = run_case(case, shapes, tmp / "cache", tmp / case)
            print(case, out[case]["summary"][-1])
    PINS.parent.mkdir(exist_ok=True)
    PINS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")

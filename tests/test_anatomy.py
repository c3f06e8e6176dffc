"""The method anatomy (one method, one place: docs/decisions.md): the contract, the registry,
recipes, the import graph, process-wide settings, and the toy method of docs/adding-a-method.md."""
import importlib
import logging
import re
import sys

import numpy as np
import pytest
import torch

import mlrpl
from mlrpl.utils.codeinfo import cycles, import_graph, reachable
from mlrpl.errors import ConfigError
from mlrpl.methods import REGIMES, create_method, list_methods, recipe, register_method
from mlrpl.methods.base import Method, MethodConfig, MethodContext
from mlrpl.plugins import list_plugins
from tests.conftest import REPO
from tests.test_engine import tiny
from tests.test_transfer import batch_of

BUILT_IN = ["clsl", "dsrb", "hst", "pbce", "sarb", "satl", "sr", "ssgrl", "sst"]


def context(num_classes=4, channels=6):
    rng = np.random.default_rng(0)
    partial = np.where(rng.random((12, num_classes)) < 0.6,
                       np.where(rng.random((12, num_classes)) < 0.4, 1, -1), 0).astype(np.int8)
    return MethodContext(num_classes=num_classes, feature_channels=channels,
                         class_names=[f"c{i}" for i in range(num_classes)],
                         partial_labels=partial,
                         embeddings=rng.normal(size=(num_classes, 5)).astype(np.float32))


# ---- the import graph ---------------------------------------------------------------------------
def test_no_import_cycle_in_the_package():
    assert cycles() == []


def test_cycle_finder_finds_a_cycle():
    g = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset()}
    assert cycles(g) == [["a", "b", "c"]]


# The layers, lowest first: a module imports only from its own layer or the ones below (every
# import counted, function-local ones included: mlrpl.utils.codeinfo reads them all).
LAYERS = [("mlrpl.version", "mlrpl.errors", "mlrpl.utils"),
          ("mlrpl.data", "mlrpl.metrics", "mlrpl.losses"),
          ("mlrpl.models",),
          ("mlrpl.methods", "mlrpl.plugins"),
          ("mlrpl.config",),
          ("mlrpl.engine",),
          ("mlrpl.deploy", "mlrpl.experiments"),
          ("mlrpl.api", "mlrpl.cli", "mlrpl.__main__", "mlrpl")]


def layer_of(module: str) -> int | None:
    best = None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (module == prefix or module.startswith(prefix + ".")) and \
                    (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    return None if best is None else best[0]


def test_every_module_has_a_layer_and_no_layer_imports_a_higher_one():
    graph = import_graph()
    assert [m for m in graph if layer_of(m) is None] == []
    upward = sorted((a, b) for a, imports in graph.items() for b in imports
                    if layer_of(b) > layer_of(a))
    assert upward == []


def test_the_import_graph_counts_function_local_imports(tmp_path, monkeypatch):
    from mlrpl.utils import codeinfo
    pkg = tmp_path / "mlrpl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from mlrpl import high\n    return high\n")
    (pkg / "high.py").write_text("")
    known = {"mlrpl": pkg / "__init__.py", "mlrpl.low": pkg / "low.py", "mlrpl.high": pkg / "high.py"}
    assert codeinfo._imports("mlrpl.low", pkg / "low.py", known) == {"mlrpl.high"}


def test_the_top_level_holds_only_the_entry_points_and_the_core():
    top = sorted(p.stem for p in (REPO / "mlrpl").glob("*.py"))
    assert top == ["__init__", "__main__", "api", "cli", "config", "errors", "losses", "metrics",
                   "version"]


def test_methods_and_losses_never_reach_the_engine():
    graph = import_graph()
    for mod in graph:
        if mod.startswith("mlrpl.methods") or mod == "mlrpl.losses":
            assert not [m for m in reachable(mod) if m.startswith("mlrpl.engine")], mod


# ---- the contract --------------------------------------------------------------------------------
SMALL = {"trunk": {"dim": 8, "attention_dim": 4}}
VARIANTS = [("pbce", {}), ("ssgrl", SMALL),
            ("sst", {**SMALL, "start_epoch": 0, "bank_size": 3, "threshold_start": 0.1}),
            ("sst", {**SMALL, "start_epoch": 0, "thresholds": "satl",
                     "satl": {"min_positives": 1}}),
            ("hst", {**SMALL, "start_epoch": 0, "threshold_init": 0.1}),
            ("hst", {**SMALL, "start_epoch": 0, "thresholds": "satl",
                     "satl": {"min_positives": 1}}),
            ("satl", {**SMALL, "start_epoch": 0, "satl": {"min_positives": 1}}),
            ("sarb", {**SMALL, "start_epoch": 0}),
            ("sarb", {**SMALL, "start_epoch": 0, "reference_quirks": True}),
            ("dsrb", {**SMALL, "start_epoch": 0}),
            ("clsl", {"dim": 8, "heads": 2, "ffn_dim": 8, "attention_dim": 4, "hidden_dim": 8}),
            ("clsl", {"dim": 8, "heads": 2, "ffn_dim": 8, "attention_dim": 4, "hidden_dim": 8,
                      "reference_quirks": True})]


# BatchNorm's running statistics move in every training-mode forward by PyTorch's design; they
# are the layer's, not the method's state.
_BN = ("running_mean", "running_var", "num_batches_tracked")


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items() if not k.endswith(_BN)}


@pytest.mark.parametrize("name, cfg", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_forward_never_changes_state_update_state_does(name, cfg):
    torch.manual_seed(0)
    m = create_method(name, context(), **cfg).train()
    if hasattr(m, "prototypes"):
        m.prototypes.centres.normal_()
        m.prototypes.valid.fill_(True)
    target = [[1, 0, -1, 0], [1, 1, 0, -1], [0, 1, -1, 1]]
    b = batch_of(target, epoch=1)
    before = _state(m)
    outs = [m(b["features"], b) for _ in range(2)]
    after = _state(m)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(before[k].nan_to_num(), after[k].nan_to_num()), \
            f"{name}: forward changed {k}"
    if name in ("pbce", "ssgrl"):
        return
    counters = m.quality if hasattr(m, "quality") else m.blend_stats   # blending: no pseudo-labels
    quality = counters.counts.clone()
    m.update_state(outs[0], b)
    changed = [k for k, v in _state(m).items()
               if not torch.equal(v.nan_to_num(), before[k].nan_to_num())]
    assert changed or not torch.equal(counters.counts, quality), \
        f"{name}: update_state changed nothing"


def test_every_hook_is_declared_on_the_base():
    for hook in ("forward", "loss", "update_state", "on_epoch_start", "epoch_stats",
                 "param_groups", "inference_thresholds"):
        assert callable(getattr(Method, hook)), hook
        assert getattr(Method, hook).__doc__, f"{hook} has no docstring"


# ---- the contract, for every registered method and plug-in (names read at collection) -----------
METHODS = list_methods()
# A small build of each method (widths of a few channels, pseudo-labels from the first epoch, loose
# thresholds so that the state-changing paths run on random features); every registered method
# needs one here.
SMALL_CONFIGS = {
    "pbce": {"dropout": 0.3},
    "ssgrl": SMALL,
    "sst": {**SMALL, "start_epoch": 0, "bank_size": 3, "threshold_start": 0.1},
    "hst": {**SMALL, "start_epoch": 0, "threshold_init": 0.1},
    "satl": {**SMALL, "start_epoch": 0, "satl": {"min_positives": 1}},
    "sarb": {**SMALL, "start_epoch": 0},
    "dsrb": {**SMALL, "start_epoch": 0},
    "clsl": {"dim": 8, "heads": 2, "ffn_dim": 8, "attention_dim": 4, "hidden_dim": 8},
    "sr": {"start_epoch": 0, "tau_pos": 0.55, "tau_neg": 0.45},
}
LOOP_HOOKS = ("forward", "loss", "update_state", "on_epoch_start", "epoch_stats", "param_groups",
              "inference_thresholds")
_MODULE_ATTRS = set(vars(torch.nn.Module()))


def _flatten(value, path, out, seen):
    from omegaconf import DictConfig, ListConfig, OmegaConf
    if isinstance(value, torch.Tensor):
        out[path] = value.detach().clone()
    elif isinstance(value, torch.nn.Module):
        out[path] = "<module>"                       # walked on its own by _everything
    elif isinstance(value, np.ndarray):
        out[path] = value.copy()
    elif isinstance(value, (DictConfig, ListConfig)):
        out[path] = repr(OmegaConf.to_container(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{path}[{k!r}]", out, seen)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value):
        if id(value) in seen:
            out[path] = "<seen>"
            return
        seen.add(id(value))
        for k, v in vars(value).items():
            _flatten(v, f"{path}.{k}", out, seen)
    else:
        out[path] = value


def _everything(m):
    """The whole state of a method: its state_dict (BatchNorm statistics aside) and every other
    attribute of each of its modules (counters in plain tensors, epoch markers, plain numbers)."""
    out = {f"state:{k}": v for k, v in _state(m).items()}
    seen = set()
    for prefix, mod in m.named_modules():
        for k, v in vars(mod).items():
            if k not in _MODULE_ATTRS:
                _flatten(v, f"attr:{prefix}.{k}", out, seen)
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return torch.equal(a.nan_to_num(), b.nan_to_num()) if a.is_floating_point() \
            else torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


def _changed(before, after) -> set:
    """Keys whose value changed, appeared or disappeared."""
    return (before.keys() ^ after.keys()) | {k for k in before.keys() & after.keys()
                                             if not _same(before[k], after[k])}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_defines_only_hooks_the_base_declares(name):
    """The loop calls the base's hooks: a method's hook has the base's parameters, and a hook-like
    name the base does not declare (it would never be called) is not there."""
    import inspect

    from mlrpl.methods.base import get_method_class
    cls = get_method_class(name)
    assert issubclass(cls, Method) and cls.name == name
    assert issubclass(cls.Config, MethodConfig) and cls.Config().name == name
    assert cls.forward is not Method.forward and cls.loss is not Method.loss, name
    for hook in LOOP_HOOKS:
        want = list(inspect.signature(getattr(Method, hook)).parameters)
        got = list(inspect.signature(getattr(cls, hook)).parameters)
        assert got == want, f"{name}.{hook}{got}: the base declares {want}"
    base = set(dir(Method))
    odd = [a for a in dir(cls) if a not in base
           and re.fullmatch(r"on_\w+|\w+_(state|stats|hook|start|end)", a)]
    assert not odd, f"{name} defines hook-like {odd} that the base does not declare"


@pytest.mark.parametrize("plugin", list_plugins())
def test_every_plugin_defines_only_hooks_the_base_declares(plugin):
    import inspect

    from mlrpl.plugins import get_plugin_class
    from mlrpl.plugins.base import Plugin, PluginConfig
    cls = get_plugin_class(plugin)
    assert issubclass(cls, Plugin) and cls.name == plugin
    assert issubclass(cls.Config, PluginConfig) and cls.Config().name == plugin
    hooks = [h for h, v in vars(Plugin).items() if not h.startswith("_")
             and callable(getattr(Plugin, h)) and not isinstance(v, type)]
    assert {"transform_batch", "loss", "update_state", "on_epoch_start", "evaluation",
            "after_resume", "on_train_end", "finalize", "epoch_stats", "check"} <= set(hooks)
    for hook in hooks:
        want = list(inspect.signature(getattr(Plugin, hook)).parameters)
        got = list(inspect.signature(getattr(cls, hook)).parameters)
        assert got == want, f"{plugin}.{hook}{got}: the base declares {want}"
    odd = [a for a in dir(cls) if a not in set(dir(Plugin))
           and re.fullmatch(r"on_\w+|\w+_(state|stats|hook|start|end|resume)", a)]
    assert not odd, f"{plugin} defines hook-like {odd} that the base does not declare"


@pytest.mark.parametrize("name", METHODS)
def test_state_changes_in_update_state_only(name):
    """One training step as the loop runs it. ``forward`` (twice) changes nothing at all: no
    parameter, buffer or other attribute (counters, markers); ``loss``, backward and the optimiser
    step change parameters and nothing else; ``update_state`` afterwards changes no parameter, and
    changes the method's state when the method overrides it (nothing when it does not)."""
    assert name in SMALL_CONFIGS, (f"method {name!r} is registered but tests/test_anatomy.py "
                                   f"SMALL_CONFIGS has no small config for it: add one")
    torch.manual_seed(0)
    m = create_method(name, context(), **SMALL_CONFIGS[name]).train()
    if hasattr(m, "prototypes"):
        m.prototypes.centres.normal_()
        m.prototypes.valid.fill_(True)
    b = batch_of([[1, 0, -1, 0], [1, 1, 0, -1], [0, 1, -1, 1]], epoch=1)
    params = {f"state:{k}" for k, _ in m.named_parameters()}
    opt = torch.optim.SGD(m.param_groups(), lr=0.1)
    before = _everything(m)
    outs = [m(b["features"], b) for _ in range(2)]
    assert not _changed(before, _everything(m)), f"{name}: forward changed state"
    terms = m.loss(outs[0], b, 1)
    opt.zero_grad()
    sum(terms.values()).backward()
    opt.step()
    stepped = _everything(m)
    changed = _changed(before, stepped)
    assert changed & params, f"{name}: the step changed no parameter"
    assert not changed - params, f"{name}: loss or the step changed {sorted(changed - params)}"
    m.update_state(outs[0], b)
    changed = _changed(stepped, _everything(m))
    assert not changed & params, f"{name}: update_state changed {sorted(changed & params)}"
    if type(m).update_state is Method.update_state:
        assert not changed, f"{name}: changed {sorted(changed)} without an update_state"
    else:
        assert changed, f"{name}: update_state changed nothing"


# ---- registry and recipes ------------------------------------------------------------------------
def test_factory_and_listing():
    assert mlrpl.list_methods() == list_methods() and set(BUILT_IN) <= set(list_methods())
    m = mlrpl.create_method("sst", context(), bank_size=7, trunk={"dim": 8, "attention_dim": 4})
    assert m.bank.features.shape == (4, 7, 8)
    with pytest.raises(ConfigError, match="bad config for method 'sst'"):
        create_method("sst", context(), bank_sise=7)
    with pytest.raises(ConfigError, match="unknown method 'sts'; did you mean 'sst'"):
        create_method("sts", context())


def test_registering_a_name_twice_is_an_error():
    @dataclass_config
    class Other(Method):
        pass
    with pytest.raises(ConfigError, match="'pbce' is already registered by mlrpl.methods.pbce"):
        register_method("pbce")(Other)
    with pytest.raises(ConfigError, match="unknown regime 'gpu'"):
        register_method("other_regime")(type("R", (Method,), {"recipes": {"gpu": []}}))


def dataclass_config(cls):
    cls.Config = MethodConfig
    return cls


def test_every_method_declares_a_recipe_for_each_regime_it_runs_in():
    for name in METHODS:
        for regime in ("cpu-cached", "hcp"):
            assert recipe(name, regime) is not None, (name, regime)
    assert recipe("ssgrl", "cpu-cached") == ["method.trunk.dim=256", "method.trunk.attention_dim=128",
                                             "optim.lr=0.001", "train.epochs=12"]
    assert recipe("pbce", "cpu-cached") == []
    assert "modern" in REGIMES and recipe("pbce", "modern") is None
    with pytest.raises(ConfigError, match="unknown training regime"):
        recipe("pbce", "laptop")


def test_a_recipe_reproduces_the_cpu_preset():
    """The recipe is what the CPU presets say (the sweeps apply recipes, users the presets)."""
    from mlrpl.config import load_config, resolved
    for name in ("ssgrl", "sst", "hst", "satl", "sarb", "dsrb"):
        preset = resolved(load_config(f"configs/voc2007-2k_{name}_cpu.yaml"))
        built = resolved(load_config("configs/voc2007-2k_pbce_cpu.yaml",
                                     recipe(name, "cpu-cached") + [f"method.name={name}",
                                                                   "method.start_epoch=5"]
                                     if name != "ssgrl" else
                                     recipe(name, "cpu-cached") + [f"method.name={name}"]))
        preset["run"] = built["run"] = None
        assert preset == built, name


# ---- process-wide settings -----------------------------------------------------------------------
def test_a_trainer_leaves_the_process_as_it_found_it(shapes, cache_dir, tmp_path):
    from mlrpl.config import load_config
    from mlrpl.engine.trainer import Trainer
    lib = logging.getLogger("mlrpl")
    handlers, level = list(lib.handlers), lib.level
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    t = Trainer(load_config(None, tiny(shapes, cache_dir, tmp_path / "r", "train.epochs=1",
                                       "train.threads=1", "train.deterministic=true")))
    assert lib.handlers == handlers and lib.level == level
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det
    t.fit()
    assert lib.handlers == handlers and torch.get_num_threads() == threads
    assert "epoch 1/1" in (tmp_path / "r" / "train.log").read_text()


def test_run_record_ties_the_run_to_the_code(shapes, cache_dir, tmp_path):
    import json

    from mlrpl.config import load_config
    from mlrpl.engine.trainer import Trainer
    from mlrpl.methods import method_code_digest
    Trainer(load_config(None, tiny(shapes, cache_dir, tmp_path / "r", "train.epochs=1"))).fit()
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["mlrpl_version"] == mlrpl.__version__
    assert rec["method"] == "pbce" and rec["method_code"] == method_code_digest("pbce")
    assert set(rec) >= {"git_commit", "git_dirty"}
    assert method_code_digest("sst") != method_code_digest("pbce")


def test_environment_paths_are_stored_as_given():
    from mlrpl.config import load_config, resolved
    saved = resolved(load_config("configs/coco128_pbce_cpu.yaml"))
    assert saved["data"]["root"] == "${oc.env:MLRPL_DATA,data}/coco128"
    assert saved["model"]["cache_dir"] == "${oc.env:MLRPL_CACHE,.cache/mlrpl}"
    assert "$" not in saved["run"]["dir"]                     # other interpolations resolved


# ---- the toy method of docs/adding-a-method.md -----------------------------------------------------
def _doc_block(lang: str, first_line: str) -> str:
    text = (REPO / "docs" / "adding-a-method.md").read_text()
    for block in re.findall(rf"```{lang}\n(.*?)```", text, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no {lang} block starting with {first_line!r} in the doc")


def test_toy_method_from_the_doc(shapes, cache_dir, tmp_path, monkeypatch):
    """The doc's file, registered from outside the package, trains through the CLI with the
    doc's preset; the method's state is in the checkpoint."""
    from mlrpl.cli import main
    from mlrpl.engine.checkpoint import load_checkpoint
    pkg = tmp_path / "plugin"
    pkg.mkdir()
    (pkg / "toy.py").write_text(_doc_block("python", "# toy.py"))
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop("toy", None)
    importlib.import_module("toy")
    assert "toy" in list_methods()
    preset = tmp_path / "configs" / "coco128_toy_cpu.yaml"
    preset.parent.mkdir()
    (preset.parent / "coco128_pbce_cpu.yaml").write_text((REPO / "configs" / "coco128_pbce_cpu.yaml").read_text())
    preset.write_text(_doc_block("yaml", "# configs/coco128_toy_cpu.yaml"))
    run = tmp_path / "run"
    args = [a for a in tiny(shapes, cache_dir, run, "train.epochs=1") if not a.startswith("run.dir")]
    assert main(["train", "--config", str(preset), f"run.dir={run}", *args]) == 0
    ck = load_checkpoint(run / "last.pt")
    assert ck["config"]["method"]["name"] == "toy"
    assert float(ck["model"]["method.positives_seen"].sum()) > 0
    assert "toy_temperature" in (run / "summary.csv").read_text()
    assert recipe("toy", "cpu-cached") == ["optim.lr=0.01"]


def test_entry_point_registration(tmp_path, monkeypatch):
    """A package that declares an ``mlrpl.methods`` entry point is found without an import."""
    from mlrpl.methods import base as registry
    site = tmp_path / "site"
    (site / "ep_pkg").mkdir(parents=True)
    (site / "ep_pkg" / "__init__.py").write_text("")
    (site / "ep_pkg" / "m.py").write_text(_doc_block("python", "# toy.py").replace(
        '"toy"', '"toy_ep"').replace("class Toy(", "class ToyEP("))
    info = site / "ep_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mlrpl.methods]\ntoy_ep = ep_pkg.m\n")
    monkeypatch.syspath_prepend(str(site))
    registry._METHODS.refresh()
    assert "toy_ep" in list_methods()
    m = create_method("toy_ep", context())
    assert m.num_classes == 4


def test_readers_register_by_decorator_and_refuse_a_taken_name():
    from mlrpl.data.readers import READERS, register_reader
    from mlrpl.errors import DataError
    assert {"voc2007", "yolo", "coco", "csv", "npy", "vg200", "nuswide"} <= set(READERS.names())
    with pytest.raises(DataError, match="'yolo' is already registered"):
        register_reader("yolo")(lambda root, split, **kw: None)


def test_code_digest_ignores_comments_and_docstrings_not_code(tmp_path):
    from mlrpl.utils.codeinfo import _code_only
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    b.write_text('# a comment\ndef f(x):\n\n    # another\n    return x + 1  # and one\n')
    c.write_text('def f(x):\n    return x + 2\n')
    assert _code_only(a) == _code_only(b) != _code_only(c)


@pytest.mark.parametrize("name", list_methods())
def test_a_method_reads_in_a_few_files_and_one_class_stands_between_it_and_nn_module(name):
    """Composition over inheritance: a method class derives from ``Method`` alone (it names the
    shared functions it takes as hooks in its own class body), and its code is its own module,
    the contract and its building blocks: at most six files of mlrpl/methods."""
    from mlrpl.methods import get_method_class
    cls = get_method_class(name)
    between = [c for c in cls.__mro__[1:cls.__mro__.index(torch.nn.Module)]
               if c.__module__.startswith("mlrpl")]
    assert between == [Method]
    files = sorted(m for m in reachable(cls.__module__) if m.startswith("mlrpl.methods"))
    assert len(files) <= 6, files

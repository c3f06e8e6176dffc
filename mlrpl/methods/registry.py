"""The method registry: one name, one class; the factory; third-party methods.

    @register_method("toy")            # in the method's own file
    class Toy(Method): ...

    create_method("toy", ctx, lr=...)  # a built method; list_methods() lists the names

Methods of the package register when :mod:`mlrpl.methods` imports its modules; methods of other
packages register through the entry-point group ``mlrpl.methods`` (``name = "pkg.module"`` or
``"pkg.module:Class"``), loaded the first time the registry is asked.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from mlrpl.errors import ConfigError
from mlrpl.utils.registry import Registry

# Training regimes a method can declare a recipe for (``Method.recipes``).
REGIMES = {
    "cpu-cached": "frozen EfficientNet-Lite0 maps cached once, trained on a few CPU cores",
    "hcp": "the authors' recipe: ResNet-101 at 448 px, all but the last stage frozen (HCP)",
    "modern": "a fine-tuned backbone with today's augmentation and schedule",
}

_METHODS = Registry("method", "mlrpl.methods", Path(__file__).parent, "mlrpl.methods",
                    ConfigError, skip=("base", "registry"))


def register_method(name: str):
    """Class decorator: register a method under ``name``; a name already taken is an error."""
    def deco(cls):
        for regime in getattr(cls, "recipes", {}):
            if regime not in REGIMES:
                raise ConfigError(f"method {name!r} declares a recipe for unknown regime "
                                  f"{regime!r}; known regimes: {sorted(REGIMES)}")
        _METHODS.add(name, cls)
        cls.name = name
        return cls
    return deco


def list_methods() -> list[str]:
    """The registered method names, sorted."""
    return _METHODS.names()


def get_method_class(name: str):
    return _METHODS.get(name)


def create_method(name: str, ctx, **cfg):
    """A method built from its name, a :class:`~mlrpl.methods.base.MethodContext` and config keys
    (nested keys as dicts): ``create_method("sst", ctx, bank_size=50, trunk={"dim": 256})``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    cls = get_method_class(name)
    try:
        conf = OmegaConf.merge(OmegaConf.structured(cls.Config), {**cfg, "name": name})
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad config for method {name!r}: {e.msg}") from None
    return cls(conf, ctx)


def recipe(name: str, regime: str) -> list[str] | None:
    """The overrides method ``name`` trains with in ``regime`` (None: it declares none)."""
    if regime not in REGIMES:
        raise ConfigError(f"unknown training regime {regime!r}; expected one of {sorted(REGIMES)}")
    r = get_method_class(name).recipes.get(regime)
    return None if r is None else list(r)


def method_code_digest(name: str) -> str:
    """A digest of the code method ``name`` runs (its module and every package module it
    imports): a sweep re-runs a finished run when it changed."""
    from mlrpl.utils.codeinfo import code_digest, modules
    module = get_method_class(name).__module__
    if module not in modules():        # a third-party method: its own file
        import hashlib
        import inspect
        src = inspect.getsource(importlib.import_module(module))
        return hashlib.sha256(src.encode()).hexdigest()[:16]
    return code_digest(module)

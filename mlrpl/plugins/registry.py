"""The plug-in registry (one name, one class) and the checks and factory the config and the
trainer use."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mlrpl.errors import ConfigError
from mlrpl.utils.registry import Registry

_PLUGINS = Registry("plug-in", "mlrpl.plugins", Path(__file__).parent, "mlrpl.plugins",
                    ConfigError, skip=("base", "registry"))


def register_plugin(name: str):
    """Class decorator: register a plug-in under ``name``; a name already taken is an error."""
    def deco(cls):
        _PLUGINS.add(name, cls)
        cls.name = name
        return cls
    return deco


def list_plugins() -> list[str]:
    return _PLUGINS.names()


def get_plugin_class(name: str):
    return _PLUGINS.get(name)


def _entry(item, i: int) -> dict:
    if isinstance(item, str):
        item = {"name": item}
    if isinstance(item, (DictConfig, ListConfig)):
        item = OmegaConf.to_container(item, resolve=True)
    if not isinstance(item, dict) or "name" not in item:
        raise ConfigError(f"bad value for 'plugins[{i}]': {item!r}; expected a mapping with a "
                          f"'name' (one of {list_plugins()})")
    return item


def check_plugins(items) -> list[dict]:
    """The ``plugins`` list with every entry checked against its plug-in's ``Config`` and its
    defaults filled in (what config.yaml records). A name given twice is an error."""
    if items is None:
        return []
    if isinstance(items, (DictConfig, ListConfig)):
        items = OmegaConf.to_container(items, resolve=True)
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"bad value for 'plugins': {items!r}; expected a list of mappings "
                          f"such as [{{name: ema}}]")
    out, seen = [], set()
    for i, item in enumerate(items):
        item = _entry(item, i)
        cls = get_plugin_class(item["name"])
        if item["name"] in seen:
            raise ConfigError(f"plug-in {item['name']!r} is listed twice in 'plugins'")
        seen.add(item["name"])
        try:
            conf = OmegaConf.merge(OmegaConf.structured(cls.Config), item)
        except ConfigKeyError as e:
            raise ConfigError(f"unknown config key '{e.full_key}' for plug-in "
                              f"{item['name']!r} (plugins[{i}]); its keys: "
                              f"{sorted(OmegaConf.structured(cls.Config).keys())}") from None
        except (ValidationError, OmegaConfBaseException) as e:
            raise ConfigError(f"bad value in plugins[{i}] ({item['name']}): {e}") from None
        cls.check(conf)
        out.append(OmegaConf.to_container(conf, resolve=True))
    return out


def build_plugins(items, ctx, model):
    """A :class:`~mlrpl.plugins.base.PluginSet` of the configured plug-ins, set up on ``model``."""
    from mlrpl.plugins.base import PluginSet
    plugins = []
    for item in check_plugins(items):
        cls = get_plugin_class(item["name"])
        plugins.append(cls(OmegaConf.merge(OmegaConf.structured(cls.Config), item), ctx, model))
    return PluginSet(plugins)

"""Plug-ins: method-agnostic additions that compose with any method, the linear baseline included
(sample mixing, ranking losses, distribution thresholds, category-wise fine-tuning, EMA, image
augmentation; each described in docs/methods/baselines.md#plug-ins).

A run lists them under ``plugins:`` in its config, each with its own keys::

    plugins:
      - {name: logicmix, prob: 0.5}
      - {name: ranking, weight: 1.0}
      - {name: ema, decay: 0.99}

(on the command line: ``'plugins=[{name: ema}]'``). They are applied in the order given. Every
plug-in is an ``nn.Module`` whose state lives in buffers, saved under ``plugins`` in the
checkpoint, so that resume is exact; the resolved list (defaults filled in) is in config.yaml and
the names in run.json. The hooks are those of :class:`mlrpl.plugins.base.Plugin`. Plug-ins of
other packages register through the entry-point group ``mlrpl.plugins``, as methods do.
"""
from mlrpl.plugins.registry import (build_plugins, check_plugins, get_plugin_class, list_plugins,
                                    register_plugin)

__all__ = ["build_plugins", "check_plugins", "get_plugin_class", "list_plugins",
           "register_plugin"]

"""Methods: one module per method, registered by name (see :mod:`mlrpl.methods.base`).

A method is an ``nn.Module`` (see :class:`mlrpl.methods.base.Method` for the contract) that turns
backbone feature maps into logits, names its loss terms and keeps its own state. The trainer knows
nothing of any particular method: adding one is a new module here (or in another package, through
the ``mlrpl.methods`` entry point) plus its presets. Building blocks that several methods use live
in :mod:`mlrpl.methods.components`; losses in :mod:`mlrpl.losses`.
"""
from mlrpl.methods.base import (REGIMES, create_method, get_method_class, list_methods,
                                    method_code_digest, recipe, register_method)

__all__ = ["REGIMES", "create_method", "get_method_class", "list_methods", "method_code_digest",
           "recipe", "register_method"]

"""Models: backbones (registry, factory, freeze policies)."""
from mlrpl.models.backbones import (
    FREEZE_POLICIES,
    Backbone,
    Preprocess,
    apply_freeze,
    create_backbone,
    list_backbones,
    load_weight_file,
    register_backbone,
)

__all__ = [
    "FREEZE_POLICIES",
    "Backbone",
    "Preprocess",
    "apply_freeze",
    "create_backbone",
    "list_backbones",
    "load_weight_file",
    "register_backbone",
]

"""Models: backbones (registry, factory, freeze policies) and the SARL trunk."""
from mlrpl.models.backbones import *  # noqa: F401,F403
from mlrpl.models.backbones import __all__  # noqa: F401

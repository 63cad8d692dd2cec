"""Model families and presets for residual-connection ablations."""
from .registry import (UnknownModelError, count_params, create_model, describe, get_config,
                       level_params, list_families, list_models, list_presets,
                       register_family, register_model, variant_params)
from . import mlp as _mlp, resnet as _resnet  # noqa: F401  (registers the families)
from .resnet import resnet_layout

__all__ = ["UnknownModelError", "count_params", "create_model", "describe", "get_config",
           "level_params", "list_families", "list_models", "list_presets", "register_family",
           "register_model", "resnet_layout", "variant_params"]

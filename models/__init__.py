"""Model families and presets for residual-connection ablations.

Importing the package registers the built-in families through their configs
(``mlp_config``, ``resnet_config``), which import no torch: the factor registry and the
report read the levels they declare without it. The networks (``mlp``, ``resnet``) are
imported when a config builds one. ``models/interface.py`` says what a family provides.

Plug-ins: ``RESABLATE_PLUGINS=pkg.module,other.module`` names modules imported here, at
the end of this package's import, so a family they register exists in every process
that imports ``models``: the sweep, its Ray workers (which inherit the variable; the
runner passes ``RESABLATE_*`` to a cluster) and ``python -m analysis``. A plug-in
imports only ``models`` (never ``ablations``/``analysis``) and must be importable
there (on ``PYTHONPATH``). A plug-in that imports torch at its top makes the report
process load torch too; the built-in families keep their configs torch-free for that.
"""
import importlib
import os

from .registry import (UnknownModelError, count_params, create_model, describe,
                       factor_families, family_config, family_factors, get_config,
                       level_params, list_families, list_models, list_presets,
                       register_family, register_model, unregister, variant_params)
from . import mlp_config as _mlp_config, resnet_config as _resnet_config  # noqa: F401
from .levels import FactorLevels
from .resnet_config import resnet_layout

PLUGINS_ENV = "RESABLATE_PLUGINS"


def load_plugins(names: str | None = None) -> list[str]:
    """Import the plug-in modules named in ``names`` (comma-separated; default: the
    ``RESABLATE_PLUGINS`` variable); returns their names. An import error propagates,
    naming the variable: a sweep must not run without a family it was asked for."""
    spec = os.environ.get(PLUGINS_ENV, "") if names is None else names
    loaded = []
    for name in (n.strip() for n in spec.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"{PLUGINS_ENV}: cannot import plug-in {name!r} ({e})") from e
        loaded.append(name)
    return loaded


__all__ = ["FactorLevels", "PLUGINS_ENV", "UnknownModelError", "count_params",
           "create_model", "describe", "factor_families", "family_config", "family_factors",
           "get_config", "level_params", "list_families", "list_models", "list_presets",
           "load_plugins", "register_family", "register_model", "resnet_layout",
           "unregister", "variant_params"]

load_plugins()

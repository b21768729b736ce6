"""Config helpers: build objects from config nodes, and give each run a stable id."""
from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

from hydra._internal.utils import _locate
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recexp.errors import ConfigError, RecexpError

# Keys that say where output goes or how it is shown (at any depth); they do not change a run's result.
NON_RESULT_KEYS = frozenset({"logger", "cache_dir", "progress"})


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with recexp's own errors surfaced as they are, and unknown keys named."""
    check_keys(node, kwargs)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, RecexpError):
            raise cause from None
        raise ConfigError(f"Could not build {node.get('_target_', 'a component')}: {err}") from err


def check_keys(node: DictConfig, runtime: dict[str, Any]) -> None:
    """A ConfigError naming any key of ``node`` that its ``_target_`` does not take, with the keys it does."""
    try:
        target = _locate(str(node.get("_target_")))
        parameters = inspect.signature(target).parameters
    except (ImportError, ValueError, TypeError):
        return  # hydra reports a missing target itself
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(k for k in node if not str(k).startswith("_") and k not in parameters and k not in runtime)
    if unknown:
        name = str(node.get("_target_")).rsplit(".", 1)[-1]
        raise ConfigError(
            f"{', '.join(unknown)}: not a setting of {name}; it takes {', '.join(p for p in parameters if p not in runtime)}."
        )


def config_id(cfg: DictConfig) -> str:
    """sha256 (first 16 hex digits) of the resolved config without output/display keys."""
    blob = json.dumps(_without_display_keys(OmegaConf.to_container(cfg, resolve=True)), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _without_display_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_display_keys(v) for k, v in node.items() if k not in NON_RESULT_KEYS}
    if isinstance(node, list):
        return [_without_display_keys(v) for v in node]
    return node

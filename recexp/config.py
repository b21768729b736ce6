"""Config helpers: build objects from config nodes, and give each run a stable id."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recexp.errors import ConfigError, RecexpError

# Keys that say where output goes or how it is shown (at any depth); they do not change a run's result.
NON_RESULT_KEYS = frozenset({"logger", "cache_dir", "progress"})


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with recexp's own errors surfaced as they are."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, RecexpError):
            raise cause from None
        raise ConfigError(f"Could not build {node.get('_target_', 'a component')}: {err}") from err


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

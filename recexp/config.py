"""Config helpers: build objects from config nodes, and give each run a stable id."""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
from typing import Any

from hydra._internal.utils import _locate, get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException, OverrideParseException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
        what = f"{type(cause).__name__}: {cause}" if cause is not None else _first_line(err)
        raise ConfigError(f"Could not build {node.get('_target_', 'a component')} from {_key(node)}: {what}. "
                          f"Check the {_key(node)} settings.") from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or _key(node)}: {_first_line(err)}. Fix that setting.") from err


def check_complete(cfg: DictConfig) -> None:
    """A ConfigError naming every mandatory (``???``) setting left unset, or the first that cannot be resolved."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key} cannot be resolved: {_first_line(err)}. Set {err.full_key} on the command "
                          "line or fix what it refers to.") from None
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set: add {' '.join(f'{k}=...' for k in missing)} to the command.")


def check_overrides(argv: list[str]) -> None:
    """Exit 1 with one line naming an override Hydra cannot parse, and how to quote it from a shell."""
    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        overrides = parser.parse_known_args(argv)[0].overrides
    except (argparse.ArgumentError, SystemExit):
        return  # Hydra reports bad flags itself
    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except OverrideParseException as err:
            print(f"error: cannot parse the override {override} ({_first_line(err)}). {_quoting_hint(override)}",
                  file=sys.stderr)
            sys.exit(1)


def _quoting_hint(override: str) -> str:
    key, _, value = override.partition("=")
    if any(c in value for c in "{}()'\" $"):
        bare = value.strip("\"'")
        return f"Quote the value for Hydra inside shell quotes (the shell removes one layer), e.g. '{key}=\"{bare}\"'."
    return "See https://hydra.cc/docs/advanced/override_grammar/basic/ for the override grammar."


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _key(node: DictConfig) -> str:
    return node._get_full_key(None) or "the config"


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
        takes = ", ".join(p for p in parameters if p not in runtime) or "no settings"
        raise ConfigError(f"{', '.join(unknown)}: not a setting of {name}; it takes {takes}. Remove or rename it.")


def config_id(cfg: DictConfig) -> str:
    """sha256 (first 16 hex digits) of the resolved config without output/display keys."""
    blob = json.dumps(_without_display_keys(record_config(cfg)), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def record_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data; as written where it cannot be resolved (:func:`check_complete` says why)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def _without_display_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_display_keys(v) for k, v in node.items() if k not in NON_RESULT_KEYS}
    if isinstance(node, list):
        return [_without_display_keys(v) for v in node]
    return node

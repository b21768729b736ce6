"""Run records and loggers: ``results.json`` written atomically, and W&B (the only module importing wandb)."""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from recexp.files import atomic_file

PACKAGES = ("recexp", "torch", "numpy", "scipy", "pandas", "recbole", "transformers", "peft", "hydra-core", "wandb")


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path``, flush it to disk and rename it over ``path``."""
    with atomic_file(path) as staged:
        staged.write_text(json.dumps(payload, indent=2, default=_jsonable), encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_sha() -> str | None:
    """Commit of the recexp checkout, with ``-dirty`` when it has uncommitted changes; ``None`` for an installed
    package (site-packages may lie inside some other repository, whose commit says nothing of recexp's code)."""
    root = Path(__file__).resolve().parent.parent
    try:
        top, sha = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=root, capture_output=True,
                                  text=True, check=True).stdout.split()
        if Path(top).resolve() != root:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty.stdout.strip() else "")


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"test": {"cold": {"ndcg@10": x}}}`` -> ``{"test/cold/ndcg@10": x}``."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def finish_logger(logger: Any, record: Mapping[str, Any]) -> None:
    """Close ``logger``; a run that did not end ``ok`` first puts its status and error text in the summary."""
    if record["status"] != "ok":
        logger.summary({"status": record["status"], "error": record["error"]})
    logger.finish(0 if record["status"] == "ok" else 1)


class NullLogger:
    """``logger=none``: records nothing."""

    def __init__(self, **settings: Any):
        del settings  # run_config, group, tags ...: accepted so presets may set them whatever the logger

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger:
    """Weights & Biases run; offline unless an API key is set or ``mode`` says otherwise."""

    def __init__(
        self,
        project: str = "recexp",
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        mode: str | None = None,  # online | offline | disabled; None: online only with WANDB_API_KEY
        save_dir: str | None = None,  # folder for the wandb/ run files (the run dir by default)
        run_config: Mapping[str, Any] | None = None,  # the resolved run config, shown in W&B
    ):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            group=group,
            name=name,
            tags=list(tags or []),
            mode=mode or default_mode(),
            dir=save_dir,
            config=dict(run_config or {}),
            reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        self.run.define_metric("continual/*", step_metric="update")  # continual runs: one point per update

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.run.log(dict(metrics), step=step)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        self.run.summary.update(flatten(metrics))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({key: self._wandb.Table(columns=columns, data=rows, allow_mixed_types=True)})  # n/c among numbers

    def log_images(self, images: Mapping[str, Path]) -> None:
        self.run.log({key: self._wandb.Image(str(path)) for key, path in images.items()})

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def default_mode() -> str:
    """``online`` when W&B credentials are present (env or ``WANDB_MODE``), else ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"

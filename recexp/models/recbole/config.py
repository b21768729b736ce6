"""What RecBole is told and what it reports back: its model classes by name, recexp's trainer settings as
RecBole config keys (refusing those it cannot honour), the settings its trainer ran with, and its Config
class without ``sys.argv`` or ``CUDA_VISIBLE_DEVICES``."""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import TYPE_CHECKING, Any

import torch

from recexp.errors import ConfigError
from recexp.evaluate import parse_metric
from recexp.models.recbole import compat
from recexp.train import TrainerConfig

if TYPE_CHECKING:
    from recbole.config import Config

# recexp ranking metric -> RecBole metric class, for early stopping on trainer.valid_metric
VALID_METRICS = {"recall": "Recall", "precision": "Precision", "hit": "Hit", "mrr": "MRR", "ndcg": "NDCG", "map": "MAP"}
# TrainerConfig field -> RecBole config key (None in TrainerConfig keeps RecBole's default)
TRAINER_KEYS = {
    "max_epochs": "epochs",
    "valid_every": "eval_step",
    "patience": "stopping_step",  # RecBole stops after stopping_step + 1 missed validations (see trainer_values)
    "batch_size": "train_batch_size",
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
}
# TrainerConfig field -> (values RecBole's trainer can honour, why it cannot honour others)
UNSUPPORTED = {
    "warmup_ratio": ((0, 0.0), "its trainer has no learning-rate schedule; leave it null or 0"),
    "schedule": (("constant",), "its trainer holds the learning rate constant; leave it null or constant"),
    "grad_accum": ((1,), "its trainer steps the optimiser after every batch; leave it null or 1 (raise batch_size)"),
    "mixed_precision": (("no",), "recexp runs its trainer in full precision; leave it null or no"),
}
_PACKAGES = ("general_recommender", "sequential_recommender")
RECBOLE_PATIENCE = 11  # RecBole's default stopping_step (10): it stops at the 11th validation without improvement


def available_models() -> dict[str, dict[str, type]]:
    """RecBole's model classes by name, per package: ``{"general": {...}, "sequential": {...}}``."""
    compat.apply()
    from recbole.model.abstract_recommender import AbstractRecommender

    models = {}
    for package in _PACKAGES:
        module = importlib.import_module(f"recbole.model.{package}")
        models[package.split("_")[0]] = {
            name: cls
            for name, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, AbstractRecommender) and cls.__module__.startswith(f"{module.__name__}.")
        }
    return models


def model_class(name: str) -> type:
    """The RecBole class called ``name`` (case-insensitive), or a ConfigError listing the choices."""
    models = available_models()
    by_lower = {n.lower(): cls for group in models.values() for n, cls in group.items()}
    if name.lower() not in by_lower:
        choices = " or ".join(f"a {kind} model ({', '.join(sorted(group))})" for kind, group in models.items())
        raise ConfigError(f"Unknown RecBole model {name!r}. Set model.name to {choices}.")
    return by_lower[name.lower()]


@functools.cache
def config_class() -> type:
    """RecBole's Config without reading ``sys.argv`` and without setting ``CUDA_VISIBLE_DEVICES``; built on
    first use, and found as this module's ``_Config`` by the pickles of RecBole's checkpoints (they hold the config)."""
    from recbole.config import Config

    class _Config(Config):
        def _load_cmd_line(self) -> dict:
            return {}

        def _init_device(self) -> None:
            self.final_config_dict.update(
                single_spec=True, local_rank=0, device=torch.device(self.final_config_dict["device"])
            )

    _Config.__qualname__ = "_Config"
    return _Config


def __getattr__(name: str) -> Any:
    if name == "_Config":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trainer_values(trainer: TrainerConfig, model: str) -> dict[str, Any]:
    """RecBole config entries for ``trainer``; a ConfigError names the first value RecBole cannot honour."""
    for field, (allowed, why) in UNSUPPORTED.items():
        value = getattr(trainer, field)
        if value is not None and value not in allowed:
            raise ConfigError(f"trainer.{field}={value!r} cannot be honoured by RecBole {model}: {why}.")
    metric, k = parse_metric(trainer.valid_metric)
    if metric.name not in VALID_METRICS:
        raise ConfigError(
            f"trainer.valid_metric={trainer.valid_metric!r} cannot be honoured by RecBole {model}: it early-stops "
            f"on ranking metrics only; choose {', '.join(VALID_METRICS)} at some K (e.g. ndcg@10)."
        )
    name = VALID_METRICS[metric.name]
    values: dict[str, Any] = {"metrics": [name], "topk": [k], "valid_metric": f"{name}@{k}"}
    for ours, theirs in TRAINER_KEYS.items():
        value = getattr(trainer, ours)
        if value is not None:
            values[theirs] = value
    if trainer.patience is not None or trainer.valid_every is not None:
        # patience counts epochs (rounded up to whole validations); RecBole counts missed validations, one more than it says
        values["stopping_step"] = -(-trainer.pick("patience", RECBOLE_PATIENCE) // trainer.pick("valid_every", 1)) - 1
    return values


def used_settings(trainer: Any, config: Config) -> dict[str, Any]:
    """What RecBole's trainer ran with, in TrainerConfig's names (its trainer holds the final config's
    values, except that memory-based models get one epoch)."""
    return {
        "max_epochs": trainer.epochs,
        "valid_every": trainer.eval_step,
        "patience": (trainer.stopping_step + 1) * trainer.eval_step,
        "batch_size": config["train_batch_size"],
        "lr": trainer.learning_rate,
        "weight_decay": trainer.weight_decay,
        "valid_metric": trainer.valid_metric,
    }


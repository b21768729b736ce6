"""RecBole's general and sequential models as recexp :class:`~recexp.interfaces.Recommender` s.

``fit`` writes the split's train part and valid positives as RecBole benchmark files (tokens are
recexp's internal ids), lets RecBole train with its own trainer and early stopping on the valid
file, and reloads the best checkpoint. ``score`` asks the trained model for full-ranking scores and
reorders them into recexp item ids; ``score_pairs`` asks it for single (user, item) scores.
Everything RecBole writes (data files, checkpoints, its log, tensorboard events) stays under
``run_dir/recbole``; the cwd and the root logger are left alone. This is the only module, with
:mod:`recexp.models.recbole.compat`, that imports recbole; it does so inside its functions, after
:func:`compat.apply` (some repairs must be in place before RecBole's modules are first imported).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import yaml

from recexp.errors import ConfigError, DataError, TrainingError
from recexp.evaluate import parse_metric
from recexp.evaluate.pointwise import scores_read_off
from recexp.interfaces import TRAIN, FitContext, RecommenderBase, Split
from recexp.models.recbole import compat
from recexp.train import TrainerConfig, torch_threads

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.data.interaction import Interaction
    from recbole.model.abstract_recommender import AbstractRecommender

log = logging.getLogger(__name__)
RECBOLE_LOG = logging.getLogger(compat.LOGGER)  # where RecBole's modules log once repaired
DATASET = "recexp"  # RecBole dataset name: files are recexp.{train,valid}.inter, recexp.item, recexp.user
VALID = "valid"  # the stage whose positives RecBole early-stops on
PREDICT_ROWS = 1 << 18  # (user, item) pairs per predict() call
# recexp ranking metric -> RecBole metric class, for early stopping on trainer.valid_metric
VALID_METRICS = {"recall": "Recall", "precision": "Precision", "hit": "Hit", "mrr": "MRR", "ndcg": "NDCG", "map": "MAP"}
# TrainerConfig field -> RecBole config key (None in TrainerConfig keeps RecBole's default)
TRAINER_KEYS = {
    "max_epochs": "epochs",
    "patience": "stopping_step",  # RecBole stops after stopping_step + 1 misses: patience - 1
    "batch_size": "train_batch_size",
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
}
# TrainerConfig field -> (values RecBole's trainer can honour, why it cannot honour others)
UNSUPPORTED = {
    "warmup_ratio": ((0, 0.0), "its trainer has no learning-rate schedule; leave it null or 0"),
    "grad_accum": ((1,), "its trainer steps the optimiser after every batch; leave it null or 1 (raise batch_size)"),
    "mixed_precision": (("no",), "recexp runs its trainer in full precision; leave it null or no"),
}
_PACKAGES = ("general_recommender", "sequential_recommender")


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
def _config_class() -> type:
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
        return _config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _NoOptimizer:
    """What RecBole's trainer calls on its optimiser, doing nothing: for the models it fits without gradients."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self, closure: Any = None) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}


@functools.cache
def _without_optimizer(trainer: type) -> type:
    """``trainer`` holding a :class:`_NoOptimizer`. RecBole builds a torch optimiser even for the models that
    only count or solve (Pop, ItemKNN, EASE ...), and torch's first optimiser imports torch._dynamo (1.1-1.5 s)."""

    class NoOptimizerTrainer(trainer):
        def _build_optimizer(self, **kwargs: Any) -> _NoOptimizer:
            return _NoOptimizer()

    return NoOptimizerTrainer


class RecBoleRecommender(RecommenderBase):
    """Any RecBole general or sequential model (``name`` is its class, e.g. ``BPR``, ``SASRec``).

    A second ``fit`` continues from the weights of the first (continual updates); a fresh instance
    starts from scratch. General models score from what they learned on train, as in RecBole (later parts are not folded
    in at later stages); sequential models read the user's ``split.history(stage)``. ``params``
    override RecBole's hyper-parameters (its config keys) and win over ``trainer``, whose max_epochs,
    patience, batch_size, lr, weight_decay and valid_metric (a ranking metric) map to RecBole's
    epochs, stopping_step, train_batch_size, learning_rate, weight_decay and valid_metric; ``None``
    keeps RecBole's defaults. Trainer values RecBole cannot honour are refused on construction.
    """

    def __init__(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        trainer: TrainerConfig | None = None,
        cpu_threads: int | None = 1,  # torch threads while fitting on CPU (None: torch's default)
    ):
        compat.apply()
        from recbole.utils import ModelType  # once repaired

        self.cpu_threads = cpu_threads
        self.model_class = model_class(name)
        self.params = dict(params or {})
        self.trainer = trainer or TrainerConfig()
        self.trainer_values = trainer_values(self.trainer, self.name)
        self.sequential = self.model_class.type == ModelType.SEQUENTIAL
        self.gradient_free = self.model_class.type == ModelType.TRADITIONAL  # counts or solves: no optimiser
        self._model: AbstractRecommender | None = None
        self._checkpoint: Path | None = None
        self._used: dict[str, Any] = {}
        self._stages: tuple[str, ...] = ()

    # --- Recommender

    @property
    def name(self) -> str:
        return self.model_class.__name__

    def fit(self, split: Split, ctx: FitContext) -> None:
        from recbole.data import create_dataset, data_preparation
        from recbole.utils import get_trainer, init_seed

        valid_positives(split)
        folder = Path(ctx.run_dir).resolve() / "recbole"
        folder.mkdir(parents=True, exist_ok=True)
        threads = self.cpu_threads if ctx.device.type == "cpu" else None
        with _run_log(folder / "recbole.log"), torch_threads(threads):
            config = _config_class()(model=self.model_class, dataset=DATASET, config_dict=self._config_dict(split, ctx, folder))
            RECBOLE_LOG.info(str(config))
            max_len = config["MAX_ITEM_LIST_LENGTH"] if self.sequential else 0
            write_benchmark(split, folder / DATASET, max_len)
            init_seed(config["seed"], config["reproducibility"])
            dataset = create_dataset(config)
            train_data, valid_data, _ = data_preparation(config, dataset)
            if config["train_neg_sample_args"]["distribution"] == "popularity":
                count_training_popularity(train_data._sampler, train_data._dataset)
            init_seed(config["seed"], config["reproducibility"])
            model = self.model_class(config, train_data._dataset).to(config["device"])
            if self._model is not None:  # a later fit (a continual update) continues from the last weights
                self._continue(model, dataset, split)
            trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
            trainer = (_without_optimizer(trainer_class) if self.gradient_free else trainer_class)(config, model)
            # checkpoint names have one-second resolution: an earlier fit's file of the same name must not
            # pass for this fit's best when this one saves none
            Path(trainer.saved_model_file).unlink(missing_ok=True)
            best = self._train(trainer, train_data, valid_data, ctx)
        self._used = used_settings(trainer, config) | {"epochs_run": len(trainer.train_loss_dict), "best_epoch": best}
        _load_best(model, trainer.saved_model_file, config["device"])
        self._checkpoint = Path(trainer.saved_model_file)
        self._model = model.eval()
        self._index(dataset, split, max_len, config["device"])

    def attach(self, split: Split, device: torch.device) -> None:
        """Score ``split``'s stages from now on without training on it (same users and items as the fit)."""
        self._stages = tuple(split.stages)
        if self.sequential:
            self._histories = {
                s: history_tensors(split.history(s), split.n_users, self._max_len, self._item_ids) for s in split.stages
            }

    def effective(self) -> dict[str, Any]:
        """The trainer settings the last fit ran with, read back from RecBole, plus ``epochs_run`` and
        ``best_epoch`` (-1: no validation improved); {} before fit."""
        return dict(self._used)

    def cost_extras(self) -> dict[str, int]:
        """Size of RecBole's best-validation checkpoint (run_dir/recbole/checkpoints), the reusable artifact."""
        saved = self._checkpoint is not None and self._checkpoint.is_file()
        return {"artifact_bytes": self._checkpoint.stat().st_size if saved else 0}

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users: [B] recexp ids -> [B, n_items] scores in recexp item order."""
        interaction = self._interaction(users.cpu(), stage)
        with torch.no_grad():
            scores = self._all_item_scores(interaction.to(self._device), len(users))
        return scores[:, self._item_columns].to(users.device)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [N], items [N] recexp ids -> [N] scores of those pairs, by RecBole's ``predict``."""
        from recbole.data.interaction import Interaction

        interaction = self._interaction(users.cpu(), stage)
        interaction.update(Interaction({self._model.ITEM_ID: self._item_ids[items.cpu()]}))
        chunks = []
        with torch.no_grad():
            for start in range(0, len(users), PREDICT_ROWS):
                part = interaction[start : start + PREDICT_ROWS].to(self._device)
                try:
                    chunks.append(self._model.predict(part).view(-1))
                except NotImplementedError:  # a model that only ranks all items at once
                    return self._pairs_from_ranking(users, items, stage)
        return torch.cat(chunks).to(users.device) if chunks else torch.zeros(0, device=users.device)

    def parameter_counts(self) -> tuple[int, int]:
        if self._model is None:
            return 0, 0
        params = list(self._model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def reweight(self, method: str, alpha: float) -> None:
        """``tail=reweight``: popularity negatives only (RecBole's losses take no per-example weights)."""
        if method != "negatives":
            raise ConfigError(
                f"tail=reweight tail.method={method} cannot be honoured by the RecBole model {self.name}: RecBole's "
                "losses take no per-example weights. Use tail.method=negatives (RecBole's popularity sampler) or tail=rerank."
            )
        self.popularity_negatives(alpha)

    def popularity_negatives(self, alpha: float) -> None:
        """Draw training negatives with probability proportional to popularity ** ``alpha`` (``tail=reweight
        tail.method=negatives``), through RecBole's own sampler; a ConfigError for a model that samples none."""
        sampled = not self.gradient_free and not (self.sequential and self._sequential_sampling())
        if not sampled or self._loss_type() == "CE" or not reads_sampled_negatives(self.model_class):  # CE: over all items
            raise ConfigError(
                f"tail=reweight tail.method=negatives cannot be honoured by the RecBole model {self.name}: it trains "
                "without sampled negatives. Use tail=rerank, or a model trained with negatives (bpr, lightgcn, neumf ...)."
            )
        self.params["train_neg_sample_args"] = {
            "distribution": "popularity", "alpha": float(alpha), "sample_num": 1, "dynamic": False, "candidate_num": 0,
        }

    # --- helpers

    def _config_dict(self, split: Split, ctx: FitContext, folder: Path) -> dict[str, Any]:
        inter_cols = ["user_id", "item_id", *_float_columns(split), *(["item_id_list"] if self.sequential else [])]
        values: dict[str, Any] = {
            "data_path": str(folder),
            # RecBole wants a test file too (recexp evaluates every stage itself); it also fixes
            # RecBole's numbering of items first seen there, so the final stage's positives fill it
            "benchmark_filename": ["train", "valid", "test"],
            "load_col": {"inter": inter_cols, "item": ["item_id"], "user": ["user_id"]},
            "seed": ctx.seed,
            "reproducibility": True,
            "device": str(ctx.device),
            "use_gpu": ctx.device.type == "cuda",
            "checkpoint_dir": str(folder / "checkpoints"),
            "show_progress": ctx.progress and self.trainer.progress,
            # benchmark files fix the split; RecBole still checks that sequential models ask for time order
            "eval_args": {"group_by": "user", "order": "TO" if self.sequential else "RO", "mode": "full"},
            **self.trainer_values,
        }
        if self.sequential:
            values |= {"alias_of_item_id": ["item_id_list"], **self._sequential_sampling()}
        if self.gradient_free:  # no gradients: sampled negatives would only
            values["train_neg_sample_args"] = None  # be counted by Pop as if they were interactions
        return values | self.params

    def _sequential_sampling(self) -> dict[str, Any]:
        """Sequential models trained with cross-entropy over all items take no negative samples (unless they
        declare an input type: RecBole then samples them, e.g. for SINE, whose CE loss reads none)."""
        if hasattr(self.model_class, "input_type"):
            return {}
        return {"train_neg_sample_args": None} if self._loss_type() == "CE" else {}

    def _loss_type(self) -> str | None:
        """``loss_type`` as RecBole will read it: the override, else the model's own defaults file."""
        import recbole

        defaults_file = Path(recbole.__file__).parent / "properties" / "model" / f"{self.name}.yaml"
        defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.is_file() else {}
        return self.params.get("loss_type", (defaults or {}).get("loss_type"))

    def _train(self, trainer: Any, train_data: Any, valid_data: Any, ctx: FitContext) -> int:
        """RecBole's fit; each validation logs ``train/loss`` and ``valid/<metric@k>`` at step=epoch.

        Returns the best validation epoch (-1 when none improved).
        """
        key = f"valid/{trainer.valid_metric}"
        best_epoch = -1

        def on_epoch(epoch: int, valid_score: float) -> None:
            nonlocal best_epoch
            loss = float(trainer.train_loss_dict[epoch])
            if not math.isfinite(loss):
                raise _diverged(self.name, f"{loss} at epoch {epoch}")
            if trainer.cur_step == 0:  # RecBole's early stopping just counted this epoch as the best
                best_epoch = epoch
            ctx.logger.log({"train/loss": loss, key: float(valid_score)}, step=epoch)

        try:
            trainer.fit(train_data, valid_data, saved=True, show_progress=ctx.progress, callback_fn=on_epoch)
        except ValueError as err:
            if "nan" in str(err).lower():
                raise _diverged(self.name, "NaN") from err
            raise
        finally:
            trainer.tensorboard.close()
        return best_epoch

    def _index(self, dataset: Any, split: Split, max_len: int, device: torch.device) -> None:
        """recexp id -> RecBole id maps (tokens are str(recexp id)) and, if sequential, each stage's histories."""
        self._user_ids, self._item_ids = recbole_ids(dataset, split)
        self._device = torch.device(device)
        self._item_columns = self._item_ids.to(self._device)
        self._max_len, self._histories = max_len, {}
        self.attach(split, device)

    def _continue(self, model: AbstractRecommender, dataset: Any, split: Split) -> None:
        """Start ``model`` from the previous fit's weights. RecBole numbers users and items in order of
        first appearance in the interaction files, so each fit numbers them differently: every tensor
        axis of length n_items (n_users) is reordered from the old numbering to the new one. Tensors
        among RecBole's other parameters (e.g. Pop's counts) carry over; anything else is rebuilt from
        the new data (e.g. ItemKNN's similarities)."""
        new_users, new_items = recbole_ids(dataset, split)
        n_users, n_items = dataset.user_num, dataset.item_num  # RecBole's counts, its padding id 0 included
        if n_users == n_items:
            raise ConfigError(
                f"RecBole {self.name} cannot continue training here: users and items are equally many "
                f"({n_items}), so their tables cannot be told apart. Use task.update=full_retrain or window."
            )
        orders = {n_items: _old_order(self._item_ids, new_items, n_items),
                  n_users: _old_order(self._user_ids, new_users, n_users)}
        state = {k: _reorder(v, orders) for k, v in self._model.state_dict().items()}
        model.load_state_dict(state)
        carried = {k: _reorder(v, orders) for k, v in self._model.other_parameter().items() if torch.is_tensor(v)}
        model.load_other_parameter(carried)

    def _interaction(self, users: torch.Tensor, stage: str) -> Interaction:
        """RecBole's input for CPU ``users`` [B] at ``stage``: user ids, and the histories if sequential."""
        from recbole.data.interaction import Interaction

        if self._model is None:
            raise TrainingError(f"RecBole {self.name} must be fit before it can score.")
        if stage not in self._stages:
            raise ConfigError(
                f"RecBole {self.name} cannot score stage {stage!r}: the split it was fit on has stages "
                f"{', '.join(self._stages)}; score one of those."
            )
        fields = {self._model.USER_ID: self._user_ids[users]}
        if self.sequential:
            sequences, lengths = self._histories[stage]
            fields |= {self._model.ITEM_SEQ: sequences[users], self._model.ITEM_SEQ_LEN: lengths[users]}
        return Interaction(fields)

    def _all_item_scores(self, interaction: Interaction, n_rows: int) -> torch.Tensor:
        """interaction of B rows -> [B, n_recbole_items] (column 0 is RecBole's padding item)."""
        try:
            return self._model.full_sort_predict(interaction).view(n_rows, -1)
        except NotImplementedError:  # e.g. NeuMF: score every (row, item) pair with predict()
            from recbole.data.interaction import Interaction

            n_items = self._model.n_items
            items = torch.arange(n_items, device=self._device)
            step = max(1, PREDICT_ROWS // n_items)
            chunks = []
            for start in range(0, n_rows, step):
                part = interaction[start : start + step]
                pairs = part.repeat_interleave(n_items)
                pairs.update(Interaction({self._model.ITEM_ID: items.repeat(len(part))}))
                chunks.append(self._model.predict(pairs).view(len(part), n_items))
            return torch.cat(chunks)

    def _pairs_from_ranking(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """users [N], items [N] -> [N] scores read off full rankings, a chunk of distinct users at a time."""
        step = max(1, PREDICT_ROWS // self._model.n_items)
        scores = scores_read_off(self.score, users.cpu().numpy(), items.cpu().numpy(), stage, self._device, step)
        return torch.as_tensor(scores, dtype=torch.float32, device=users.device)


def recbole_ids(dataset: Any, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """RecBole's ids of recexp's users [n_users] and items [n_items] (RecBole tokens are str(recexp id))."""
    users = dataset.field2token_id[dataset.uid_field]
    items = dataset.field2token_id[dataset.iid_field]
    return (torch.as_tensor([users[str(u)] for u in range(split.n_users)]),
            torch.as_tensor([items[str(i)] for i in range(split.n_items)]))


def _old_order(old_ids: torch.Tensor, new_ids: torch.Tensor, size: int) -> torch.Tensor:
    """[size] index: new RecBole id -> the old RecBole id of the same recexp id (0, padding, stays 0)."""
    order = torch.zeros(size, dtype=torch.long)
    order[new_ids] = old_ids
    return order


def _reorder(tensor: torch.Tensor, orders: dict[int, torch.Tensor]) -> torch.Tensor:
    """``tensor`` with every axis whose length has an entry in ``orders`` re-indexed by it."""
    for axis, length in enumerate(tensor.shape):
        if length in orders:
            tensor = tensor.index_select(axis, orders[length].to(tensor.device))
    return tensor.clone()


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
            values[theirs] = value - 1 if ours == "patience" else value
    return values


def used_settings(trainer: Any, config: Config) -> dict[str, Any]:
    """What RecBole's trainer ran with, in TrainerConfig's names (its trainer holds the final config's
    values, except that memory-based models get one epoch)."""
    return {
        "max_epochs": trainer.epochs,
        "patience": trainer.stopping_step + 1,
        "batch_size": config["train_batch_size"],
        "lr": trainer.learning_rate,
        "weight_decay": trainer.weight_decay,
        "valid_metric": trainer.valid_metric,
    }


def final_ranked_stage(split: Split) -> str:
    """``test`` when the split has it, else its last stage with ranking targets."""
    ranked = [name for name, stage in split.stages.items() if stage.positives is not None]
    return "test" if "test" in ranked else ranked[-1]


def valid_positives(split: Split) -> pd.DataFrame:
    """The positives of the split's valid stage, which RecBole early-stops on (a ConfigError if none)."""
    if VALID not in split.stages or split.positives(VALID) is None:
        raise ConfigError(
            f"RecBole early-stops on the ranking targets of a {VALID!r} stage, and this split has none "
            f"(stages: {', '.join(split.stages)}); choose a scenario with a valid stage (random, temporal, cold_item)."
        )
    return split.positives(VALID)


def reads_sampled_negatives(model_class: type) -> bool:
    """Whether the model's loss reads RecBole's sampled negatives (or the 0 labels of sampled pointwise rows).
    RecBole declares no such flag, and the autoencoders (MultiVAE, RecVAE, CDAE ...) train on each user's
    whole history row whatever their input type says, so the loss's source is read."""
    try:
        source = inspect.getsource(model_class.calculate_loss)
    except (OSError, TypeError):  # no source to read: take the model at its word
        return True
    return "NEG_ITEM_ID" in source or "LABEL" in source


def count_training_popularity(sampler: Any, train: Any) -> None:
    """Rebuild ``sampler``'s popularity table from the training interactions alone. RecBole's samplers count
    an item's interactions in every benchmark file, valid and test included, so the items a user is tested
    on (cold items among them) would be drawn as negatives by their future popularity."""
    items = train.inter_feat[train.iid_field].numpy()
    pool = len(np.unique(items))
    full = [user for user, used in enumerate(sampler.used_ids) if len(used) >= pool]
    if full:  # RecBole's sampler would redraw such a user's negative for ever
        raise DataError(
            f"tail=reweight tail.method=negatives draws negatives among the {pool} items with training interactions, "
            f"and {len(full)} user(s) (RecBole ids {full[:5]}) trained on every one of them, leaving none to draw. "
            "Use tail.method=weight, or a dataset where no user has rated every item."
        )
    sampler._get_candidates_list = lambda: list(items)
    sampler._build_alias_table()


def write_benchmark(split: Split, folder: Path, max_len: int = 0) -> None:
    """Write ``recexp.train.inter`` (``split.train``), ``recexp.valid.inter`` (the valid stage's positives),
    ``recexp.test.inter`` (the final stage's positives), ``recexp.item`` and ``recexp.user`` into ``folder``.

    Tokens are recexp's internal ids. The item/user files list every id, so ids without training
    interactions (cold items) still get a RecBole id. With ``max_len > 0`` (sequential models) each
    row carries ``item_id_list``: train rows are every prefix -> next item of a user's training
    sequence; valid/test rows are the user's stage history -> each target.
    """
    folder.mkdir(parents=True, exist_ok=True)
    floats = _float_columns(split)
    final = final_ranked_stage(split)
    frames = {TRAIN: split.train, VALID: valid_positives(split), "test": split.positives(final)}
    if max_len:
        frames = {TRAIN: augment_train(split.train, max_len), VALID: with_history(frames[VALID], split.history(VALID), max_len),
                  "test": with_history(frames["test"], split.history(final), max_len)}
    for name, frame in frames.items():
        _write_atomic(folder / f"{DATASET}.{name}.inter", frame, floats, with_list=bool(max_len))
    _write_tokens(folder / f"{DATASET}.item", "item_id", split.n_items)
    _write_tokens(folder / f"{DATASET}.user", "user_id", split.n_users)


def augment_train(frame: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """Rows for every (user, t >= 1) of the time-ordered sequence: last ``max_len`` items before t -> item t."""
    ordered = _chronological(frame).reset_index(drop=True)
    users, items = ordered["user"].to_numpy(), ordered["item"].to_numpy()
    first = np.r_[True, users[1:] != users[:-1]]  # [N] row starts a user's sequence
    start = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))  # [N] index of that start
    rows = np.flatnonzero(~first)
    out = ordered.iloc[rows].reset_index(drop=True)
    out["item_list"] = [items[max(start[t], t - max_len) : t] for t in rows]
    return out


def with_history(frame: pd.DataFrame, history: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """``frame`` rows whose user has a history, each with that user's last ``max_len`` history items."""
    lists = _chronological(history).groupby("user")["item"].agg(lambda s: s.tolist()[-max_len:])
    out = frame[frame["user"].isin(lists.index)].reset_index(drop=True)
    out["item_list"] = out["user"].map(lists)
    return out


def history_tensors(
    history: pd.DataFrame, n_users: int, max_len: int, item_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ([n_users, max_len] RecBole item ids, left-aligned, 0-padded; [n_users] lengths >= 1).

    A user without history gets the single padding item, so the model still returns scores.
    """
    sequences = torch.zeros(n_users, max_len, dtype=torch.long)
    lengths = torch.ones(n_users, dtype=torch.long)
    for user, items in _chronological(history).groupby("user")["item"]:
        last = torch.as_tensor(items.to_numpy()[-max_len:])
        sequences[user, : len(last)] = item_ids[last]
        lengths[user] = len(last)
    return sequences, lengths


def _chronological(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by user, then timestamp (stable: ties and missing timestamps keep file order)."""
    return frame.sort_values(["user", "timestamp"], kind="stable", na_position="first")


def _float_columns(split: Split) -> list[str]:
    """rating/timestamp when the data has them (all-NaN columns are left out of the files)."""
    return [c for c in ("rating", "timestamp") if split.train[c].notna().any()]


def _write_atomic(path: Path, frame: pd.DataFrame, floats: list[str], with_list: bool) -> None:
    columns = {"user_id:token": frame["user"].astype(str), "item_id:token": frame["item"].astype(str)}
    columns |= {f"{c}:float": frame[c] for c in floats}
    if with_list:
        columns["item_id_list:token_seq"] = frame["item_list"].map(lambda items: " ".join(map(str, items)))
    pd.DataFrame(columns).to_csv(path, sep="\t", index=False, na_rep="")


def _write_tokens(path: Path, field: str, n: int) -> None:
    path.write_text(f"{field}:token\n" + "".join(f"{i}\n" for i in range(n)))


def _diverged(name: str, loss: str) -> TrainingError:
    return TrainingError(
        f"RecBole {name} diverged: training loss became {loss}. Lower the learning rate "
        f"(trainer.lr or model.params.learning_rate) or check the data for extreme values."
    )


def _load_best(model: AbstractRecommender, checkpoint: str, device: torch.device) -> None:
    """Load the best-validation weights RecBole saved (a trusted file from this run)."""
    if not os.path.isfile(checkpoint):
        log.warning("RecBole saved no checkpoint (no validation result improved); keeping the last weights.")
        return
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))


@contextlib.contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Send this thread's RecBole lines to ``path`` while the block runs (RecBole's logger does not propagate)."""
    from recbole.utils.logger import RemoveColorFilter

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(compat.ThreadFilter())
    handler.addFilter(RemoveColorFilter())
    RECBOLE_LOG.addHandler(handler)
    try:
        yield
    finally:
        RECBOLE_LOG.removeHandler(handler)
        handler.close()

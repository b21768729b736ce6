"""RecBole's general and sequential models as recexp :class:`~recexp.interfaces.Recommender` s.

``fit`` writes the split's train part and valid positives as RecBole benchmark files (tokens are
recexp's internal ids), lets RecBole train with its own trainer, early-stopping on recexp's evaluator
over the valid stage (the metric every recexp model stops on, as the run's evaluator ranks), and
reloads the best checkpoint. ``score`` asks the trained model for full-ranking scores and
reorders them into recexp item ids; ``score_pairs`` asks it for single (user, item) scores.
Everything RecBole writes (data files, checkpoints, its log, tensorboard events) stays under
``run_dir/recbole``; the cwd and the root logger are left alone. recbole is imported inside functions,
after :func:`~recexp.models.recbole.compat.apply` (some repairs must be in place before RecBole's modules are first imported).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recexp.errors import ConfigError, TrainingError
from recexp.evaluate import Evaluator, cache_sized_batch
from recexp.evaluate.metrics import parse_metric
from recexp.evaluate.pointwise import scores_read_off
from recexp.evaluate.top import load_compiled_in_background
from recexp.interfaces import FitContext, RecommenderBase, Split
from recexp.models.recbole import compat
from recexp.models.recbole.config import config_class, model_class, trainer_values, used_settings
from recexp.models.recbole.files import (
    DATASET,
    VALID,
    float_columns,
    history_tensors,
    valid_positives,
    without_id_tables,
    write_benchmark,
)
from recexp.models.recbole.ids import continue_weights, recbole_ids
from recexp.models.recbole.negatives import count_training_popularity, samples_negatives, sequential_sampling
from recexp.models.recbole.training import (
    RECBOLE_LOG,
    load_best,
    run_log,
    train,
    validated_by_recexp,
    without_optimizer,
)
from recexp.train import TrainerConfig, torch_threads

if TYPE_CHECKING:
    from recbole.data.interaction import Interaction
    from recbole.model.abstract_recommender import AbstractRecommender

PREDICT_ROWS = 1 << 18  # (user, item) pairs per predict() call


class RecBoleRecommender(RecommenderBase):
    """Any RecBole general or sequential model (``name`` is its class, e.g. ``BPR``, ``SASRec``).

    A second ``fit`` continues from the weights of the first (continual updates); a fresh instance
    starts from scratch. General models score from what they learned on train, as in RecBole (later parts are not folded
    in at later stages); sequential models read the user's ``split.history(stage)``. ``params``
    override RecBole's hyper-parameters (its config keys) and win over ``trainer``, whose max_epochs,
    valid_every, patience (in epochs), batch_size, lr, weight_decay and valid_metric (a ranking metric) map to
    RecBole's epochs, eval_step, stopping_step, train_batch_size, learning_rate, weight_decay and valid_metric; ``None``
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

    @property
    def valid_metric(self) -> str:
        """RecBole validates every model on the ``valid`` stage's ranking (a ranking metric, refused otherwise)."""
        return self.trainer.valid_metric

    def fit(self, split: Split, ctx: FitContext) -> None:
        from recbole.data import create_dataset, data_preparation
        from recbole.utils import get_trainer, init_seed

        valid_positives(split)
        if ctx.device.type == "cpu" and not self.gradient_free:  # it validates every epoch: ready by the first ones
            load_compiled_in_background()
        folder = Path(ctx.run_dir).resolve() / "recbole"
        folder.mkdir(parents=True, exist_ok=True)
        threads = self.cpu_threads if ctx.device.type == "cpu" else None
        with run_log(folder / "recbole.log"), torch_threads(threads):
            config = config_class()(model=self.model_class, dataset=DATASET, config_dict=self._config_dict(split, ctx, folder))
            RECBOLE_LOG.info(str(config))
            max_len = config["MAX_ITEM_LIST_LENGTH"] if self.sequential else 0
            write_benchmark(split, folder / DATASET, max_len)
            init_seed(config["seed"], config["reproducibility"])
            dataset = without_id_tables(create_dataset(config))
            train_data, valid_data, _ = data_preparation(config, dataset)
            if config["train_neg_sample_args"]["distribution"] == "popularity":
                count_training_popularity(train_data._sampler, train_data._dataset)
            init_seed(config["seed"], config["reproducibility"])
            model = self.model_class(config, train_data._dataset).to(config["device"])
            if self._model is not None:  # a later fit (a continual update) continues from the last weights
                continue_weights(model, self._model, (self._user_ids, self._item_ids), dataset, split)
            trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
            trainer = validated_by_recexp(without_optimizer(trainer_class) if self.gradient_free else trainer_class)(
                config, model)
            trainer.validate = self._validation(model, dataset, split, max_len, config, ctx)
            # checkpoint names have one-second resolution: an earlier fit's file of the same name must not
            # pass for this fit's best when this one saves none
            Path(trainer.saved_model_file).unlink(missing_ok=True)
            best = train(trainer, train_data, valid_data, ctx, self.name)
        self._used = used_settings(trainer, config) | {"epochs_run": len(trainer.train_loss_dict), "best_epoch": best}
        load_best(model, trainer.saved_model_file, config["device"])
        self._checkpoint = Path(trainer.saved_model_file)
        self._model = model.eval()
        self._index(dataset, split, max_len, config["device"])

    def attach(self, split: Split, device: torch.device) -> None:
        """Score ``split``'s stages from now on without training on it (same users and items as the fit)."""
        self._stages = tuple(split.stages)
        if self.sequential:
            self._histories = {
                s: history_tensors(split, s, self._max_len, self._item_ids) for s in split.stages
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
        scores = self.score_in_own_order(users, stage)
        return scores.index_select(1, self._item_columns).to(users.device)  # 3x faster than scores[:, columns] on CPU

    def score_in_own_order(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        """users: [B] recexp ids -> [B, n_recbole_items] scores in RecBole's item order: recexp item i's in column
        ``self._item_columns[i]``."""
        interaction = self._interaction(users.cpu(), stage)
        with torch.no_grad():
            return self._all_item_scores(interaction.to(self._device), len(users))

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
        """``tail=reweight tail.method=negatives``: draw training negatives with probability proportional to
        popularity ** ``alpha``, through RecBole's own sampler. A ConfigError for ``method=weight`` (RecBole's
        losses take no per-example weights) and for a model that samples no negatives."""
        if method != "negatives":
            raise ConfigError(
                f"tail=reweight tail.method={method} cannot be honoured by the RecBole model {self.name}: RecBole's "
                "losses take no per-example weights. Use tail.method=negatives (RecBole's popularity sampler) or tail=rerank."
            )
        if not samples_negatives(self.model_class, self.params, self.sequential, self.gradient_free):
            raise ConfigError(
                f"tail=reweight tail.method=negatives cannot be honoured by the RecBole model {self.name}: it trains "
                "without sampled negatives. Use tail=rerank, or a model trained with negatives (bpr, lightgcn, neumf ...)."
            )
        self.params["train_neg_sample_args"] = {
            "distribution": "popularity", "alpha": float(alpha), "sample_num": 1, "dynamic": False, "candidate_num": 0,
        }

    # --- helpers

    def _config_dict(self, split: Split, ctx: FitContext, folder: Path) -> dict[str, Any]:
        inter_cols = ["user_id", "item_id", *float_columns(split), *(["item_id_list"] if self.sequential else [])]
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
            values |= {"alias_of_item_id": ["item_id_list"], **sequential_sampling(self.model_class, self.params)}
            if split.max_history is not None:  # the scenario's cap on what a sequential model reads
                asked = self.params.get("MAX_ITEM_LIST_LENGTH", split.max_history)
                if asked > split.max_history:
                    raise ConfigError(
                        f"model.params.MAX_ITEM_LIST_LENGTH={asked} reads more of each sequence than the scenario allows "
                        f"(scenario.max_history={split.max_history}); lower it, or raise scenario.max_history."
                    )
                values["MAX_ITEM_LIST_LENGTH"] = split.max_history
        if self.gradient_free:  # no gradients: sampled negatives would only
            values["train_neg_sample_args"] = None  # be counted by Pop as if they were interactions
            values["eval_step"] = 1  # its trainer runs one epoch, which must validate
        return values | self.params

    def _validation(self, model: Any, dataset: Any, split: Split, max_len: int, config: Any, ctx: FitContext
                    ) -> Callable[[], float]:
        """What RecBole's trainer calls to validate ``model`` while it trains: RecBole's final ``valid_metric`` (a
        model param may set it) on the valid stage, by recexp's evaluator, scored through a copy of this
        recommender (so a fit that fails leaves this one as it was)."""
        scorer = copy.copy(self)
        scorer._model = model
        scorer._index(dataset, split, max_len, config["device"])
        evaluator = Evaluator(batch_size=cache_sized_batch(split.n_items, ctx.device, 512), mask_history=ctx.mask_history)
        key = config["valid_metric"].lower()
        if not parse_metric(key)[0].at_k:
            return lambda: evaluator.value(scorer, split, VALID, key, ctx.device)
        own_order = _InRecBoleOrder(scorer)
        return lambda: evaluator.value(own_order, split, VALID, key, ctx.device, item_columns=scorer._item_columns)

    def _index(self, dataset: Any, split: Split, max_len: int, device: torch.device) -> None:
        """recexp id -> RecBole id maps (tokens are str(recexp id)) and, if sequential, each stage's histories."""
        self._user_ids, self._item_ids = recbole_ids(dataset, split)
        self._device = torch.device(device)
        self._item_columns = self._item_ids.to(self._device)
        self._max_len, self._histories = max_len, {}
        self.attach(split, device)

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


class _InRecBoleOrder(RecommenderBase):
    """A fitted adapter's full-ranking scores left in RecBole's item order, for its validation's ranking: the
    evaluator's compiled pass ranks those rows as they are (``item_columns``), where reordering every batch into
    recexp's order took about 15% of a Scientific-sized validation."""

    def __init__(self, adapter: RecBoleRecommender):
        self.adapter = adapter

    @property
    def name(self) -> str:
        return self.adapter.name

    def score(self, users: torch.Tensor, stage: str) -> torch.Tensor:
        return self.adapter.score_in_own_order(users, stage)

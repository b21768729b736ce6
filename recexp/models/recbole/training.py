"""RecBole's trainer inside a recexp fit: no optimiser for the models it fits without gradients, per-epoch
logging and divergence errors, RecBole's lines in the run's own log file, and its best checkpoint loaded back."""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recexp.errors import TrainingError
from recexp.interfaces import FitContext
from recexp.models.recbole import compat

if TYPE_CHECKING:
    from recbole.model.abstract_recommender import AbstractRecommender

log = logging.getLogger(__name__)
RECBOLE_LOG = logging.getLogger(compat.LOGGER)  # where RecBole's modules log once repaired


class _NoOptimizer:
    """What RecBole's trainer calls on its optimiser, doing nothing: for the models it fits without gradients."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self, closure: Any = None) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}


@functools.cache
def without_optimizer(trainer: type) -> type:
    """``trainer`` holding a :class:`_NoOptimizer`. RecBole builds a torch optimiser even for the models that
    only count or solve (Pop, ItemKNN, EASE ...), and torch's first optimiser imports torch._dynamo (1.1-1.5 s)."""

    class NoOptimizerTrainer(trainer):
        def _build_optimizer(self, **kwargs: Any) -> _NoOptimizer:
            return _NoOptimizer()

    return NoOptimizerTrainer


@functools.cache
def validated_by_recexp(trainer: type) -> type:
    """``trainer`` validating through its ``validate`` callable (recexp's evaluator on the valid stage, set per
    fit) instead of RecBole's full sort, which scores ``eval_batch_size // n_items`` users a batch: one user a
    batch once a catalogue passes 2,047 items, where validating cost about 20 BPR training epochs (Amazon
    Scientific)."""

    class RecexpValidatedTrainer(trainer):
        validate: Callable[[], float]
        best_checkpoint: tuple[str, dict[str, Any]] | None = None  # (file, state) of the last improving epoch

        def _valid_epoch(self, valid_data: Any, show_progress: bool = False) -> tuple[float, dict[str, float]]:
            self.model.eval()
            # rounded as RecBole's evaluator rounds: its early stopping keeps the later of equal scores
            score = round(self.validate(), self.config["metric_decimal_place"])
            return score, {self.valid_metric: score}

        def _save_checkpoint(self, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
            """RecBole's checkpoint of an improving epoch, kept in memory: RecBole writes it (the weights, the
            optimiser's moments, the config) at every improving epoch, 10-30 ms an epoch for BPR on Scientific;
            :meth:`fit` writes the last one, the same file, when it ends."""
            state = {"config": self.config, "epoch": epoch, "cur_step": self.cur_step,
                     "best_valid_score": self.best_valid_score, "state_dict": cpu_copy(self.model.state_dict()),
                     "other_parameter": cpu_copy(self.model.other_parameter()),
                     "optimizer": cpu_copy(self.optimizer.state_dict())}
            self.best_checkpoint = (kwargs.get("saved_model_file", self.saved_model_file), state)

        def fit(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().fit(*args, **kwargs)
            finally:  # a fit that fails still leaves its best epoch's file, as RecBole's did
                if self.best_checkpoint is not None:
                    file, state = self.best_checkpoint
                    torch.save(state, file, pickle_protocol=4)
                    RECBOLE_LOG.info(f"Saving best epoch {state['epoch']}: {file}")

    return RecexpValidatedTrainer


def cpu_copy(value: Any) -> Any:
    """``value`` with every tensor in it (nested in dicts, lists, tuples) copied to the CPU: a checkpoint kept in
    memory holds no GPU memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(item) for item in value)
    return copy.deepcopy(value)


def train(trainer: Any, train_data: Any, valid_data: Any, ctx: FitContext, name: str) -> int:
    """RecBole's fit; each validation logs ``train/loss`` and ``valid/<metric@k>`` at step=epoch.

    Returns the best validation epoch (-1 when none improved).
    """
    key = f"valid/{trainer.valid_metric}"
    best_epoch = -1

    def on_epoch(epoch: int, valid_score: float) -> None:
        nonlocal best_epoch
        loss = float(trainer.train_loss_dict[epoch])
        if not math.isfinite(loss):
            raise _diverged(name, f"{loss} at epoch {epoch}")
        if trainer.cur_step == 0:  # RecBole's early stopping just counted this epoch as the best
            best_epoch = epoch
        ctx.logger.log({"train/loss": loss, key: float(valid_score)}, step=epoch)

    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=ctx.progress, callback_fn=on_epoch)
    except ValueError as err:
        if "nan" in str(err).lower():
            raise _diverged(name, "NaN") from err
        raise
    finally:
        trainer.tensorboard.close()
    return best_epoch


def _diverged(name: str, loss: str) -> TrainingError:
    return TrainingError(
        f"RecBole {name} diverged: training loss became {loss}. Lower the learning rate "
        f"(trainer.lr or model.params.learning_rate) or check the data for extreme values."
    )


def load_best(model: AbstractRecommender, checkpoint: str, device: torch.device) -> None:
    """Load the best-validation weights RecBole saved (a trusted file from this run)."""
    if not os.path.isfile(checkpoint):
        log.warning("RecBole saved no checkpoint (no validation result improved); keeping the last weights.")
        return
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
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

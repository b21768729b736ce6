"""``task=holdout``: fit once on the split's train part (early stopping on its ``valid`` stage), then
evaluate every stage in order. The protocol of classic offline evaluation."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recexp.costs import CostMeter
from recexp.errors import ConfigError
from recexp.evaluate import Evaluator
from recexp.interfaces import FitContext, Recommender, Split, Stage, TaskResult


@dataclass(frozen=True)
class Holdout:
    save_model: bool = True  # write the trained model to run_dir/model (reload with the model's load())

    def stages(self, split: Split) -> dict[str, Stage]:
        if "valid" not in split.stages:
            raise ConfigError(
                f"task=holdout fits once and early-stops on a 'valid' stage; this split has {', '.join(split.stages)}. "
                "Use task=continual for scenario=time_blocks."
            )
        return split.stages

    def run(self, make_model: Callable[[], Recommender], split: Split, evaluator: Evaluator, ctx: FitContext) -> TaskResult:
        model = make_model()
        check_processes(model, ctx)
        meter = CostMeter(ctx.device)
        with meter.phase("train"):
            model.fit(split, ctx)
        evaluations = {}
        if ctx.is_main:  # other processes only helped to train
            if self.save_model and model.saveable:
                model.save(ctx.run_dir / "model")
            with meter.phase("eval"):
                evaluations = {s: evaluator.evaluate(model, split, s, ctx.device, progress=ctx.progress) for s in split.stages}
        return TaskResult(evaluations, meter.summary(model, split, ctx.world_size), model.effective())


def check_processes(model: Recommender, ctx: FitContext) -> None:
    """Only models on the shared loop train across processes; refuse the rest before any work."""
    if ctx.world_size > 1 and not model.distributed:
        raise ConfigError(
            f"{type(model).__name__} trains in one process, but this run has {ctx.world_size}. "
            "Launch it with plain `python -m recexp` (multi-process launches are for the text models)."
        )

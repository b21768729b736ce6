"""Which asked-for metrics a stage and a model can compute, and why not.

A metric reads ranking targets (the top-K kinds) or labelled pairs (pointwise), and logloss, rmse and
mae also read a model output (probabilities, predicted ratings). A metric no stage of a run can compute
is refused before any work (:func:`refusal`); one a stage or segment cannot compute while others can is
recorded there with its reason (:func:`not_computed`, the record's ``not_computed``).
"""
from __future__ import annotations

from recexp.evaluate.metrics import Metric, metric_key
from recexp.interfaces import Scorer, Stage, scorer_name

# what a metric may lack (in the order messages name them) -> the fix a message suggests
FIXES = {
    "targets": "use a scenario with ranking targets (scenario=random, temporal, cold_item, cold_user or time_blocks)",
    "pairs": "set scenario.label_threshold=4 (a valid/test rating >= 4 labels its pair 1, lower 0)",
    "probability": "use a model that gives P(like) (lm_classifier, pair_classifier, id_fm, id_gru, text_head, "
                   "fusion_head, user_rate or item_rate)",
    "rating": "use the model that predicts ratings (model=lm_classifier model.module.head=regression)",
}
OUTPUTS = {"score": "plain scores", "probability": "probabilities", "rating": "predicted ratings"}  # pointwise_output
NOT_IN_SEGMENT = {True: "no ranking target falls in this segment", False: "no labelled pair falls in this segment"}


def lacks(metric: Metric, stage: Stage, output: str) -> list[str]:
    """What ``metric`` reads that ``stage``, or a model whose pair scores are ``output``, lacks (keys of FIXES)."""
    if metric.at_k:
        return ["targets"] if stage.positives is None else []
    return ["pairs"] * (stage.pairs is None) + [metric.needs] * (metric.needs not in (None, output))


def say(lack: str, where: str, model: Scorer) -> str:
    """``lack`` in words: ``where`` is ``stage 'valid'``, or ``no stage`` (of this split)."""
    if lack in ("probability", "rating"):
        return f"model {scorer_name(model)} gives {OUTPUTS[model.pointwise_output]}, not {OUTPUTS[lack]}"
    thing = "ranking targets" if lack == "targets" else "labelled pairs"
    return f"no stage of this split has {thing}" if where == "no stage" else f"{where} has no {thing}"


def refusal(subject: str, metrics: dict[str, Metric], stages: dict[str, Stage], model: Scorer, instead: str) -> str | None:
    """The one-line reason, with its fix, why the ``metrics`` (by the name a setting gives them) that no stage of
    ``stages`` can compute cannot be computed; None when every one can. ``subject`` names the setting
    (``{}`` takes the metric names), ``instead`` the way out besides the fixes ("choose another objective")."""
    missing = {}
    for text, metric in metrics.items():
        per_stage = [lacks(metric, stage, model.pointwise_output) for stage in stages.values()]
        if all(per_stage):
            missing[text] = [lack for lack in FIXES if any(lack in found for found in per_stage)]
    if not missing:
        return None
    where = f"stage {next(iter(stages))!r}" if len(stages) == 1 else "no stage"
    found = [lack for lack in FIXES if any(lack in m for m in missing.values())]
    uniform = all(m == found for m in missing.values())
    reasons = [say(lack, where, model) + ("" if uniform else f" ({', '.join(t for t, m in missing.items() if lack in m)})")
               for lack in found]
    fixes = ", and ".join(FIXES[lack] for lack in found)
    return (f"{subject.format(' and '.join(missing))} cannot be computed here: {', and '.join(reasons)}. "
            f"{fixes[0].upper()}{fixes[1:]}, or {instead.format(' and '.join(missing))}.")


def not_computed(asked: list[Metric], ks: list[int], stage: str, spec: Stage, model: Scorer, ranked: tuple[str, ...],
                 paired: tuple[str, ...], metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, str]]:
    """{segment: {metric key: why}} for each ``asked`` metric missing from ``metrics`` ({segment: {key: value}}) in a
    segment it belongs to: pointwise metrics in the ``paired`` segments, top-K ones in the ``ranked`` segments
    (list and catalog kinds outside restricted item segments, exposure in ``all`` only)."""
    out: dict[str, dict[str, str]] = {}
    for segment in dict.fromkeys((*ranked, *paired)):
        restricted = segment in spec.segments and segment != "all"
        for metric in (m for m in asked if _belongs(m, segment, ranked, paired, restricted)):
            stage_lacks = lacks(metric, spec, model.pointwise_output)
            why = ", and ".join(say(lack, f"stage {stage!r}", model) for lack in stage_lacks) or NOT_IN_SEGMENT[metric.at_k]
            for key in (metric_key(metric, k) for k in (ks if metric.at_k else [None])):
                if key not in metrics.get(segment, {}):
                    out.setdefault(segment, {})[key] = why
    return out


def _belongs(metric: Metric, segment: str, ranked: tuple[str, ...], paired: tuple[str, ...], restricted: bool) -> bool:
    """Whether ``segment`` reports ``metric`` when it can be computed (see :mod:`~recexp.evaluate.ranking`)."""
    if metric.kind == "pointwise":
        return segment in paired
    if segment not in ranked:
        return False
    if metric.kind == "exposure":
        return segment == "all"
    return metric.kind == "ranking" or not restricted

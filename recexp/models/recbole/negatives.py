"""RecBole's negative sampling as recexp uses it: which models train on sampled negatives, and the popularity
sampler rebuilt from the training interactions alone (``tail=reweight tail.method=negatives``)."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from recexp.errors import DataError


def loss_type(model_class: type, params: dict[str, Any]) -> str | None:
    """``loss_type`` as RecBole will read it: the override in ``params``, else the model's own defaults file."""
    import recbole

    defaults_file = Path(recbole.__file__).parent / "properties" / "model" / f"{model_class.__name__}.yaml"
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.is_file() else {}
    return params.get("loss_type", (defaults or {}).get("loss_type"))


def sequential_sampling(model_class: type, params: dict[str, Any]) -> dict[str, Any]:
    """Sequential models trained with cross-entropy over all items take no negative samples (unless they
    declare an input type: RecBole then samples them, e.g. for SINE, whose CE loss reads none)."""
    if hasattr(model_class, "input_type"):
        return {}
    return {"train_neg_sample_args": None} if loss_type(model_class, params) == "CE" else {}


def samples_negatives(model_class: type, params: dict[str, Any], sequential: bool, gradient_free: bool) -> bool:
    """Whether RecBole trains the model on negatives it samples (which its popularity sampler can then draw)."""
    if gradient_free or (sequential and sequential_sampling(model_class, params)):
        return False
    return loss_type(model_class, params) != "CE" and reads_sampled_negatives(model_class)  # CE: over all items


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

"""recexp's user and item ids as RecBole numbers them, and a fit's weights carried over to the next fit's numbering."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from recexp.errors import ConfigError
from recexp.interfaces import Split

if TYPE_CHECKING:
    from recbole.model.abstract_recommender import AbstractRecommender


def recbole_ids(dataset: Any, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """RecBole's ids of recexp's users [n_users] and items [n_items] (RecBole tokens are str(recexp id))."""
    users = dataset.field2token_id[dataset.uid_field]
    items = dataset.field2token_id[dataset.iid_field]
    return (torch.as_tensor([users[str(u)] for u in range(split.n_users)]),
            torch.as_tensor([items[str(i)] for i in range(split.n_items)]))


def continue_weights(
    model: AbstractRecommender, previous: AbstractRecommender, previous_ids: tuple[torch.Tensor, torch.Tensor],
    dataset: Any, split: Split,
) -> None:
    """Start ``model`` from the ``previous`` fit's weights; ``previous_ids``: that fit's RecBole ids of recexp's
    users [n_users] and items [n_items]. RecBole numbers users and items in order of first appearance in the
    interaction files, so each fit numbers them differently: every tensor axis of length n_items (n_users) is
    reordered from the old numbering to the new one. Tensors among RecBole's other parameters (e.g. Pop's
    counts) carry over; anything else is rebuilt from the new data (e.g. ItemKNN's similarities)."""
    new_users, new_items = recbole_ids(dataset, split)
    n_users, n_items = dataset.user_num, dataset.item_num  # RecBole's counts, its padding id 0 included
    if n_users == n_items:
        raise ConfigError(
            f"RecBole {type(previous).__name__} cannot continue training here: users and items are equally many "
            f"({n_items}), so their tables cannot be told apart. Use task.update=full_retrain or window."
        )
    old_users, old_items = previous_ids
    orders = {n_items: _old_order(old_items, new_items, n_items),
              n_users: _old_order(old_users, new_users, n_users)}
    state = {k: _reorder(v, orders) for k, v in previous.state_dict().items()}
    model.load_state_dict(state)
    carried = {k: _reorder(v, orders) for k, v in previous.other_parameter().items() if torch.is_tensor(v)}
    model.load_other_parameter(carried)


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

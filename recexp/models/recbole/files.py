"""RecBole's benchmark files for a split, and the item sequences its sequential models read.

Tokens are recexp's internal ids; RecBole early-stops on the positives of the split's ``valid`` stage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recexp.errors import ConfigError
from recexp.interfaces import TRAIN, Split, chronological

DATASET = "recexp"  # RecBole dataset name: files are recexp.{train,valid}.inter, recexp.item, recexp.user
VALID = "valid"  # the stage whose positives RecBole early-stops on


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


def write_benchmark(split: Split, folder: Path, max_len: int = 0) -> None:
    """Write ``recexp.train.inter`` (``split.train``), ``recexp.valid.inter`` (the valid stage's positives),
    ``recexp.test.inter`` (the final stage's positives), ``recexp.item`` and ``recexp.user`` into ``folder``.

    Tokens are recexp's internal ids. The item/user files list every id, so ids without training
    interactions (cold items) still get a RecBole id. With ``max_len > 0`` (sequential models) each
    row carries ``item_id_list``: train rows are every prefix -> next item of a user's training
    sequence; valid/test rows are the user's stage history -> each target.
    """
    folder.mkdir(parents=True, exist_ok=True)
    floats = float_columns(split)
    final = final_ranked_stage(split)
    frames = {TRAIN: split.train, VALID: valid_positives(split), "test": split.positives(final)}
    if max_len:
        frames = {TRAIN: augment_train(split.train, max_len), VALID: with_history(frames[VALID], split, VALID, max_len),
                  "test": with_history(frames["test"], split, final, max_len)}
    for name, frame in frames.items():
        _write_atomic(folder / f"{DATASET}.{name}.inter", frame, floats, with_list=bool(max_len))
    _write_tokens(folder / f"{DATASET}.item", "item_id", split.n_items)
    _write_tokens(folder / f"{DATASET}.user", "user_id", split.n_users)


def without_id_tables(dataset: Any) -> Any:
    """``dataset`` (RecBole's, just created) without its user and item feature tables where they hold only ids.

    The item and user files exist to number every id; loaded as feature tables, RecBole would join them into
    every batch it draws (the batch's, its negatives'), about 25% of a BPR epoch on ml-100k, for no feature."""
    for table, field in (("user_feat", dataset.uid_field), ("item_feat", dataset.iid_field)):
        feat = getattr(dataset, table)
        if feat is not None and list(feat.columns) == [field]:
            setattr(dataset, table, None)
    dataset.feat_name_list = [name for name in dataset.feat_name_list if getattr(dataset, name) is not None]
    return dataset


def augment_train(frame: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """Rows for every (user, t >= 1) of the time-ordered sequence: last ``max_len`` items before t -> item t."""
    ordered = chronological(frame).reset_index(drop=True)
    users, items = ordered["user"].to_numpy(), ordered["item"].to_numpy()
    first = np.r_[True, users[1:] != users[:-1]]  # [N] row starts a user's sequence
    start = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))  # [N] index of that start
    rows = np.flatnonzero(~first)
    out = ordered.iloc[rows].reset_index(drop=True)
    out["item_list"] = [items[max(start[t], t - max_len) : t] for t in rows]
    return out


def with_history(frame: pd.DataFrame, split: Split, stage: str, max_len: int) -> pd.DataFrame:
    """``frame`` rows whose user has a history at ``stage``, each with that user's last ``max_len`` sequence items."""
    sequences = split.sequences(stage)
    out = frame[sequences.lengths[frame["user"].to_numpy()] > 0].reset_index(drop=True)
    out["item_list"] = [sequences.of_user(user)[-max_len:].tolist() for user in out["user"].to_numpy()]
    return out


def history_tensors(split: Split, stage: str, max_len: int, item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ([n_users, max_len] RecBole item ids, left-aligned, 0-padded; [n_users] lengths >= 1) of each user's last
    ``max_len`` sequence items at ``stage``. A user without history gets the single padding item, so the model still
    returns scores."""
    padded, lengths = (torch.as_tensor(a) for a in split.sequences(stage).last(np.arange(split.n_users), max_len, -1, max_len))
    return torch.where(padded >= 0, item_ids[padded.clamp(min=0)], 0), lengths


def float_columns(split: Split) -> list[str]:
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


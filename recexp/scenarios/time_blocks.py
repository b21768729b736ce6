"""``scenario=time_blocks``: interactions cut by time into blocks, for continual learning (``task=continual``).

Block 0 (part ``block_0``, also the ``train`` part) is the base. Every later block ``j`` is cut in two
by time: ``valid_j`` (first half) and ``test_j`` (second half). Stage ``valid_j`` ranks ``valid_j``
knowing every earlier block; stage ``test_j`` ranks ``test_j`` knowing every earlier block and
``valid_j``. A stage's candidates are the items seen by the end of the half it ranks (nothing from
the future: ``valid_j`` does not rank items first seen in ``test_j``). Segments: ``all``/``head``/``tail``
(head: popular items before block ``j``), ``new_items`` and the user segment ``new_users`` (first
seen in block ``j``, up to the end of the ranked half). The split's ``blocks`` name each later block's two stages.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recexp.errors import ConfigError, DataError, check_int
from recexp.interfaces import TRAIN, Block, Dataset, Split, Stage
from recexp.scenarios.common import by_time, head_items, labelled, popularity_segments

BASE = "block_0"


def block_parts(j: int) -> tuple[str, str]:
    """(valid part, test part) of block ``j`` >= 1; they are also its stage names."""
    return f"valid_{j}", f"test_{j}"


@dataclass(frozen=True)
class TimeBlocksScenario:
    blocks: int = 5  # number of blocks (equal interaction counts), the first being the base
    period: str | None = None  # calendar blocks instead, as a pandas period frequency (e.g. "M": months); blocks is then ignored
    head_fraction: float = 0.2  # share of items seen before a block counted as its head
    label_threshold: float | None = None  # rating >= this labels a valid/test pair 1, lower 0 (None: no pairs)

    def build(self, dataset: Dataset, seed: int) -> Split:
        ordered = by_time(dataset.inter, "time_blocks")
        blocks = self._cut(ordered)
        parts: dict[str, pd.DataFrame] = {BASE: blocks[0], TRAIN: blocks[0]}
        stages: dict[str, Stage] = {}
        known, later = [BASE], []
        for j, block in enumerate(blocks[1:], start=1):
            valid_name, test_name = block_parts(j)
            half = len(block) // 2
            valid, test = block.iloc[:half].reset_index(drop=True), block.iloc[half:].reset_index(drop=True)
            if self.label_threshold is not None:
                valid, test = labelled(valid, self.label_threshold), labelled(test, self.label_threshold)
            parts[valid_name], parts[test_name] = valid, test
            before = pd.concat(blocks[:j], ignore_index=True)
            pairs = self.label_threshold is not None
            for name, history, seen in ((valid_name, tuple(known), valid), (test_name, (*known, valid_name), block)):
                segments, users = self._segments(dataset, before, seen)
                stages[name] = Stage(history, name, segments["all"], segments, name if pairs else None, users)
            known += [valid_name, test_name]
            later.append(Block(valid=valid_name, test=test_name))
        return Split(dataset=dataset, parts=parts, stages=stages, info=self._facts(blocks), blocks=later)

    def _cut(self, ordered: pd.DataFrame) -> list[pd.DataFrame]:
        """Equal-count blocks (or calendar periods), each non-empty and with two halves."""
        if self.period is not None:
            when = pd.to_datetime(ordered["timestamp"], unit="s")
            try:
                labels = when.dt.to_period(self.period).astype(str).to_numpy()
            except ValueError as err:
                raise ConfigError(f"scenario.period={self.period!r} is not a pandas frequency (e.g. M, W, Q): {err}") from err
            starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
            cuts = [*starts, len(ordered)]
        else:
            check_int("scenario.blocks", self.blocks, 2, rule="an integer >= 2 (a base and one more)")
            cuts = [round(i * len(ordered) / self.blocks) for i in range(self.blocks + 1)]
        blocks = [ordered.iloc[a:b].reset_index(drop=True) for a, b in zip(cuts[:-1], cuts[1:])]
        if len(blocks) < 2 or min(len(b) for b in blocks) < 2:
            raise DataError(
                f"scenario=time_blocks made {len(blocks)} blocks of sizes {[len(b) for b in blocks]}; every block needs at "
                "least 2 interactions (a valid and a test half) and there must be 2 blocks or more. Use fewer blocks or a longer period."
            )
        return blocks

    def _segments(self, dataset: Dataset, before: pd.DataFrame, current: pd.DataFrame) -> tuple[dict, dict]:
        """Item segments (all, head, tail, new_items) and user segments (new_users) of a stage that has seen
        ``before`` (the earlier blocks) and ``current`` (its block up to the end of the half it ranks)."""
        seen = np.union1d(before["item"].unique(), current["item"].unique())
        new_items = np.setdiff1d(current["item"].unique(), before["item"].unique())
        new_users = np.setdiff1d(current["user"].unique(), before["user"].unique())
        head = head_items(before, dataset.n_items, self.head_fraction)
        return {**popularity_segments(seen, head), "new_items": new_items}, {"new_users": new_users}

    @staticmethod
    def _facts(blocks: list[pd.DataFrame]) -> dict:
        users, items, starts, new_users, new_items, sizes = set(), set(), [], [], [], []
        for block in blocks:
            starts.append(pd.to_datetime(block["timestamp"].min(), unit="s").strftime("%Y-%m-%d"))
            new_users.append(len(set(block["user"]) - users))
            new_items.append(len(set(block["item"]) - items))
            users |= set(block["user"])
            items |= set(block["item"])
            sizes.append(len(block))
        return {"blocks": len(blocks), "block_starts": starts, "block_sizes": sizes,
                "block_start_timestamps": [float(b["timestamp"].min()) for b in blocks],
                "new_users": new_users, "new_items": new_items}

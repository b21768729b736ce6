"""``scenario=temporal``: one global time cut; train on the past, validate and test on the future."""
from __future__ import annotations

from dataclasses import dataclass, field

from recexp.interfaces import Dataset, Split
from recexp.scenarios.common import by_time, check_ratios, full_ranking_split, require_nonempty


@dataclass(frozen=True)
class TemporalScenario:
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # shares of interactions by time
    head_fraction: float = 0.2
    label_threshold: float | None = None  # rating >= this labels a valid/test pair 1, lower 0 (None: no pairs)

    def build(self, dataset: Dataset, seed: int) -> Split:
        ordered = by_time(dataset.inter, "temporal", ", or use scenario=random")
        ratios = check_ratios(self.ratios)
        cut_train = int(round(ratios[0] * len(ordered)))
        cut_valid = int(round((ratios[0] + ratios[1]) * len(ordered)))
        train = ordered.iloc[:cut_train].reset_index(drop=True)
        valid = ordered.iloc[cut_train:cut_valid].reset_index(drop=True)
        test = ordered.iloc[cut_valid:].reset_index(drop=True)
        require_nonempty("temporal", train=train, valid=valid, test=test)
        return full_ranking_split(
            dataset, train, valid, test, self.head_fraction, self.label_threshold,
            valid_from=float(valid["timestamp"].min()), test_from=float(test["timestamp"].min()),
        )

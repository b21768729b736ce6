"""Training settings shared by every model (and, for torch models, the one training loop)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainerConfig:
    """Flat training settings; ``None`` means "the model's own default"."""

    max_epochs: int | None = None  # cap on training epochs
    patience: int | None = None  # validation checks without improvement before stopping
    valid_metric: str = "ndcg@10"  # early-stopping metric on the valid split (all segment)
    batch_size: int | None = None  # training batch size
    lr: float | None = None  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.1  # share of optimisation steps with linear warm-up
    grad_accum: int = 1  # micro-batches per optimiser step
    bf16: bool = True  # bf16 autocast when on CUDA
    progress: bool = True  # tqdm progress bars

    def pick(self, name: str, default):
        """``self.<name>`` unless it is None, else ``default``."""
        value = getattr(self, name)
        return default if value is None else value

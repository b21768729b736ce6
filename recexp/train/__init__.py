"""Training shared by every model: the trainer settings, and the one training loop for recexp's torch models.

* :mod:`~recexp.train.settings`: ``TrainerConfig`` (``trainer=...``), its checks and defaults, and the
  refusal of settings by models that train nothing.
* :mod:`~recexp.train.devices`: this process's rank and device, bf16 support, CPU threads, the
  ``Accelerator`` (the only module importing ``accelerate``).
* :mod:`~recexp.train.loop`: :func:`fit`, its epochs, validation, warm-up schedule and divergence checks.
* :mod:`~recexp.train.weights`: trainable weights, their counts, and saving and loading them.
"""
from recexp.train.devices import default_device, process_info, single_cpu_launch, torch_threads
from recexp.train.loop import Batch, EpochData, FitStats, epoch_order, fit, validate, warmup_then_decay
from recexp.train.settings import TrainerConfig, refuse_training, with_defaults
from recexp.train.weights import load_weights, parameter_counts, save_weights

__all__ = [
    "Batch",
    "EpochData",
    "FitStats",
    "TrainerConfig",
    "default_device",
    "epoch_order",
    "fit",
    "load_weights",
    "parameter_counts",
    "process_info",
    "refuse_training",
    "save_weights",
    "single_cpu_launch",
    "torch_threads",
    "validate",
    "warmup_then_decay",
    "with_defaults",
]

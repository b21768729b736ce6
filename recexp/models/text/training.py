"""How the text models over item encodings (text_tower, fusion) train: their epochs (items while the encoder
trains, else interactions) their trainer defaults and their CPU threads."""
from __future__ import annotations

from recexp.errors import ConfigError
from recexp.interfaces import Split
from recexp.models.sampling import InteractionData, ItemData
from recexp.train import EpochData

# Trainer defaults while the encoder trains (batch = items per step); each model sets its own over a frozen one.
TRAINED_ENCODER = dict(max_epochs=10, patience=2, batch_size=64, lr=1e-3, mixed_precision="bf16")


def check_samples(given: int | None) -> int | None:
    """``samples_per_epoch``: train interactions per epoch over a frozen encoder (None: all of them)."""
    if given is not None and given < 1:
        raise ConfigError(f"model.module.samples_per_epoch must be >= 1 (or null), got {given}.")
    return given


def train_data(model, split: Split, seed: int) -> EpochData:
    """A text model's epoch: item-organised (:class:`ItemData`) while its encoder trains, else shuffled
    interactions (:class:`InteractionData`, ``model.samples_per_epoch`` of them)."""
    if model.encoder.trainable:
        return ItemData(split, seed, model.tokens.lengths, model.sampling)
    return InteractionData(split, seed, model.samples_per_epoch, model.sampling)


def preferred_cpu_threads(encoder_trains: bool) -> int | None:
    """Small heads over cached (frozen) encodings train fastest on one CPU thread; encoders on all."""
    return None if encoder_trains else 1

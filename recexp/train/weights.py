"""A torch model's weights: which ones train, copies of them, their counts, and the files a trained model is
saved to and loaded from."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recexp.errors import ConfigError, TrainingError
from recexp.interfaces import TorchModel


def trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{type(model).__name__} has no trainable weights; nothing to fit.")
    return params


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable weights, by state-dict name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def save_weights(model: TorchModel, directory: str | Path) -> int:
    """Write the trained part of ``model`` to ``directory``; returns the bytes written.

    ``heads.safetensors`` holds every trainable weight and persistent buffer outside
    ``model.encoder``; the encoder's strategy, where there is an encoder, writes its own part under
    ``encoder/`` (PEFT adapter, full weights, or nothing).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(heads(model), directory / "heads.safetensors")
    if model.encoder is not None:
        model.encoder.save(directory / "encoder")
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def load_weights(model: TorchModel, directory: str | Path) -> None:
    """Read what :func:`save_weights` wrote into a model built from the same config."""
    directory = Path(directory)
    state = load_file(directory / "heads.safetensors")
    expected = set(heads(model))
    if set(state) != expected:
        raise ConfigError(
            f"{directory} does not fit this model: weights {sorted(set(state) ^ expected)[:5]} differ. "
            "Build the model from the config it was trained with."
        )
    model.load_state_dict(state, strict=False)
    if model.encoder is not None:
        model.encoder.load(directory / "encoder")
    model.stale = True


def heads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights and persistent buffers outside ``model.encoder``, contiguous CPU copies by name."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    persistent = set(model.state_dict())
    buffers = {name: b for name, b in model.named_buffers() if name in persistent}
    return {
        name: t.detach().cpu().contiguous()
        for name, t in {**params, **buffers}.items()
        if not name.startswith("encoder.")
    }

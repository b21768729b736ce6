"""How a pretrained encoder is adapted: ``strategy=frozen``, ``full_ft``, or any PEFT method.

The only module importing ``peft``. Every strategy adapts a ``transformers`` model in place
(``apply``) and persists what it trained (``save``/``load``): nothing when frozen, the full weights
as safetensors when fully fine-tuned, the adapter via ``save_pretrained`` for PEFT methods.
"""
from __future__ import annotations

import copy
from pathlib import Path

from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from recexp.errors import ConfigError


class Frozen:
    """No weight of the encoder changes; models may cache its embeddings."""

    def apply(self, encoder: nn.Module) -> nn.Module:
        return encoder.requires_grad_(False)

    def save(self, encoder: nn.Module, directory: Path) -> None:
        """Nothing to write: the pretrained weights are named by the run's config."""

    def load(self, encoder: nn.Module, directory: Path) -> None:
        """Nothing to read (see :meth:`save`)."""


class FullFineTune:
    """Every weight of the encoder trains."""

    def apply(self, encoder: nn.Module) -> nn.Module:
        return encoder.requires_grad_(True)

    def save(self, encoder: nn.Module, directory: Path) -> None:
        encoder.save_pretrained(directory)  # config.json + model.safetensors

    def load(self, encoder: nn.Module, directory: Path) -> None:
        encoder.load_state_dict(load_file(Path(directory) / "model.safetensors"))


class Peft:
    """Wrap the encoder with any ``peft`` method; only its added (or selected) weights train.

    ``config`` is a ``peft.PeftConfig`` (``peft.LoraConfig``, ``IA3Config``, ``PrefixTuningConfig`` ...).
    Prompt-learning methods need ``task_type="FEATURE_EXTRACTION"``; the rest need none.
    """

    def __init__(self, config: PeftConfig):
        if not isinstance(config, PeftConfig):
            raise ConfigError(
                f"strategy.config must be a peft config (e.g. _target_: peft.LoraConfig), got {type(config).__name__}."
            )
        if config.is_prompt_learning and config.task_type is None:
            raise ConfigError(
                f"{type(config).__name__} is a prompt-learning method and needs a task type for an encoder: "
                "set strategy.config.task_type=FEATURE_EXTRACTION."
            )
        self.config = config

    def apply(self, encoder: nn.Module) -> nn.Module:
        try:
            return get_peft_model(encoder, copy.deepcopy(self.config))
        except ValueError as error:
            raise ConfigError(
                f"{type(self.config).__name__} cannot be applied to {type(encoder).__name__}: {error}\n"
                f"Module names this encoder has (match by suffix, e.g. 'attention.output.dense'): "
                f"{', '.join(module_names(encoder))}. Set strategy.config.target_modules accordingly."
            ) from error

    def save(self, encoder: nn.Module, directory: Path) -> None:
        encoder.save_pretrained(directory)  # adapter_config.json + adapter_model.safetensors

    def load(self, encoder: nn.Module, directory: Path) -> None:
        state = load_file(Path(directory) / "adapter_model.safetensors")
        differ = sorted(set(state) ^ set(get_peft_model_state_dict(encoder)))
        if differ:
            raise ConfigError(
                f"The adapter in {directory} does not fit this strategy (weights {differ[:5]} differ); "
                "build the model with the strategy it was trained with."
            )
        set_peft_model_state_dict(encoder, state)


def module_names(model: nn.Module) -> list[str]:
    """Distinct last components of the names of ``model``'s leaf modules, sorted."""
    leaves = (name for name, module in model.named_modules() if name and not any(module.children()))
    return sorted({name.rsplit(".", 1)[-1] for name in leaves})


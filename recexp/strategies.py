"""How a pretrained encoder is adapted: ``strategy=frozen``, ``partial``, ``full_ft``, any PEFT method, or ``bottleneck``.

The only module importing ``peft``. Every strategy adapts a ``transformers`` model in place
(``apply``) and persists what it trained (``save``/``load``): nothing when frozen, the trained top
layers (``partial``) or the full weights as safetensors, the adapter via ``save_pretrained`` for PEFT methods, and the
adapter weights as safetensors (plus their settings as JSON) for bottleneck adapters.

The presets name BERT-style modules. When those names match nothing in the encoder and its
``config.model_type`` is in :data:`ARCHITECTURE_TARGETS` (LLaMA-style decoders), the strategy uses that
architecture's modules instead; any other configured target (an override) is used as given.
"""
from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import torch
from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from recexp.errors import ConfigError, check_int, check_number

BERT_LAYERS = "encoder.layer"  # strategy=partial's preset layers_path
BERT_LORA_TARGETS = {"query", "value"}  # strategy=lora's preset target_modules
BERT_IA3_TARGETS = r".*\.(key|value)|.*(?<!attention)\.output\.dense"  # strategy=ia3's preset target_modules
BERT_IA3_FEEDFORWARD = r".*(?<!attention)\.output\.dense"  # ... and its feedforward_modules
LLAMA_STYLE = {
    "partial": "layers",  # LlamaModel.layers
    "LORA": {"target_modules": {"q_proj", "v_proj"}},  # as TALLRec
    "IA3": {"target_modules": {"k_proj", "v_proj", "down_proj"}, "feedforward_modules": {"down_proj"}},
    "bottleneck": {"attention": "o_proj", "ffn": "down_proj"},  # attention output, feed-forward output
}
# config.model_type -> the modules each strategy adapts when the BERT-style presets match nothing
ARCHITECTURE_TARGETS = {model_type: LLAMA_STYLE for model_type in ("llama", "mistral", "qwen2", "qwen3")}


def architecture_targets(encoder: nn.Module, strategy: str):
    """The targets of ``strategy`` for ``encoder``'s model type, or None when it has no entry."""
    model_type = getattr(getattr(encoder, "config", None), "model_type", None)
    return ARCHITECTURE_TARGETS.get(model_type, {}).get(strategy)


def matches_any(encoder: nn.Module, targets) -> bool:
    """Whether peft's rule finds a module: a regex string matches a whole name, a list entry a name or its suffix."""
    names = [name for name, _ in encoder.named_modules() if name]
    if isinstance(targets, str):
        return any(re.fullmatch(targets, name) for name in names)
    return any(name == t or name.endswith(f".{t}") for name in names for t in targets)


class Frozen:
    """No weight of the encoder changes; models may cache its embeddings."""

    cached_below = 0  # the whole encoder runs on every pass (no layer cache)

    def apply(self, encoder: nn.Module) -> nn.Module:
        return encoder.requires_grad_(False)

    def save(self, encoder: nn.Module, directory: Path) -> None:
        """Nothing to write: the pretrained weights are named by the run's config."""

    def load(self, encoder: nn.Module, directory: Path) -> None:
        """Nothing to read (see :meth:`save`)."""


class FullFineTune:
    """Every weight of the encoder trains."""

    cached_below = 0  # the whole encoder runs on every pass (no layer cache)

    def apply(self, encoder: nn.Module) -> nn.Module:
        return encoder.requires_grad_(True)

    def save(self, encoder: nn.Module, directory: Path) -> None:
        encoder.save_pretrained(directory)  # config.json + model.safetensors

    def load(self, encoder: nn.Module, directory: Path) -> None:
        encoder.load_state_dict(load_file(Path(directory) / "model.safetensors"))


class Partial:
    """Only the top ``layers`` transformer layers train; everything below them stays pretrained.

    The encoder then computes the hidden states entering the first trained layer once per text and
    runs only the trained layers on them (a layer cache), so a step costs a fraction of a full
    forward and backward. ``layers_path`` names the encoder's list of layers (BERT-style models:
    ``encoder.layer``; LLaMA-style decoders: ``layers``, found by model type when the preset's path is absent);
    the layers must take ``(hidden_states, attention_mask)``, or be a LLaMA-style decoder's (the encoder then
    supplies the causal mask, the rotary positions and the final norm). The encoder's probe refuses any other.
    """

    def __init__(self, layers: int = 2, layers_path: str = "encoder.layer"):
        self.layers = check_int("strategy.layers", layers, 1, rule="an integer >= 1 (the top layers to train)")
        self.layers_path = layers_path
        self.cached_below = 0  # index of the first trained layer, set by apply

    def stack(self, encoder: nn.Module) -> nn.ModuleList:
        path = self.layers_path
        if path == BERT_LAYERS and not _has_submodule(encoder, path):
            path = architecture_targets(encoder, "partial") or path
        try:
            stack = encoder.get_submodule(path)
        except AttributeError:
            stack = None
        if not isinstance(stack, nn.ModuleList):
            raise ConfigError(
                f"strategy.layers_path={self.layers_path!r} names no list of layers in {type(encoder).__name__}; "
                "set it to the encoder's nn.ModuleList of transformer layers (BERT-style models: encoder.layer)."
            )
        return stack

    def apply(self, encoder: nn.Module) -> nn.Module:
        stack = self.stack(encoder)
        if self.layers >= len(stack):
            raise ConfigError(
                f"strategy.layers={self.layers} leaves nothing to cache: {type(encoder).__name__} has {len(stack)} layers. "
                f"Use at most {len(stack) - 1}, or strategy=full_ft."
            )
        encoder.requires_grad_(False)
        self.cached_below = len(stack) - self.layers
        for layer in stack[self.cached_below :]:
            layer.requires_grad_(True)
        return encoder

    def trained_layers(self, encoder: nn.Module) -> nn.ModuleList:
        return self.stack(encoder)[self.cached_below :]

    def save(self, encoder: nn.Module, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(_trained_weights(encoder), directory / "partial.safetensors")

    def load(self, encoder: nn.Module, directory: Path) -> None:
        state = load_file(Path(directory) / "partial.safetensors")
        _check_names(state, _trained_weights(encoder), f"The layers in {directory}", "the strategy.layers")
        encoder.load_state_dict(state, strict=False)


def _has_submodule(encoder: nn.Module, path: str) -> bool:
    try:
        encoder.get_submodule(path)
    except AttributeError:
        return False
    return True


def _check_names(state: dict, expected: dict, what: str, built_with: str = "the strategy") -> None:
    """A ConfigError when the weight names of a saved ``state`` are not those the encoder expects."""
    differ = sorted(set(state) ^ set(expected))
    if differ:
        raise ConfigError(
            f"{what} do not fit this strategy (weights {differ[:5]} differ); build the model with {built_with} it was trained with."
        )


def _trained_weights(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in encoder.named_parameters() if p.requires_grad}


class Peft:
    """Wrap the encoder with any ``peft`` method; only its added (or selected) weights train.

    ``config`` is a ``peft.PeftConfig`` (``peft.LoraConfig``, ``IA3Config``, ``PrefixTuningConfig`` ...).
    Prompt-learning methods need ``task_type="FEATURE_EXTRACTION"``; the rest need none.
    """

    cached_below = 0  # the whole encoder runs on every pass (no layer cache)

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
        config = self.for_architecture(encoder)
        try:
            with warnings.catch_warnings():  # peft reads transformers' deprecated alias; nothing a user can change
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
                return get_peft_model(encoder, config)
        except ValueError as error:
            raise ConfigError(
                f"{type(self.config).__name__} cannot be applied to {type(encoder).__name__}: {error}\n"
                f"Module names this encoder has (match by suffix, e.g. 'attention.output.dense'): "
                f"{', '.join(module_names(encoder))}. Set strategy.config.target_modules accordingly."
            ) from error

    def for_architecture(self, encoder: nn.Module) -> PeftConfig:
        """A copy of the config; a preset's BERT-style targets that match nothing become the architecture's."""
        config = copy.deepcopy(self.config)
        preset = {"LORA": (BERT_LORA_TARGETS, None), "IA3": (BERT_IA3_TARGETS, BERT_IA3_FEEDFORWARD)}.get(_peft_name(config))
        if preset is None or _normalised(config.target_modules) != preset[0] or matches_any(encoder, config.target_modules):
            return config
        if preset[1] is not None and _normalised(getattr(config, "feedforward_modules", None)) != preset[1]:
            return config
        for field, value in (architecture_targets(encoder, _peft_name(config)) or {}).items():
            setattr(config, field, set(value))
        return config

    def save(self, encoder: nn.Module, directory: Path) -> None:
        encoder.save_pretrained(directory)  # adapter_config.json + adapter_model.safetensors

    def load(self, encoder: nn.Module, directory: Path) -> None:
        state = load_file(Path(directory) / "adapter_model.safetensors")
        _check_names(state, get_peft_model_state_dict(encoder), f"The adapter weights in {directory}")
        set_peft_model_state_dict(encoder, state)


def _peft_name(config: PeftConfig) -> str:
    return getattr(config.peft_type, "value", str(config.peft_type))  # "LORA", "IA3" ...


def _normalised(targets):
    """peft's target_modules (a regex string, or names as a list or set) in a form that compares by content."""
    return targets if isinstance(targets, str) or targets is None else set(targets)


NONLINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
# Sublayers that get an adapter: after attention and feed-forward (Houlsby), or feed-forward only (Pfeiffer).
PER_LAYER = {"both": ("attention", "ffn"), "ffn": ("ffn",)}
BERT_TARGETS = {"attention": "attention.output.dense", "ffn": "output.dense"}


class BottleneckAdapter(nn.Module):
    """h [..., width] -> h + up(act(down(h))); ``up`` starts at (or near) zero, so at first h -> h."""

    def __init__(self, width: int, size: int, nonlinearity: str, init_scale: float):
        super().__init__()
        self.down = nn.Linear(width, size)
        self.act = NONLINEARITIES[nonlinearity]()
        self.up = nn.Linear(size, width)
        nn.init.normal_(self.up.weight, std=init_scale)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class Adapted(nn.Module):
    """x -> adapter(base(x)): a pretrained projection followed by its bottleneck adapter."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


class Bottleneck:
    """Houlsby bottleneck adapters (Houlsby et al., 2019); only the adapters (and optionally every LayerNorm) train.

    Written here because peft has no bottleneck adapter and ``adapters`` (AdapterHub) does not support transformers 5.
    Each module named by ``targets`` (sublayer -> module-name suffix, BERT names by default) is replaced by
    ``adapter(module(x))``; a module matching several suffixes belongs to the longest, so ``output.dense``
    leaves ``attention.output.dense`` to the attention sublayer. ``per_layer`` picks the sublayers:
    ``both`` (Houlsby) or ``ffn`` (Pfeiffer). In HF BERT the adapter then sits on the sublayer output
    before its dropout, residual add and LayerNorm (Houlsby's code applies it after the dropout).
    """

    cached_below = 0  # the whole encoder runs on every pass (no layer cache)

    def __init__(
        self,
        size: int = 64,
        nonlinearity: str = "relu",
        per_layer: str = "both",
        targets: dict[str, str] | None = None,
        train_layer_norm: bool = False,
        init_scale: float = 0.0,
    ):
        check_int("strategy.size", size, 1, rule="an integer >= 1 (the bottleneck width)")
        if nonlinearity not in NONLINEARITIES:
            raise ConfigError(
                f"strategy.nonlinearity={nonlinearity!r} is unknown; choose one of {', '.join(NONLINEARITIES)}."
            )
        if per_layer not in PER_LAYER:
            raise ConfigError(f"strategy.per_layer={per_layer!r} is unknown; choose one of {', '.join(PER_LAYER)}.")
        targets = dict(targets or BERT_TARGETS)
        missing = [sublayer for sublayer in PER_LAYER[per_layer] if sublayer not in targets]
        if missing:
            raise ConfigError(f"strategy.per_layer={per_layer} needs strategy.targets.{missing[0]}, a module-name suffix.")
        check_number("strategy.init_scale", init_scale, low=0, rule="a number >= 0 (0: starts as identity)")
        self.settings = dict(size=size, nonlinearity=nonlinearity, per_layer=per_layer, targets=targets,
                             train_layer_norm=bool(train_layer_norm))
        self.init_scale = init_scale

    def apply(self, encoder: nn.Module) -> nn.Module:
        encoder.requires_grad_(False)
        if self.settings["train_layer_norm"]:
            norms = [module for module in encoder.modules() if isinstance(module, nn.LayerNorm)]
            if not norms:
                raise ConfigError(f"strategy.train_layer_norm=true, but {type(encoder).__name__} has no nn.LayerNorm.")
            for norm in norms:
                norm.requires_grad_(True)
        for name in self._adapted_names(encoder):
            base = encoder.get_submodule(name)
            if not isinstance(base, nn.Linear):
                raise ConfigError(f"strategy.targets names {name!r}, a {type(base).__name__}; adapters follow nn.Linear.")
            adapter = BottleneckAdapter(base.out_features, self.settings["size"], self.settings["nonlinearity"],
                                        self.init_scale).to(base.weight.device, base.weight.dtype)
            parent, _, attribute = name.rpartition(".")
            setattr(encoder.get_submodule(parent), attribute, Adapted(base, adapter))
        return encoder

    def _adapted_names(self, encoder: nn.Module) -> list[str]:
        """Names of the modules that get an adapter, each matched to its longest target suffix (a sublayer's
        architecture target where its BERT-style default matches nothing; the settings then record it)."""
        targets = self.settings["targets"]
        found = _by_suffix(encoder, targets)
        architecture = architecture_targets(encoder, "bottleneck") or {}
        resolved = {sublayer: architecture[sublayer] if suffix == BERT_TARGETS.get(sublayer) and not found[sublayer]
                    and sublayer in architecture else suffix for sublayer, suffix in targets.items()}
        if resolved != targets:
            targets = self.settings["targets"] = resolved
            found = _by_suffix(encoder, targets)
        for sublayer in PER_LAYER[self.settings["per_layer"]]:
            if not found[sublayer]:
                raise ConfigError(
                    f"strategy.targets.{sublayer}={targets[sublayer]!r} matches no module of {type(encoder).__name__}.\n"
                    f"Module names this encoder has (match by suffix, e.g. 'attention.output.dense'): "
                    f"{', '.join(module_names(encoder))}. Set strategy.targets accordingly."
                )
        return [name for sublayer in PER_LAYER[self.settings["per_layer"]] for name in found[sublayer]]

    def save(self, encoder: nn.Module, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        trained = _trained_weights(encoder)
        save_file(trained, directory / "bottleneck.safetensors")  # adapters (and LayerNorms when they train)
        (directory / "bottleneck.json").write_text(json.dumps(self.settings, indent=2))

    def load(self, encoder: nn.Module, directory: Path) -> None:
        directory = Path(directory)
        saved = json.loads((directory / "bottleneck.json").read_text())
        if saved != self.settings:
            raise ConfigError(
                f"The adapter in {directory} was trained with {saved}, not {self.settings}; "
                "build the model with the strategy it was trained with."
            )
        state = load_file(directory / "bottleneck.safetensors")
        expected = {name: tuple(p.shape) for name, p in encoder.named_parameters() if p.requires_grad}
        found = {name: tuple(t.shape) for name, t in state.items()}
        differ = sorted(name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name))
        if differ:
            raise ConfigError(
                f"The adapter in {directory} does not fit this encoder (weights {differ[:5]} differ); "
                "build the model with the encoder and strategy it was trained with."
            )
        encoder.load_state_dict(state, strict=False)


def _by_suffix(encoder: nn.Module, targets: dict[str, str]) -> dict[str, list[str]]:
    """sublayer -> names of the modules whose name ends with its suffix (a module matching several: the longest)."""
    found: dict[str, list[str]] = {sublayer: [] for sublayer in targets}
    for name, _ in encoder.named_modules():
        matches = [sublayer for sublayer, suffix in targets.items() if f".{name}".endswith(f".{suffix}")]
        if matches:
            found[max(matches, key=lambda sublayer: len(targets[sublayer]))].append(name)
    return found


def module_names(model: nn.Module) -> list[str]:
    """Distinct last components of the names of ``model``'s leaf modules, sorted."""
    leaves = (name for name, module in model.named_modules() if name and not any(module.children()))
    return sorted({name.rsplit(".", 1)[-1] for name in leaves})


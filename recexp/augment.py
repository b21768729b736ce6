"""``tail=augment``: the texts of tail items are extended before a text model reads them.

Tail items are those outside the head of the split's training popularity (the scenario's
``head_fraction``, as in the stage segments); items never trained on are tail items. Each tail item's
text becomes ``original + " " + extra``, where ``extra`` is

* ``generate``: what a Hugging Face causal or seq2seq model (``generator``: by default the packaged
  SmolLM2-135M-Instruct, de-quantised 4-bit weights; any model id, folder or ``.gguf`` file) writes,
  greedily, for ``prompt`` filled with the item's fields, as the user's message in the generator's chat
  template where its tokenizer has one (instruct models). Each output is cached on disk as one JSON file
  keyed by the generator's fingerprint (sha256 over its config, vocabulary and weights), whether the chat
  template wrapped it, the prompt template, ``max_new_tokens`` and the filled prompt; a file failing its
  sha256 is reported and regenerated.
* ``keywords``: the words (three letters or more) of the item's nearest items' texts (cosine of the
  packaged all-MiniLM-L6-v2 embeddings) that are neither English stop words (scikit-learn's list) nor in
  its own text, ranked by summed similarity times count (ties: alphabetical).

:class:`Augment` is applied once per built model by :func:`recexp.run.model_factory` (``tail.wrap(model)``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from recexp.cache import DamagedCache, model_fingerprint, sha256
from recexp.data.text import render_texts, template_fields
from recexp.errors import ConfigError, check_int, check_number
from recexp.files import atomic_file
from recexp.interfaces import Recommender, Split
from recexp.models.text.encoder import TextEncoder, weight_progress_bars, weights_dtype
from recexp.models.text.weights import resolve
from recexp.scenarios.common import head_items
from recexp.strategies import Frozen
from recexp.tail import Wrapped

log = logging.getLogger(__name__)
METHODS = ("generate", "keywords")
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
SIMILARITY_ROWS = 1024  # tail items compared with every item at once (bounds memory at rows x n_items)


class Augment:
    """``tail=augment``: tail items' texts extended by generated text or by their neighbours' keywords.

    ``describe()`` counts the tail items whose text the latest augmentation extended and, for
    ``generate``, the texts generated and read from the cache over the run.
    """

    def __init__(
        self,
        method: str = "keywords",
        generator: str | None = "packaged:smollm2",
        prompt: str = "Describe the movie {movie_title} ({release_year}), genres {class}, in one sentence:",
        max_new_tokens: int = 32,
        batch_size: int = 16,
        dtype: str = "fp32",
        keywords: int = 5,
        neighbours: int = 10,
        head_fraction: float = 0.2,
        cache_dir: str | None = None,
        models_dir: str | None = None,
        progress: bool = True,
        run_device: str = "auto",
    ):
        if method not in METHODS:
            raise ConfigError(f"tail.method={method!r} is unknown for tail=augment; choose one of {', '.join(METHODS)}.")
        self.method, self.prompt = method, prompt
        self.head_fraction = check_number("tail.head_fraction", head_fraction, above=0, below=1)
        self.max_new_tokens = check_int("tail.max_new_tokens", max_new_tokens, 1)
        self.batch_size = check_int("tail.batch_size", batch_size, 1)
        weights = weights_dtype(dtype, run_device, "tail.dtype")
        self.keywords, self.neighbours = check_int("tail.keywords", keywords, 1), check_int("tail.neighbours", neighbours, 1)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.progress = progress
        self.generator_name = generator
        self.generator: Generator | None = None
        if method == "generate":
            if not generator:
                raise ConfigError("tail.method=generate needs tail.generator: packaged:smollm2, a local Hugging Face model "
                                  "folder (config.json, weights, tokenizer), a model id or a .gguf file; or use tail.method=keywords.")
            weight_progress_bars(progress)
            self.generator = Generator(generator, self.cache_dir, models_dir, weights)
        self._encoder: TextEncoder | None = None
        self.items_augmented = 0

    def describe(self) -> dict[str, Any]:
        if self.generator is None:
            return {"tail": "augment", "tail_method": self.method, "tail_keywords": self.keywords,
                    "tail_neighbours": self.neighbours, "tail_items_augmented": self.items_augmented}
        return {"tail": "augment", "tail_method": self.method, "tail_generator": self.generator_name,
                "tail_dtype": str(self.generator.model.dtype).removeprefix("torch."),
                "tail_max_new_tokens": self.max_new_tokens, "tail_items_augmented": self.items_augmented,
                "tail_generated": self.generator.generated, "tail_cache_hits": self.generator.cache_hits}

    def wrap(self, model: Recommender) -> Augmented:
        if not isinstance(model.encoder, TextEncoder):
            raise ConfigError(
                f"tail=augment extends item texts, but model {model.name} reads no item text. Use a text model "
                "(text_tower, fusion, lm_classifier, text_zero_shot), or tail=rerank / tail=reweight."
            )
        return Augmented(model, self)

    def augment(self, split: Split, device: torch.device, progress: bool = False) -> Split:
        """``split`` with a dataset whose ``item_text`` is extended for the tail items (``split`` is left as it is)."""
        texts = split.dataset.item_text
        if texts is None:
            raise ConfigError("tail=augment extends item texts, but the dataset has none: set dataset.item_template "
                              "(e.g. '{movie_title} ({release_year}). Genres: {class}').")
        tail = np.setdiff1d(np.arange(split.n_items), head_items(split.train, split.n_items, self.head_fraction))
        if self.generator is not None:
            prompts = self._prompts(split)
            extras = self.generator.write([prompts[i] for i in tail], self.prompt, self.max_new_tokens,
                                          self.batch_size, device, progress)
        else:
            extras = neighbour_keywords(list(texts), tail, self.keywords, self.neighbours, self._embeddings(texts, device))
        extended = list(texts)
        for item, extra in zip(tail.tolist(), extras):
            if extra:
                extended[item] = f"{texts[item]} {extra}"
        self.items_augmented = sum(1 for extra in extras if extra)
        log.info("tail=augment (%s): extended the text of %d of %d tail items.", self.method, self.items_augmented, len(tail))
        return dataclasses.replace(split, dataset=dataclasses.replace(split.dataset, item_text=extended))

    def _prompts(self, split: Split) -> list[str]:
        """One filled ``prompt`` per item, from the item features."""
        features = split.dataset.item_features
        if features is None:
            raise ConfigError("tail.prompt is filled from item features, but the dataset has no .item file.")
        for name in template_fields(self.prompt):
            if name not in features.columns:
                raise ConfigError(f"tail.prompt names field {name!r}, which the item features lack; available fields: "
                                  f"{', '.join(map(str, features.columns))}. Fix tail.prompt.")
        return render_texts(self.prompt, features, "item")

    def _embeddings(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """[n_items, dim] unit embeddings of ``texts`` by the packaged MiniLM (cached under ``cache_dir/embeddings``)."""
        if self._encoder is None:
            cache = str(self.cache_dir / "embeddings") if self.cache_dir else None
            self._encoder = TextEncoder(cache_dir=cache, progress=self.progress).adapt(Frozen())
        try:
            return F.normalize(self._encoder.to(device).embed(list(texts)).float(), dim=1).cpu()
        finally:
            self._encoder.to("cpu")


class Augmented(Wrapped):
    """A recommender that fits, attaches and loads on the split with augmented tail texts; scoring and every
    other member of the contract pass through to the inner model."""

    def fit(self, split: Split, ctx: Any) -> None:
        self.inner.fit(self.settings.augment(split, ctx.device, ctx.progress), ctx)

    def attach(self, split: Split, device: torch.device) -> None:
        """Score ``split`` (its tail texts augmented) without training on it."""
        self.inner.attach(self.settings.augment(split, device), device)

    def load(self, directory: Any, split: Split, device: Any = "cpu") -> None:
        self.inner.load(directory, self.settings.augment(split, torch.device(device)), device)


class Generator:
    """A Hugging Face causal or seq2seq language model that writes text greedily, each output cached on disk;
    prompts go through its chat template where its tokenizer has one."""

    def __init__(self, name_or_path: str, cache_dir: Path | None, models_dir: str | None = None,
                 dtype: torch.dtype = torch.float32):
        path = resolve(os.path.expanduser(name_or_path), models_dir)
        try:
            config = AutoConfig.from_pretrained(path)
            self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = (AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM).from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"Could not load tail.generator {name_or_path!r}: {error}\nOn an offline machine, point tail.generator "
                "at a local folder holding config.json, the weights and the tokenizer files."
            ) from error
        self.model.eval().requires_grad_(False)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.pad_token is None:
            raise ConfigError(f"tail.generator {name_or_path!r} has a tokenizer with neither a padding nor an "
                              "end-of-text token, so its prompts cannot be batched; use another generator.")
        if not self.seq2seq:
            self.tokenizer.padding_side = "left"  # a causal model continues where each prompt ends
        self.chat = self.tokenizer.chat_template is not None
        self.cache_dir = cache_dir
        self.generated = 0
        self.cache_hits = 0
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """sha256 over the config (not its location), the tokenizer vocabulary and the weights."""
        if self._fingerprint is None:
            config = {k: v for k, v in self.model.config.to_dict().items() if k != "_name_or_path"}
            self._fingerprint = model_fingerprint(json.dumps(config, sort_keys=True, default=str).encode(), self.tokenizer, self.model)
        return self._fingerprint

    def write(self, prompts: list[str], template: str, max_new_tokens: int, batch_size: int,
              device: torch.device, progress: bool = False) -> list[str]:
        """One text per prompt: read from the cache where it holds one, else generated, ``batch_size`` prompts a
        call, and cached batch by batch (a run stopped midway keeps the texts written so far)."""
        paths = [self._cache_path(template, max_new_tokens, prompt) for prompt in prompts]
        texts = [_read_cached(path, prompt) for path, prompt in zip(paths, prompts)]
        missing = [i for i, text in enumerate(texts) if text is None]
        self.cache_hits += len(prompts) - len(missing)
        if not missing:
            return texts
        self.model.to(device)
        try:
            for start in tqdm(range(0, len(missing), batch_size), desc="tail=augment", disable=not progress, leave=False):
                batch = missing[start : start + batch_size]
                for i, text in zip(batch, self._generate([prompts[i] for i in batch], max_new_tokens, device)):
                    texts[i] = text
                    if paths[i] is not None:
                        _save_atomically(paths[i], prompts[i], text)
                self.generated += len(batch)
        finally:
            self.model.to("cpu")
        return texts

    @torch.no_grad()
    def _generate(self, prompts: list[str], max_new_tokens: int, device: torch.device) -> list[str]:
        """prompts [n] -> n greedy continuations (whitespace collapsed), in one call."""
        batch = self.tokenizer([self._message(p) for p in prompts], padding=True, return_tensors="pt",
                               return_token_type_ids=False, add_special_tokens=not self.chat).to(device)
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.tokenizer.pad_token_id)
        new = out if self.seq2seq else out[:, batch["input_ids"].shape[1] :]
        return [" ".join(text.split()) for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _message(self, prompt: str) -> str:
        """The text the model reads for ``prompt``: the user's turn of its chat template, or the prompt itself."""
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)

    def _cache_path(self, template: str, max_new_tokens: int, prompt: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps([self.fingerprint(), template, max_new_tokens, prompt] + (["chat"] if self.chat else []))
        return self.cache_dir / f"{sha256(key.encode())[:32]}.json"


def _read_cached(path: Path | None, prompt: str) -> str | None:
    """The text cached at ``path`` for ``prompt``, or None: no cache, no file, or a damaged one (a warning)."""
    if path is None or not path.is_file():
        return None
    try:
        return read_generated(path, prompt)
    except DamagedCache as err:
        log.warning("Augmentation cache damaged: %s; generating it again.", err)
        return None


def read_generated(path: Path, prompt: str) -> str:
    """The text cached at ``path``, or :class:`DamagedCache` when the file is unreadable, was written for
    another prompt, or its text differs from the sha256 recorded with it."""
    try:
        entry = json.loads(path.read_bytes())
        text, recorded, written_for = entry["text"], entry["sha256"], entry["prompt"]
        intact = isinstance(text, str) and recorded == sha256(text.encode("utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DamagedCache(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    if not intact:
        raise DamagedCache(f"{path} does not match its recorded sha256 (truncated or overwritten)")
    if written_for != prompt:
        raise DamagedCache(f"{path} was written for another prompt")
    return text


def _save_atomically(path: Path, prompt: str, text: str) -> None:
    with atomic_file(path) as staged:
        staged.write_text(json.dumps({"prompt": prompt, "text": text, "sha256": sha256(text.encode("utf-8"))}), encoding="utf-8")


def neighbour_keywords(texts: list[str], items: np.ndarray, count: int, neighbours: int,
                       embeddings: torch.Tensor) -> list[str]:
    """For each of ``items``: up to ``count`` words (space-separated) from the texts of its ``neighbours``
    nearest other items by cosine of ``embeddings`` [n_items, dim] (unit rows), of three letters or more,
    neither stop words nor in its own text, ranked by the sum over neighbours of similarity x count
    (positive sums only; ties: alphabetical)."""
    words = [WORD.findall(text.lower()) for text in texts]
    counts = [Counter(w for w in found if len(w) > 2 and w not in ENGLISH_STOP_WORDS) for found in words]
    k = min(neighbours, len(texts) - 1)
    extras = []
    for start in range(0, len(items), SIMILARITY_ROWS):
        rows = torch.as_tensor(items[start : start + SIMILARITY_ROWS], dtype=torch.long)
        similarity = embeddings[rows] @ embeddings.T  # [rows, n_items]
        similarity[torch.arange(len(rows)), rows] = -math.inf
        values, nearest = similarity.topk(k, dim=1)
        for item, weights, others in zip(rows.tolist(), values.tolist(), nearest.tolist()):
            own = set(words[item])
            scores: Counter[str] = Counter()
            for weight, other in zip(weights, others):
                for word, n in counts[other].items():
                    if word not in own:
                        scores[word] += weight * n
            ranked = sorted(((w, s) for w, s in scores.items() if s > 0), key=lambda pair: (-pair[1], pair[0]))
            extras.append(" ".join(word for word, _ in ranked[:count]))
    return extras

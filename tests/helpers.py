"""Plain helpers that several test modules share: repository paths, tiny saved models, model builders, fakes.

Fixtures live in ``conftest.py``; test modules import from here, never from one another. transformers is
imported where a tiny model is saved, so that a run of tests that need none starts seconds sooner.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from recexp.config import build
from recexp.evaluate import Evaluator
from recexp.interfaces import Dataset, FitContext, Recommender, RecommenderBase
from recexp.scenarios.common import holdout_split
from recexp.train import TrainerConfig

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def recexp(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m recexp`` from the repository, caching under ``cwd``, W&B offline."""
    env = {**os.environ, "RECEXP_CACHE_DIR": str(cwd / "cache"), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "recexp", *overrides, "progress=false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


# --- encoders and strategies

TEXTS = ["Toy Story (1995). Genres: Animation Children's Comedy", "GoldenEye (1995). Genres: Action", "Heat"]


def save_tiny_bert(directory: Path) -> Path:
    """A 2-layer, 32-wide random BERT with the packaged MiniLM tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recexp.models.text.encoder import default_model_path

    if not (directory / "config.json").is_file():
        torch.manual_seed(0)
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        BertModel(config).save_pretrained(directory)
        AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(directory)
    return directory


def save_tiny_llama(directory: Path) -> Path:
    """A 2-layer, 32-wide random LlamaModel (2 query heads sharing 1 key/value head, as SmolLM2's grouped-query
    attention) with the packaged MiniLM tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from recexp.models.text.encoder import default_model_path

    if not (directory / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id)
        LlamaModel(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def save_tiny_causal_llama(directory: Path) -> Path:
    """A 2-layer, 32-wide random LlamaForCausalLM with an untied language-model head and the packaged MiniLM
    tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from recexp.models.text.encoder import default_model_path

    if not (directory / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.sep_token_id, tie_word_embeddings=False)
        LlamaForCausalLM(config).save_pretrained(directory)
        tokenizer.eos_token = tokenizer.sep_token
        tokenizer.save_pretrained(directory)
    return directory


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-level spelling: one printable character for each of the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    spelling = dict(zip(printable, printable)) | {b: 256 + i for i, b in enumerate(rest)}
    return [chr(spelling[b]) for b in range(256)]


def write_tiny_gguf(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2, inter: int = 64) -> Path:
    """A random fp32 LLaMA as a GGUF file, with a byte-level BPE tokenizer (256 bytes, one merge, end-of-text)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = [*_byte_alphabet(), "Ġt", "<|endoftext|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])  # normal tokens, then one control token
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    shapes = {"attn_q": (hidden, hidden), "attn_k": (hidden, hidden), "attn_v": (hidden, hidden), "attn_output": (hidden, hidden),
              "ffn_gate": (inter, hidden), "ffn_up": (inter, hidden), "ffn_down": (hidden, inter)}
    writer.add_tensor("token_embd.weight", rng.normal(0, 0.1, (len(tokens), hidden)).astype(np.float32))
    for layer in range(layers):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name, shape in shapes.items():
            writer.add_tensor(f"blk.{layer}.{name}.weight", rng.normal(0, 0.1, shape).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def save_tiny_generator(folder: Path, seq2seq: bool = False) -> Path:
    """A random one-layer GPT-2 (or T5) over the packaged MiniLM's WordPiece vocabulary, saved to ``folder``."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    from recexp.models.text.encoder import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    if seq2seq:
        model = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_layers=1,
                                                    num_heads=2, decoder_start_token_id=tokenizer.pad_token_id, **special))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                                           bos_token_id=tokenizer.cls_token_id, **special))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def strategy_from_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"strategy={name}", *overrides])
    return build(cfg.strategy)


# --- text models on the tiny BERT

FAST = {  # keeps each fit to seconds on CPU
    "text_tower": ["model.module.samples_per_epoch=512"],
    "fusion": ["model.module.samples_per_epoch=512"],
    "lm_classifier": ["model.module.samples_per_epoch=64", "model.module.rerank=4", "encoder.max_length=48"],
}
EVALUATOR = Evaluator(ks=[10], metrics=["ndcg", "auc", "gauc", "logloss", "rmse", "mae"])


class Recorder:
    def __init__(self):
        self.lines: list[tuple[dict, int | None]] = []

    def log(self, metrics, step=None):
        self.lines.append((dict(metrics), step))

    def summary(self, metrics):
        pass

    def finish(self, exit_code=0):
        pass


def build_model(name, strategy, tiny_bert, cache_dir, *overrides, epochs=1):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"model={name}", f"strategy={strategy}", f"cache_dir={cache_dir}",
                       f"encoder.name_or_path={tiny_bert}", f"trainer.max_epochs={epochs}",
                       "progress=false", *FAST[name], *overrides],
        )
    return build(cfg.model, trainer=build(cfg.trainer))


def context(tmp_path, seed=2020) -> FitContext:
    return FitContext(logger=Recorder(), device=torch.device("cpu"), run_dir=tmp_path, seed=seed, progress=False)


def ranking_metrics(model, split, stage="test"):
    return EVALUATOR.evaluate(model, split, stage, segments=("all", "cold", "warm")).metrics


# --- RecBole models

ONE_EPOCH = TrainerConfig(max_epochs=1, batch_size=8192)  # few, large batches: quick on a busy CPU


class RecordingLogger:
    def __init__(self):
        self.rows: list[tuple[int | None, dict]] = []

    def log(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def summary(self, metrics):
        pass

    def finish(self, exit_code=0):
        pass


def fit(model: Recommender, split, run_dir: Path) -> RecordingLogger:
    logger = RecordingLogger()
    model.fit(split, FitContext(logger, torch.device("cpu"), run_dir, seed=2020, progress=False))
    return logger


# --- hand-made splits and scores for the evaluator

class FixedScores(RecommenderBase):
    def __init__(self, scores):
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def score(self, users, stage):
        return self.scores[users]


def frame(pairs, ratings=None):
    users, items = zip(*pairs) if pairs else ((), ())
    return pd.DataFrame({"user": users, "item": items, "rating": 1.0 if ratings is None else ratings, "timestamp": 0.0})


def tiny_split(train, valid, test, n_users=2, n_items=6, segments=None, test_ratings=None, threshold=None):
    dataset = Dataset(
        name="tiny",
        inter=frame(train + valid + test),
        user_tokens=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        item_tokens=np.array([f"i{i}" for i in range(n_items)], dtype=object),
    )
    everything = np.arange(n_items)
    segs = segments or {"all": everything, "head": np.array([0, 1]), "tail": np.arange(2, n_items)}
    return holdout_split(
        dataset, frame(train), frame(valid, 5.0 if threshold else None), frame(test, test_ratings),
        {"valid": everything, "test": everything}, {"valid": segs, "test": segs}, threshold,
    )

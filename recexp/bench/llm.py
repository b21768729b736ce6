"""The decoder LLM's hot paths: loading the packaged SmolLM2, ``llm_ranker``'s LoRA training against a bare
transformers + peft loop, and a whole few-shot ``llm_ranker`` run.

``llm_load``: seconds to build the encoder from the packaged GGUF file the first time (de-quantising) and
from its cached folder afterwards (best of 3 fresh loads), against a target of 3 s.

``llm_loop``: training tokens per second of ``model=llm_ranker strategy=lora encoder.dtype=auto`` through
recexp's loop (one epoch over K=64 TALLRec samples, batches of 8), against a loop written here with
transformers, peft and torch alone doing the same work per step: the same prompts and answers in the same
batches, padded on the left with each text's own positions, LoRA r 8 on q_proj and v_proj over weights of recexp's
dtype (``auto``: bf16 where the CPU has bf16 instructions, else fp32),
the language model's logits at the answer positions only (``logits_to_keep``), cross-entropy on the answer
tokens, AdamW. Rounds interleaved, best of each; validation reads 16 pairs (it is not timed). Target:
recexp at least 0.95x.

``llm_run``: wall seconds of ``python -m recexp scenario=tallrec scenario.shots=256 model=llm_ranker
strategy=lora encoder.dtype=auto`` as a user starts it (training, validation, the 1,000 test pairs), with
its AUC and GAUC, against a target of 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from recexp.interfaces import TRAIN, FitContext
from recexp.tracking import NullLogger

LOAD_TARGET_S = 3.0
PARITY_TARGET = 0.95
RUN_TARGET_S = 600.0
LLM = ["model=llm_ranker", "scenario=tallrec", "strategy=lora", "encoder.dtype=auto"]


def bench_llm_load(out: Path, rounds: int = 3) -> dict[str, Any]:
    from recexp.models.text.encoder import TextEncoder

    def load() -> float:
        start = time.perf_counter()
        TextEncoder("packaged:smollm2", pooling="last", padding_side="left", models_dir=str(out / "cache" / "models"),
                    progress=False)
        return time.perf_counter() - start

    first = load()
    cached = min(load() for _ in range(rounds))
    return {"first_s": first, "cached_s": cached, "target_s": LOAD_TARGET_S, "within_target": cached < LOAD_TARGET_S}


def bench_llm_loop(out: Path, rounds: int = 2, shots: int = 64) -> dict[str, Any]:
    """recexp's LoRA llm_ranker epoch against :func:`bare_llm_epoch`, ``rounds`` epochs each, interleaved."""
    from recexp.bench.runs import compose_model

    model, split = compose_model("llm_ranker", [*LLM[1:], f"scenario.shots={shots}", "trainer.max_epochs=1",
                                                "trainer.patience=1", "trainer.grad_accum=1"], out)
    valid = split.parts["valid"].iloc[:16]  # validation is not timed: 16 samples and their histories
    history = split.parts["valid_history"]
    split = dataclasses.replace(split, parts={**split.parts, "valid": valid,
                                              "valid_history": history[history["sample"].isin(valid["sample"])]})
    ours, bare = [], []
    for round_ in range(rounds):
        model.fit(split, FitContext(NullLogger(), torch.device("cpu"), out / "llm_loop", round_, progress=False))
        ours.append(model.module.encoder.tokens_trained / model.stats.train_seconds)
        bare.append(bare_llm_epoch(model.module, split, round_, model.used.batch_size))
    ratio = max(ours) / max(bare)
    return {"recexp_tokens_per_s": max(ours), "bare_tokens_per_s": max(bare), "ratio": ratio, "target": PARITY_TARGET,
            "within_target": ratio >= PARITY_TARGET, "shots": shots, "threads": torch.get_num_threads(),
            "dtype": str(model.module.encoder.precision).removeprefix("torch."),
            "all_recexp": ours, "all_bare": bare}


def bare_llm_epoch(module, split, seed: int, batch_size: int, lr: float = 1e-4) -> float:
    """Training tokens per second of one LoRA epoch written with transformers, peft and torch only, over the
    prompts and batches ``module`` (a prepared LLMRanker) trains on."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    path = module.encoder.model.name_or_path
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=module.encoder.precision),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))
    data = module.train_data(split, seed)
    data.group_by_length(batch_size)  # the batches recexp's loop trains on, prompts of similar length together
    batches = [data.__getitems__(list(range(i, min(i + batch_size, len(data))))) for i in range(0, len(data), batch_size)]
    texts = []
    for rows, items, labels in batches:  # the prompts recexp reads (tokenising is not timed in either loop)
        prompts = module.prompt_ids(TRAIN, rows.tolist(), items.tolist())
        texts.append([p + module.answer_ids[0 if y > 0.5 else 1] for p, y in zip(prompts, labels.tolist())])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    pad, answer = module.encoder.tokenizer.pad_token_id, len(module.answer_ids[0])
    model.train()
    tokens, start = 0, time.perf_counter()
    for batch in texts:
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(t)) + t for t in batch])
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in batch])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=answer + 1).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, -answer:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    return tokens / (time.perf_counter() - start)


def bench_llm_run(out: Path) -> dict[str, Any]:
    """Wall time of a K=256 LoRA llm_ranker run started as a user starts it."""
    run_dir = out / "llm_run"
    command = [sys.executable, "-m", "recexp", *LLM, "scenario.shots=256", "strategy.config.lora_dropout=0.05", "seed=0",
               "logger=none", "progress=false", f"hydra.run.dir={run_dir}", f"cache_dir={out / 'cache'}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    record = json.loads((run_dir / "results.json").read_text())
    return {"wall_s": wall, "target_s": RUN_TARGET_S, "within_target": wall < RUN_TARGET_S,
            "test_auc": record["metrics"]["test"]["auc"], "test_gauc": record["metrics"]["test"]["gauc"],
            "train_seconds": record["cost"]["train_seconds"], "eval_seconds": record["cost"]["eval_seconds"],
            "epochs_run": record["effective"].get("epochs_run"), "dtype": record["cost"].get("encoder_dtype")}

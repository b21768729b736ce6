"""Trained encoders: recexp's loop against a bare transformers + peft loop, and the cost ladder of strategies.

``bare_loop``: interactions per second of one item-organised epoch of ``model=text_tower strategy=lora``
through recexp's loop, against a plain loop written here with transformers, peft and torch alone that
does the same work per step (encode 64 item texts once with LoRA, pool, project; users from a table of
frozen encodings; BPR on every interaction of those items with a negative among them; AdamW), under
the same precision and threads, epochs interleaved, best of each. Target: recexp at least 0.95x.

``strategies``: one fine-tuning epoch of ``model=text_tower`` under frozen / partial / LoRA / full
fine-tuning, each a fresh ``python -m recexp`` run as a user starts it: interactions and encoder tokens
per second, seconds, trainable weights and peak memory per phase, and whether the ladder frozen <
partial < LoRA < full fine-tuning holds in cost.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from recexp.interfaces import FitContext, Split
from recexp.tracking import NullLogger

PARITY_TARGET = 0.95  # recexp's interactions/s over the bare loop's
ITEMS_PER_STEP = 64  # text_tower's default batch while its encoder trains


def bench_bare_loop(out: Path, rounds: int = 4) -> dict[str, Any]:
    """recexp's LoRA text tower against :func:`bare_epoch`, ``rounds`` epochs each, interleaved."""
    from recexp.bench.runs import compose_model

    model, split = compose_model("text_tower", ["strategy=lora", "scenario=cold_item", "trainer.max_epochs=1",
                                                "trainer.patience=1"], out)
    ours, bare, precision = [], [], "no"
    for round_ in range(rounds):
        model.fit(split, FitContext(NullLogger(), torch.device("cpu"), out / "bare_loop", round_, progress=False))
        ours.append(model.stats.samples / model.stats.train_seconds)
        precision = model.used.mixed_precision
        bare.append(bare_epoch(split, model.module.texts, round_, precision))
    ratio = max(ours) / max(bare)
    return {"recexp_interactions_per_s": max(ours), "bare_interactions_per_s": max(bare), "ratio": ratio,
            "target": PARITY_TARGET, "within_target": ratio >= PARITY_TARGET, "precision": precision,
            "threads": torch.get_num_threads(), "all_recexp": ours, "all_bare": bare}


def bare_epoch(split: Split, texts: list[str], seed: int, precision: str, lr: float = 1e-3) -> float:
    """Interactions per second of one item-organised LoRA epoch written with transformers, peft and torch only."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    from recexp.models.text.encoder import default_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        encoder = get_peft_model(AutoModel.from_pretrained(default_model_path()),
                                 LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1))
    item_proj, user_proj = torch.nn.Linear(384, 64), torch.nn.Linear(384, 64)

    def encode(batch: list[str]) -> torch.Tensor:
        tokens = tokenizer(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    encoder.eval()
    with torch.no_grad():  # the user side: pooled frozen encodings of each user's history (not timed)
        table = torch.cat([encode(texts[i : i + 64]).float() for i in range(0, len(texts), 64)])
    users, items = (torch.tensor(split.train[c].to_numpy()) for c in ("user", "item"))
    sums = torch.zeros(split.n_users, table.shape[1]).index_add_(0, users, table[items])
    counts = torch.bincount(users, minlength=split.n_users).float()
    by_item = {int(i): users[items == i] for i in items.unique()}
    lengths = {i: len(tokenizer(texts[i], truncation=True, max_length=64)["input_ids"]) for i in by_item}
    order = [list(by_item)[j] for j in torch.randperm(len(by_item)).tolist()]
    order = [i for w in range(0, len(order), 1024) for i in sorted(order[w : w + 1024], key=lengths.get)]
    params = [p for p in encoder.parameters() if p.requires_grad] + [*item_proj.parameters(), *user_proj.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr)
    encoder.train()
    seen, start = 0, time.perf_counter()
    for step in range(0, len(order), ITEMS_PER_STEP):
        chunk = order[step : step + ITEMS_PER_STEP]
        step_users = torch.cat([by_item[i] for i in chunk])
        positives = torch.cat([torch.full((len(by_item[i]),), k) for k, i in enumerate(chunk)])
        negatives = torch.randint(len(chunk), (len(step_users),))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            vectors = F.normalize(item_proj(encode([texts[i] for i in chunk])), dim=-1)
            own = table[torch.tensor(chunk)[positives]]
            pooled = (sums[step_users] - own) / (counts[step_users] - 1).clamp(min=1).unsqueeze(1)
            query = F.normalize(user_proj(pooled), dim=-1)
            margin = ((query * vectors[positives]).sum(1) - (query * vectors[negatives]).sum(1)) / 0.1
            loss = -F.logsigmoid(margin.float()).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(step_users)
    return seen / (time.perf_counter() - start)


LADDER = [("frozen", []), ("partial", []), ("lora", []), ("full_ft", ["trainer.lr=5e-5"])]


def bench_strategies(out: Path) -> dict[str, Any]:
    """One epoch of ``model=text_tower`` per strategy, each a fresh run; their cost figures and the ladder."""
    report: dict[str, Any] = {}
    for name, extra in LADDER:
        run_dir = out / "strategies" / name
        command = [sys.executable, "-m", "recexp", "model=text_tower", f"strategy={name}", "scenario=cold_item",
                   "trainer.max_epochs=1", "trainer.patience=1", "logger=none", "progress=false", *extra,
                   f"hydra.run.dir={run_dir}", f"cache_dir={out / 'cache'}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the {name} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        record = json.loads((run_dir / "results.json").read_text())
        cost = record["cost"]
        report[name] = {key: cost.get(key) for key in (
            "samples_per_second", "encoder_tokens_per_second", "train_seconds", "trainable_params", "peak_memory_mb",
            "peak_memory_mb_by_phase")}
        report[name]["test_cold_ndcg@10"] = record["segments"]["cold"]["ndcg@10"]
    speeds = [report[name]["samples_per_second"] for name, _ in LADDER]
    report["ladder_holds"] = all(a > b for a, b in zip(speeds, speeds[1:]))  # frozen fastest, full FT slowest
    return report

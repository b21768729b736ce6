"""``model=llm_ranker``: TALLRec's method, a causal LM asked whether the user will like the target item.

prompt:  TALLRec's instruction and input (github.com/SAI990323/TALLRec, ``preprocess_movie.py``):
         User Preference: "a", "b" / User Unpreference: "c" / Whether the user will like the target movie "t"?
         (history items oldest first, by their short names ``dataset.item_title_template``), written into the
         model's chat template where its tokenizer has one (instruct models), else into TALLRec's Alpaca
         template (``prompt.alpaca``, verbatim, including the ``# noqa: E501`` that TALLRec's released template
         carries inside its text).
score:   P(Yes) = softmax over the language-model logits of the first tokens of "Yes." and "No." at the answer
         position (TALLRec's ``evaluate.py``).
loss:    cross-entropy of the language model on the answer, "Yes." or "No." and the end-of-text token
         (``train_on_prompt``: on the prompt's tokens as well, as TALLRec's ``--train_on_inputs`` runs).

``strategy=frozen`` is a zero-shot LLM: nothing trains, and the scores of a list of prompts are cached on disk
with the encoder's embeddings (keyed by its weights and the prompts' tokens), so a sweep scores each stage once.
``lora`` (r 8, alpha 16 on q_proj and v_proj, as TALLRec, whose dropout 0.05 is
``strategy.config.lora_dropout``), ``ia3``, ``bottleneck``, ``partial`` and ``full_ft`` train; their scores
are kept in memory per pair and weights, so the final evaluation reads those the trainer's validation
computed with the kept weights. Prompts are tokenised once per pair, batched by length (training batches as transformers'
``group_by_length`` draws them) and padded on the left, so each batch is as long as its longest prompt and
every prompt ends at the answer position. A history too long for ``encoder.max_length`` loses its
oldest items, never the question. Ranking stages re-rank a shortlist as ``lm_classifier`` does.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from recexp.data.text import template_fields
from recexp.errors import ConfigError
from recexp.interfaces import TRAIN, Strategy
from recexp.models.text.encoder import TextEncoder
from recexp.models.text.lm_classifier import HistoryPairModel
from recexp.train import Batch

ANSWERS = ("Yes.", "No.")  # TALLRec's outputs, liked and not
PROMPT_TOKENS = 512  # TALLRec's cutoff_len, unless encoder.max_length is set
TEMPLATES = ("auto", "chat", "alpaca")
FIELDS = {"input": ("liked", "disliked", "target"), "alpaca": ("instruction", "input")}  # what each prompt template may name
# Trainer defaults: TALLRec's lr 1e-4 (micro-batches of 32 prompts there; 8 here, accumulated to 32).
DEFAULTS = dict(max_epochs=3, patience=1, batch_size=8, grad_accum=4, lr=1e-4, warmup_ratio=0.0, schedule="constant")
IGNORE = -100  # label of a token the loss skips


class LLMRanker(HistoryPairModel):
    loss = "lm"

    def __init__(
        self,
        encoder: TextEncoder,
        strategy: Strategy,
        instruction: str,
        input: str,
        alpaca: str,
        template: str = "auto",
        threshold: float = 4.0,
        history_items: int = 10,
        train_on_prompt: bool = False,
        rerank: int | None = 20,
        samples_per_epoch: int | None = None,
    ):
        if template not in TEMPLATES:
            raise ConfigError(f"model.module.template={template!r} is unknown; choose one of {', '.join(TEMPLATES)}.")
        for name, text in (("input", input), ("alpaca", alpaca)):
            unknown = sorted(set(template_fields(text)) - set(FIELDS[name]))
            if unknown:
                raise ConfigError(f"model.module.{name} names {', '.join(map(repr, unknown))}, which llm_ranker does not fill: "
                                  f"it fills {', '.join(FIELDS[name])}.")
        if encoder.lm_head is None:
            raise ConfigError(
                f"model=llm_ranker needs a causal language model, but {type(encoder.model).__name__} has no language-model "
                "head: set encoder=smollm2, or encoder.name_or_path to a causal LM."
            )
        if template == "chat" and encoder.tokenizer.chat_template is None:
            raise ConfigError("model.module.template=chat, but the encoder's tokenizer has no chat template: use alpaca or auto.")
        super().__init__(encoder.default_max_length(PROMPT_TOKENS).adapt(strategy), threshold, history_items, rerank,
                         samples_per_epoch)
        self.instruction, self.input, self.alpaca = instruction, input, alpaca
        self.chat = template == "chat" or (template == "auto" and encoder.tokenizer.chat_template is not None)
        self.train_on_prompt = train_on_prompt
        tokenizer = encoder.tokenizer
        self.answer_ids = [tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id] for a in ANSWERS]
        self.yes_no = [ids[0] for ids in self.answer_ids]  # first tokens of "Yes." and "No."
        if self.yes_no[0] == self.yes_no[1]:
            raise ConfigError("The encoder's tokenizer starts 'Yes.' and 'No.' with the same token; llm_ranker cannot tell them apart.")
        self._ids: dict[tuple[str, int, int], list[int]] = {}  # (table, row, item) -> prompt token ids
        self._scores: dict[str, dict[tuple[str, int, int], float]] = {}  # weights digest -> (table, row, item) -> score
        self._weights: str | None = None  # digest of the trainable weights; None once training changes them
        self.prefix: list[int] = []  # token ids every prompt starts with, run once per batch (prepare finds them)

    @property
    def zero_shot(self) -> bool:
        """Nothing trains (strategy=frozen): fitting only prepares."""
        return not self.encoder.trainable

    def trainer_defaults(self) -> dict:
        return DEFAULTS

    def prepare(self, split, device: torch.device) -> None:
        super().prepare(split, device)
        self._ids, self._scores, self._weights = {}, {}, None
        self.prefix = self._shared_prefix()

    def _shared_prefix(self) -> list[int]:
        """The token ids every prompt starts with (the system turn, the instruction, up to the first history
        title): those of two different prompts have in common, less their last (it may merge differently)."""
        if self.train_on_prompt:
            return []  # the loss reads every prompt token's prediction
        first, second = (self.encoder.tokenizer.encode(self.prompt([item], [1.0], item), add_special_tokens=not self.chat)
                         for item in (0, 1))
        common = next((n for n, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
        return first[: max(common - 1, 0)]

    def prompt(self, history: list[int], labels: list[float], item: int, keep: int | None = None) -> str:
        """The prompt text of a history (newest first, -1 padding; its ``keep`` newest items) and a target item."""
        real = [(i, y) for i, y in zip(history, labels) if i >= 0][:keep][::-1]  # oldest first, as TALLRec lists them
        liked = ", ".join(f'"{self.titles[i]}"' for i, y in real if y > 0.5)
        disliked = ", ".join(f'"{self.titles[i]}"' for i, y in real if y <= 0.5)
        text = self.input.format(liked=liked, disliked=disliked, target=f'"{self.titles[item]}"')
        if not self.chat:
            return self.alpaca.format(instruction=self.instruction, input=text)
        message = [{"role": "user", "content": f"{self.instruction}\n{text}"}]
        return self.encoder.tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, table: str, rows: list[int], items: list[int]) -> list[list[int]]:
        """Token ids of each pair's prompt, tokenised once; the oldest history items go while it is too long."""
        tokenizer, limit = self.encoder.tokenizer, self.encoder.max_length - max(len(a) for a in self.answer_ids)
        todo = [(r, i) for r, i in dict.fromkeys(zip(rows, items)) if (table, r, i) not in self._ids]
        if todo:
            history, labels = self.tables[table].gather(torch.tensor([r for r, _ in todo]))
            for (row, item), h, y in zip(todo, history.tolist(), labels.tolist()):
                keep = sum(i >= 0 for i in h)
                ids = tokenizer.encode(self.prompt(h, y, item), add_special_tokens=not self.chat)
                while len(ids) > limit and keep > 0:
                    keep -= 1
                    ids = tokenizer.encode(self.prompt(h, y, item, keep), add_special_tokens=not self.chat)
                if len(ids) > limit:
                    raise ConfigError(f"encoder.max_length={self.encoder.max_length} cannot hold llm_ranker's prompt without "
                                      f"its history ({len(ids)} tokens and the answer): raise it.")
                if ids[: len(self.prefix)] != self.prefix:
                    self.prefix = []  # a tokenizer that merges across it: every prompt runs whole
                self._ids[(table, row, item)] = ids
        return [self._ids[(table, r, i)] for r, i in zip(rows, items)]

    def _last_hidden(self, sequences: list[list[int]]) -> tuple[torch.Tensor, int]:
        """sequences [n] of token ids -> (last hidden states [n, L, dim] of what follows the shared prefix, left-padded,
        and the prefix's length), the prefix run once for all of them."""
        cut = len(self.prefix)
        rest = [s[cut:] for s in sequences]
        width = max(len(s) for s in rest)
        pad = self.encoder.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in rest], device=self.encoder.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in rest], device=ids.device)
        prefix = torch.tensor(self.prefix, device=ids.device) if cut else None
        return self.encoder.hidden_states(ids, mask, prefix), cut

    def _yes_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        """Prompts [n] -> [n] log P(Yes) - log P(No) over the two answers' first tokens at the answer position."""
        hidden, _ = self._last_hidden(sequences)
        logits = self._logits(hidden[:, -1], self.yes_no)  # [n, 2]
        return logits[:, 0] - logits[:, 1]

    def _logits(self, states: torch.Tensor, tokens: list[int] | None = None) -> torch.Tensor:
        """Hidden states [n, dim] -> language-model logits [n, vocab] (or of ``tokens`` only), computed in fp32:
        bf16 logits of a few tens step by 0.06-0.125, which would tie scores."""
        head = self.encoder.lm_head
        weight = head.weight if tokens is None else head.weight[tokens]
        bias = None if head.bias is None else (head.bias if tokens is None else head.bias[tokens]).float()
        return F.linear(states.float(), weight.float(), bias)

    def _outputs(self, table: str, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """rows [n] of ``table``'s history rows, items [n] -> [n] logits of P(Yes). Zero-shot, they are read from
        the encoder's disk cache (keyed by its weights and the prompts) where it holds them."""
        sequences = self.prompt_ids(table, rows.tolist(), items.tolist()) if len(rows) else []
        if not self.zero_shot:
            known = self._scores.setdefault(self._weights_digest(), {})
            keys = [(table, r, i) for r, i in zip(rows.tolist(), items.tolist())]
            todo = {key: ids for key, ids in zip(keys, sequences) if key not in known}  # distinct pairs not scored yet
            known.update(zip(todo, self._batched(list(todo.values())).tolist()))
            return torch.tensor([known[key] for key in keys])
        keys = [f"llm_ranker P(Yes) {self.yes_no}: {' '.join(map(str, ids))}" for ids in sequences]
        return self.encoder.cached(keys, 1, lambda: self._batched(sequences)[:, None])[:, 0].cpu()

    def _weights_digest(self) -> str:
        """Digest of every trainable weight, kept until a training step or a restore (``stale``) changes them: a
        restored epoch's weights hash as they did then, so the final evaluation reads the scores the trainer's
        validation computed with the kept weights (TALLRec's 1,000 valid pairs are not scored again)."""
        if self._weights is None or self.stale:
            digest = hashlib.blake2b()
            for weight in self.parameters():
                if weight.requires_grad:
                    digest.update(weight.detach().reshape(-1).cpu().view(torch.uint8).numpy())
            self._weights, self.stale = digest.hexdigest(), False
        return self._weights

    def pair_lengths(self, rows: torch.Tensor, items: torch.Tensor) -> list[int]:
        """Train rows [n], items [n] -> tokens of each prompt (tokenised once: training reads the same ids)."""
        return [len(ids) for ids in self.prompt_ids(TRAIN, rows.tolist(), items.tolist())]

    def _batched(self, sequences: list[list[int]]) -> torch.Tensor:
        """Prompts [n] -> [n] logits of P(Yes), in batches of similar length."""
        out = torch.zeros(len(sequences))
        order = sorted(range(len(sequences)), key=lambda n: len(sequences[n]))
        size = self.encoder.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            out[batch] = self._yes_logits([sequences[n] for n in batch]).cpu()
        return out

    def _chunked(self, users: torch.Tensor, items: torch.Tensor, stage: str) -> torch.Tensor:
        """All of ``stage``'s pairs at once, so that batches group prompts of similar length."""
        rows = self.tables[stage].rows(users, items)
        return self._outputs(stage, rows, items.cpu()).to(users.device)

    def forward(self, batch: Batch) -> torch.Tensor:
        """(rows [B] of train pairs, items [B], labels [B] 0/1) -> the language model's loss on the answers."""
        rows, items, labels = batch
        self._weights = None  # the step this loss drives changes them
        prompts = self.prompt_ids(TRAIN, rows.tolist(), items.tolist())
        answers = [self.answer_ids[0 if y > 0.5 else 1] for y in labels.tolist()]
        hidden, cut = self._last_hidden([p + a for p, a in zip(prompts, answers)])
        width = hidden.shape[1]
        targets = torch.full((len(prompts), width), IGNORE, dtype=torch.long)
        for n, (p, a) in enumerate(zip(prompts, answers)):
            start = 1 if self.train_on_prompt else len(p) - cut  # the first token is never predicted
            sequence = torch.tensor(p + a)[cut:]
            targets[n, width - len(sequence) + start :] = sequence[start:]
        predicted = targets[:, 1:] != IGNORE  # position t predicts token t + 1
        states = hidden[:, :-1][predicted.to(hidden.device)]  # [T, dim]
        return F.cross_entropy(self._logits(states), targets[:, 1:][predicted].to(states.device))

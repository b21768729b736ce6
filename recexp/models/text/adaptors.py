"""Adaptors from text encodings to a recommender's item space: a linear projection, or UniSRec's parametric
whitening under a mixture of experts (Hou et al., KDD 2022), as its released ``unisrec.py`` computes them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recexp.errors import ConfigError

ADAPTORS = ("linear", "moe")


class Whitening(nn.Module):
    """UniSRec's ``PWLayer``: ``W (dropout(x) - b)``, a learned centre and a projection without bias."""

    def __init__(self, size_in: int, size_out: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(size_in))
        self.lin = nn.Linear(size_in, size_out, bias=False)
        nn.init.normal_(self.lin.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.dropout(x) - self.bias)


class MoEAdaptor(nn.Module):
    """UniSRec's ``MoEAdaptorLayer``: a softmax-gated sum of whitening experts; while training, the gate logits get
    Gaussian noise of a learned, input-dependent scale (``softplus(x W_noise) + 0.01``). Gates start uniform."""

    def __init__(self, size_in: int, size_out: int, experts: int = 8, dropout: float = 0.2):
        super().__init__()
        self.experts = nn.ModuleList(Whitening(size_in, size_out, dropout) for _ in range(experts))
        self.w_gate = nn.Parameter(torch.zeros(size_in, experts))
        self.w_noise = nn.Parameter(torch.zeros(size_in, experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., size_in] -> [..., size_out]."""
        logits = x @ self.w_gate
        if self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(x @ self.w_noise) + 1e-2)
        gates = F.softmax(logits, dim=-1)  # [..., experts]
        return (gates.unsqueeze(-1) * torch.stack([expert(x) for expert in self.experts], dim=-2)).sum(-2)


def make_adaptor(name: str, size_in: int, size_out: int, experts: int, dropout: float) -> nn.Module:
    """``linear`` (a projection with bias) or ``moe`` (UniSRec's whitening experts)."""
    if name == "linear":
        layer = nn.Linear(size_in, size_out)
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
        return layer
    if name == "moe":
        return MoEAdaptor(size_in, size_out, experts, dropout)
    raise ConfigError(f"model.adaptor={name!r} is unknown; choose one of {', '.join(ADAPTORS)}.")

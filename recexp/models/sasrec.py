"""SASRec's causal self-attention over a user's item sequence (Kang and McAuley, 2018), built as RecBole's
``SASRec`` builds it: item vectors plus learned positions, LayerNorm, dropout, then post-LN layers of multi-head
attention (causal, padding keys masked) and a GELU feed-forward; the user is the output at the sequence's last item.

Written here rather than from ``torch.nn.TransformerEncoderLayer``: that layer adds a dropout inside the
feed-forward, which SASRec has not, and so would not train as the published model does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recexp.errors import ConfigError


class SelfAttentionLayer(nn.Module):
    """RecBole's ``TransformerLayer``: ``x = LN(x + drop(attn(x)))``, then ``x = LN(x + drop(W2 gelu(W1 x)))``."""

    def __init__(self, hidden: int, heads: int, inner: int, dropout: float, attn_dropout: float, eps: float):
        super().__init__()
        self.heads, self.dropout, self.attn_dropout = heads, dropout, attn_dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, inner)
        self.down = nn.Linear(inner, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, H], mask [B, 1, L, L] (True: may attend) -> [B, L, H]."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.attn_norm(x + F.dropout(self.out(context.transpose(1, 2).reshape(batch, length, hidden)), self.dropout,
                                         self.training))
        return self.ffn_norm(x + F.dropout(self.down(F.gelu(self.up(x))), self.dropout, self.training))


class SASRec(nn.Module):
    """Item vectors of left-aligned sequences [B, L, H] and their lengths [B] (>= 1) -> [B, H] user vectors."""

    def __init__(self, hidden: int = 300, layers: int = 2, heads: int = 2, inner: int = 256, dropout: float = 0.5,
                 attn_dropout: float = 0.5, max_length: int = 50, eps: float = 1e-12):
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"model.hidden_size={hidden} must be a multiple of model.heads={heads}.")
        self.dropout = dropout
        self.position = nn.Embedding(max_length, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(SelfAttentionLayer(hidden, heads, inner, dropout, attn_dropout, eps) for _ in range(layers))
        self.apply(init_weights)

    @property
    def max_length(self) -> int:
        return self.position.num_embeddings

    def forward(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        x = F.dropout(self.norm(items + self.position(positions)), self.dropout, self.training)
        real = positions[None, :] < lengths[:, None]  # [B, L]
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        mask = causal[None, None] & real[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x[torch.arange(len(x), device=x.device), lengths - 1]


def init_weights(module: nn.Module) -> None:
    """RecBole's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

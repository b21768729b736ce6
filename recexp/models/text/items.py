"""A dataset's item texts, and items encoded live (with gradient) by a text encoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recexp.errors import ConfigError
from recexp.interfaces import Split
from recexp.models.text.encoder import TextEncoder, TokenizedTexts


def item_texts(split: Split) -> list[str]:
    """The dataset's item texts [n_items], or a ConfigError naming the setting that makes them."""
    if split.dataset.item_text is None:
        raise ConfigError(
            "This model reads item text, but the dataset has none: set dataset.item_template "
            "(e.g. '{movie_title} ({release_year}). Genres: {class}')."
        )
    return list(split.dataset.item_text)


def encode_items(encoder: TextEncoder, tokens: TokenizedTexts, items: torch.Tensor) -> torch.Tensor:
    """items [n] -> unit encodings [n, enc] with gradient, each distinct item encoded once."""
    unique, inverse = items.unique(return_inverse=True)
    return F.normalize(encoder.encode_rows(tokens, unique.tolist()), dim=-1)[inverse]

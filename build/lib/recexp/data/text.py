"""Render item/user text from a template over feature fields, e.g. ``"{movie_title} ({release_year})"``."""
from __future__ import annotations

import string

import pandas as pd

from recexp.errors import ConfigError


def template_fields(template: str) -> list[str]:
    """Field names a ``str.format`` template refers to."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render_texts(template: str, features: pd.DataFrame | None, entity: str) -> list[str]:
    """One string per row of ``features``; missing values render as empty strings."""
    if features is None:
        raise ConfigError(
            f"A {entity} template was given but the dataset has no .{entity} file to fill it from."
        )
    available = list(features.columns)
    for name in template_fields(template):
        if name not in features.columns:
            raise ConfigError(
                f"The {entity} template names field {name!r}, which the .{entity} file lacks. "
                f"Available fields: {', '.join(available)}."
            )
    rows = features.astype(object).where(features.notna(), "").to_dict("records")
    return [template.format(**row).strip() for row in rows]

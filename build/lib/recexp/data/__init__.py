"""Datasets in RecBole's atomic-file format and the text rendered from their features."""
from recexp.data.atomic import AtomicDataset, load_atomic, ml100k_dir
from recexp.data.text import render_texts

__all__ = ["AtomicDataset", "load_atomic", "ml100k_dir", "render_texts"]

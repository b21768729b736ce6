"""Datasets: RecBole atomic files, UniSRec's released sequences, the Amazon Reviews 2023 benchmark, and the text rendered
from their features."""
from recexp.data.amazon2023 import Amazon2023Dataset
from recexp.data.atomic import AtomicDataset, load_atomic, ml100k_dir
from recexp.data.text import render_texts
from recexp.data.unisrec import UniSRecDataset

__all__ = ["Amazon2023Dataset", "AtomicDataset", "load_atomic", "ml100k_dir", "render_texts", "UniSRecDataset"]

"""recexp: benchmark strategies for using pretrained language models in recommender systems."""

__version__ = "0.1.0"

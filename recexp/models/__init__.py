"""Recommenders by family: RecBole baselines (recbole/), text models (text/), labelled-pair models (pairs/),
the one adapter for torch models (torch_recommender.py) and a random lower bound (random_scores.py)."""

"""Recommenders: RecBole baselines (recbole.py), text models, and a random lower bound."""

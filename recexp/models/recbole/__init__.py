"""RecBole's models behind one door: the only package of recexp that imports ``recbole``.

``RecBoleRecommender`` (``_target_: recexp.models.recbole.RecBoleRecommender``) is its public name;
:mod:`~recexp.models.recbole.compat` repairs RecBole 1.2.1 for today's packages when the adapter is used.
"""
from recexp.models.recbole.adapter import RecBoleRecommender

__all__ = ["RecBoleRecommender"]

"""Tasks: how fitting and evaluation alternate over a split's stages (``task=holdout`` ...)."""
from recexp.tasks.continual import Continual
from recexp.tasks.holdout import Holdout

__all__ = ["Continual", "Holdout"]

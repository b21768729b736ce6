"""Paper-style comparisons of finished runs: aggregation over seeds, paired tests, tables, plots.

``recexp-compare RUN_DIR [RUN_DIR ...] --out OUT_DIR`` (or ``python -m recexp.compare``), or in Python::

    from recexp.compare import Options, compare
    compare([Path("outputs/multiruns/...")], Path("outputs/compare"), Options(reference="bpr"))
"""
from recexp.compare.report import Comparison, Options, compare

__all__ = ["Comparison", "Options", "compare"]

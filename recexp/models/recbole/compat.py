"""Repairs that make RecBole 1.2.1 run on numpy 2, torch >= 2.6, scipy >= 1.13 and pandas 3 (plus
one RecBole bug that recexp's popularity baseline depends on), and keep it off process-wide state.

:func:`apply` installs every repair once (later calls do nothing). Each repair is local to the
RecBole module that breaks: a module's ``np``/``torch``/``sp``/``pd`` name is swapped for a
:class:`_Shadow` that forwards everything to the real package except the one attribute repaired,
a module's function (``getLogger``, ``get_tensorboard``) or a RecBole method is replaced by a
corrected copy. numpy, torch, scipy, pandas, the root logger and the cwd are never modified, so
code outside RecBole sees exactly the packages and settings it had.

What breaks without them (measured on recbole 1.2.1 with numpy 2.4, torch 2.13, scipy 1.17,
pandas 3.1):

* ``Config()`` runs ``compatibility_settings``, which reads ``np.float_`` (removed in numpy 2) to
  re-create ``np.float`` & co. globally; the data and metric code then uses ``np.float``.
* ``Trainer.evaluate(load_best_model=True)`` and ``resume_checkpoint`` call ``torch.load``, whose
  ``weights_only=True`` default (torch 2.6) rejects RecBole's checkpoints (they pickle the Config).
* LightGCN, NGCF, NCL, GCMC, SpectralCF, KGIN and MCCLK fill their adjacency matrix with
  ``dok_matrix._update``, removed in scipy 1.13.
* Under pandas 3 copy-on-write, ``df[field].fillna(..., inplace=True)`` changes a temporary copy:
  missing values in float/token fields stay NaN, and an empty ``token_seq`` field crashes loading.
* In pandas 3, ``Series.agg(len)`` is the Series' length instead of each row's, so remapping any
  ``token_seq`` field fails and a sequential benchmark dataset gets one wrong ``item_length``.
* RecBole logs through ``getLogger()``, the root logger, so its INFO lines end up in (or are lost
  to) whatever the host process configured there. Its modules get a ``getLogger`` returning the
  :data:`LOGGER` logger instead (INFO, not propagated); a run attaches its own file handler there.
* ``Trainer`` opens its tensorboard folder at ``log_tensorboard/<log name>`` relative to the cwd
  (and tensorboard reopens that relative path on every write). It now goes beside the log file of
  the current thread's run (the file handler carrying its :class:`ThreadFilter`).
* RecBole's lines trigger deprecation warnings in pandas and torch (chained ``fillna(inplace=True)``,
  ``torch.cuda.amp.GradScaler``, non-writable arrays) that are repaired here or harmless: warnings
  attributed to ``recbole.*`` modules are ignored (one filter, added once; other code keeps its warnings).
* ``recbole.model.sequential_recommender.sine`` calls ``torch.autograd.set_detect_anomaly(True)`` when
  it is imported, which any import of the sequential models does: from then on every autograd op in the
  process records a Python stack trace (BPR's epochs took 1.3-1.4x as long, other models' likewise). The
  sequential models are imported once here and the anomaly mode is put back as it was.
* ``recbole.evaluator.metrics`` (imported by ``recbole.config``), SLIMElastic and NCEPLRec import
  scikit-learn at their top (about 1 s with the SciPy parts it loads), though only the AUC, MAE and RMSE
  metrics and those two models call it. They are imported with stand-ins for those names that import
  scikit-learn on their first call (where scikit-learn is loaded already, they get the real names).
* RecBole's own bug (RecBole issue #2198, open in 1.2.1): ``Pop.calculate_loss`` adds 1 per item
  per *batch* (``item_cnt[item] = item_cnt[item] + 1`` ignores repeated items), so popular items
  all saturate at the number of batches and Pop ranks them by chance. Counted with ``index_add_``.

Not repaired, because recexp never reaches them: ``recbole.quick_start`` and
``recbole.trainer.hyper_tuning`` import ray 2.6.3, which needs ``pkg_resources`` (gone from
setuptools >= 81); the other ``Series.agg(len)`` calls (``float_seq`` normalisation and
discretisation, knowledge-graph remapping); ``np.str`` in hyper_tuning; ``torch.load`` of
pretrained files in ConvNCF, NAIS, RaCT, NeuMF and S3Rec pre-training options.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse
import torch

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

_APPLIED = False
LOGGER = "recbole"  # the logger RecBole's modules log to once repaired

# modules that log through ``from logging import getLogger`` (the dataloader ones, and data.utils by star import)
_LOGGER_USERS = (
    "recbole.model.abstract_recommender",
    "recbole.evaluator.metrics",
    "recbole.config.configurator",
    "recbole.trainer.trainer",
    "recbole.data.dataloader.abstract_dataloader",
    "recbole.data.dataloader.general_dataloader",
    "recbole.data.dataloader.knowledge_dataloader",
    "recbole.data.dataloader.user_dataloader",
    "recbole.data.dataset.dataset",
    "recbole.data.utils",
    "recbole.utils.url",
)

# ``np.float`` (numpy < 1.20: the builtin float) is what these modules still use.
_NUMPY_ALIASES = {"float": float}
_NUMPY_USERS = ("recbole.data.interaction", "recbole.data.dataset.dataset", "recbole.evaluator.metrics")
_DOK_USERS = (
    "recbole.model.general_recommender.lightgcn",
    "recbole.model.general_recommender.ngcf",
    "recbole.model.general_recommender.ncl",
    "recbole.model.general_recommender.gcmc",
    "recbole.model.general_recommender.spectralcf",
    "recbole.model.knowledge_aware_recommender.kgin",
    "recbole.model.knowledge_aware_recommender.mcclk",
)

# RecBole module -> {its global: (scikit-learn module, name)}: every scikit-learn name RecBole imports
_SKLEARN_NAMES = {
    "recbole.evaluator.metrics": {
        "sk_auc": ("sklearn.metrics", "auc"),
        "mean_absolute_error": ("sklearn.metrics", "mean_absolute_error"),
        "mean_squared_error": ("sklearn.metrics", "mean_squared_error"),
    },
    "recbole.model.general_recommender.slimelastic": {
        "ElasticNet": ("sklearn.linear_model", "ElasticNet"),
        # read only after SLIMElastic has called ElasticNet, so by then the real class
        "ConvergenceWarning": ("sklearn.exceptions", "ConvergenceWarning"),
    },
    "recbole.model.general_recommender.nceplrec": {"randomized_svd": ("sklearn.utils.extmath", "randomized_svd")},
}
_ANOMALY_SETTER = "recbole.model.sequential_recommender.sine"  # switches anomaly detection on at import


class _Shadow(types.ModuleType):
    """Stands in for ``target`` inside one module: overrides first, then the real attribute."""

    def __init__(self, target: types.ModuleType, **overrides: Any):
        super().__init__(target.__name__, target.__doc__)
        self.__dict__.update(overrides)
        self.__dict__["_shadowed"] = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_shadowed"], name)


def _shadow(module_name: str, global_name: str, **overrides: Any) -> None:
    """Replace ``module_name.global_name`` by a :class:`_Shadow` carrying ``overrides``."""
    module = importlib.import_module(module_name)
    current = getattr(module, global_name)
    if not isinstance(current, _Shadow):
        setattr(module, global_name, _Shadow(current, **overrides))


# --- scikit-learn: imported by RecBole's metrics and two models at their top, called by few


@contextlib.contextmanager
def _sklearn_stand_ins() -> Iterator[None]:
    """While the block runs, the scikit-learn modules of :data:`_SKLEARN_NAMES` not yet loaded are empty
    modules in ``sys.modules`` carrying those names (so ``from sklearn.metrics import auc`` loads nothing)."""
    stubs: dict[str, types.ModuleType] = {}
    for names in _SKLEARN_NAMES.values():
        for module, name in names.values():
            if module not in sys.modules:
                setattr(stubs.setdefault(module, types.ModuleType(module)), name, None)
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for module, stub in stubs.items():
            if sys.modules.get(module) is stub:
                del sys.modules[module]


def _deferred(user: str, alias: str) -> Callable[..., Any]:
    """Stands in for the scikit-learn name ``alias`` of the RecBole module ``user``: its first call puts
    every real scikit-learn name of ``user`` in place, then calls the real ``alias``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        module = sys.modules[user]
        for name, (source, real) in _SKLEARN_NAMES[user].items():
            setattr(module, name, getattr(importlib.import_module(source), real))
        return getattr(module, alias)(*args, **kwargs)

    return call


def _import_deferring_sklearn() -> None:
    """Import the RecBole modules of :data:`_SKLEARN_NAMES` (with them recbole.config, recbole.evaluator and
    every general model) without loading scikit-learn; names it stood in for become :func:`_deferred` calls."""
    with _sklearn_stand_ins():
        modules = {user: importlib.import_module(user) for user in _SKLEARN_NAMES}
    for user, names in _SKLEARN_NAMES.items():
        for alias in names:
            if getattr(modules[user], alias) is None:  # the stand-ins' value; real names (scikit-learn was loaded) stay
                setattr(modules[user], alias, _deferred(user, alias))


# --- torch: the SINE module switches on autograd's anomaly detection for the whole process


def _import_keeping_anomaly_mode(module: str) -> None:
    """Import ``module``, then put torch's anomaly detection (and its NaN check) back as it was."""
    enabled, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    try:
        importlib.import_module(module)
    finally:
        torch.autograd.set_detect_anomaly(enabled, check_nan)


# --- torch: RecBole's own checkpoints hold a pickled Config, so they need full unpickling


@functools.wraps(torch.load)
def _load_full_checkpoint(*args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("weights_only", False)
    return torch.load(*args, **kwargs)


# --- scipy: dok_matrix._update(dict) was a bulk insert without checks


class _DokMatrix(scipy.sparse.dok_matrix):
    def _update(self, data: dict) -> None:
        self._dict.update(data)


# --- pandas: copy-on-write turns RecBole's ``df[field].fillna(..., inplace=True)`` into a no-op


def _read_csv_filling_seqs(*args: Any, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` whose empty ``*_seq`` columns become "" (what ``Dataset._load_feat`` intends)."""
    frame = pd.read_csv(*args, **kwargs)
    seq_columns = [c for c in frame.columns if str(c).endswith("_seq")]  # header names: field:token_seq
    if seq_columns:
        frame[seq_columns] = frame[seq_columns].fillna("")
    return frame


def _fill_nan(self) -> None:
    """``Dataset._fill_nan`` assigning its results: NaN tokens -> 0 ([PAD]), floats -> column mean."""
    from recbole.utils.enum_type import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(lambda x, dtype=dtype: np.array([], dtype=dtype) if isinstance(x, float) else x)


# --- pandas: Series.agg(len) now returns the Series' length, not each element's (token_seq fields)


def _remap(self, remap_list) -> None:
    """``Dataset._remap`` with per-row sequence lengths (``map(len)``) for token_seq fields."""
    if len(remap_list) == 0:
        return
    tokens, split_point = self._concat_remaped_tokens(remap_list)
    new_ids_list, mp = pd.factorize(tokens)
    new_ids_list = np.split(new_ids_list + 1, split_point)
    mp = np.array(["[PAD]"] + list(mp))
    token_id = {t: i for i, t in enumerate(mp)}
    from recbole.utils.enum_type import FeatureType

    for (feat, field, ftype), new_ids in zip(remap_list, new_ids_list):
        if field not in self.field2id_token:
            self.field2id_token[field] = mp
            self.field2token_id[field] = token_id
        if ftype == FeatureType.TOKEN:
            feat[field] = new_ids
        elif ftype == FeatureType.TOKEN_SEQ:
            feat[field] = np.split(new_ids, np.cumsum(feat[field].map(len))[:-1])


def _benchmark_presets(self) -> None:
    """``SequentialDataset._benchmark_presets`` with per-row ``item_length`` (``map(len)``)."""
    from recbole.utils.enum_type import FeatureSource, FeatureType

    list_suffix = self.config["LIST_SUFFIX"]
    for field in self.inter_feat:
        if field + list_suffix in self.inter_feat:
            setattr(self, f"{field}_list_field", field + list_suffix)
    self.set_field_property(self.item_list_length_field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
    self.inter_feat[self.item_list_length_field] = self.inter_feat[self.item_id_list_field].map(len)


# --- logging: RecBole logs to the root logger, and puts tensorboard events under the cwd


class ThreadFilter(logging.Filter):
    """Passes the records of the thread that created it: one run's log file among concurrent runs."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


def _get_logger(name: str | None = None) -> logging.Logger:
    """``logging.getLogger`` for RecBole's modules: the unnamed (root) logger becomes :data:`LOGGER`."""
    return logging.getLogger(LOGGER if name is None else name)


def _run_log_file(logger: logging.Logger) -> Path | None:
    """The file of ``logger``'s handler for this thread's run (a file handler with this thread's ThreadFilter)."""
    for handler in logger.handlers:
        mine = any(isinstance(f, ThreadFilter) and f.thread == threading.get_ident() for f in handler.filters)
        if mine and hasattr(handler, "baseFilename"):
            return Path(handler.baseFilename)
    return None


def _get_tensorboard(logger: logging.Logger) -> SummaryWriter:
    """``get_tensorboard`` writing to ``log_tensorboard/<log name>`` beside this run's log file, by absolute
    path; without such a file, RecBole's own (``log_tensorboard/model-<time>`` under the cwd)."""
    from recbole.utils import utils
    from torch.utils.tensorboard import SummaryWriter

    log_file = _run_log_file(logger)
    if log_file is None:
        return utils.get_tensorboard(logger)
    return SummaryWriter(str(log_file.parent.resolve() / "log_tensorboard" / log_file.name.split(".")[0]))


# --- RecBole bug: Pop counted each item at most once per batch


def _pop_calculate_loss(self, interaction) -> torch.Tensor:
    """``Pop.calculate_loss`` counting every interaction (repeated items in a batch included)."""
    item = interaction[self.ITEM_ID]
    self.item_cnt.index_add_(0, item, torch.ones_like(self.item_cnt[item]))
    self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
    return torch.nn.Parameter(torch.zeros(1)).to(self.device)


def _no_global_numpy_aliases(self) -> None:
    """``Config.compatibility_settings`` without touching numpy (the aliases live in the shadows)."""


def apply() -> None:
    """Install every repair (idempotent). Call before using any RecBole code."""
    global _APPLIED
    if _APPLIED:
        return
    _import_deferring_sklearn()  # first: recbole.config and the general models import scikit-learn names
    _import_keeping_anomaly_mode(_ANOMALY_SETTER)
    from recbole.config import Config
    from recbole.data.dataset import Dataset, SequentialDataset
    from recbole.model.general_recommender import Pop

    Config.compatibility_settings = _no_global_numpy_aliases
    for name in _NUMPY_USERS:
        _shadow(name, "np", **_NUMPY_ALIASES)
    _shadow("recbole.trainer.trainer", "torch", load=_load_full_checkpoint)
    for name in _DOK_USERS:
        _shadow(name, "sp", dok_matrix=_DokMatrix)
    _shadow("recbole.data.dataset.dataset", "pd", read_csv=_read_csv_filling_seqs)
    Dataset._fill_nan = _fill_nan
    Dataset._remap = _remap
    SequentialDataset._benchmark_presets = _benchmark_presets
    Pop.calculate_loss = _pop_calculate_loss
    for name in _LOGGER_USERS:
        importlib.import_module(name).getLogger = _get_logger
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    importlib.import_module("recbole.trainer.trainer").get_tensorboard = _get_tensorboard
    warnings.filterwarnings("ignore", module=r"recbole(\.|$)")
    _APPLIED = True

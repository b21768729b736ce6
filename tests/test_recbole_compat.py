"""Each RecBole repair in recexp.models.recbole.compat, exercised on RecBole's own code paths."""
from __future__ import annotations

import importlib
import logging
import logging.handlers
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from recexp.models.recbole import compat

compat.apply()
ROOT = Path(__file__).resolve().parent.parent

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.data.interaction import Interaction  # noqa: E402
from recbole.model.general_recommender import BPR, LightGCN, Pop  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """RecBole reads sys.argv and writes log/tensorboard folders under the cwd."""
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)


def toy_files(folder: Path, inter: list[str], item: list[str] | None = None, name: str = "toy") -> None:
    (folder / name).mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / name / f"{name}.inter").write_text(header + "\n".join(inter) + "\n")
    if item is not None:
        (folder / name / f"{name}.item").write_text("item_id:token\tgenre:token_seq\n" + "\n".join(item) + "\n")


def toy_config(folder: Path, model: str = "BPR", **overrides) -> Config:
    values = {"data_path": str(folder), "load_col": None, "normalize_all": False, "device": "cpu", "use_gpu": False}
    return Config(model=model, dataset="toy", config_dict=values | overrides)


def ml100k_trainer(tmp_path: Path, model_class) -> tuple[Config, Trainer, object, object]:
    config = Config(
        model=model_class.__name__,
        dataset="ml-100k",
        config_dict={
            "epochs": 1,
            "checkpoint_dir": str(tmp_path / "saved"),
            "show_progress": False,
            "device": "cpu",
            "use_gpu": False,
        },
    )
    train, valid, test = data_preparation(config, create_dataset(config))
    model = model_class(config, train._dataset)
    return config, Trainer(config, model), train, valid


def test_config_builds_on_numpy2_without_touching_numpy(tmp_path):
    config = Config(model="BPR", dataset="ml-100k", config_dict={"device": "cpu", "use_gpu": False})
    assert config["model"] == "BPR"
    for removed in ("float_", "float", "int", "complex_", "unicode_"):
        assert removed not in np.__dict__, f"numpy gained np.{removed}"
    # RecBole's own code still finds np.float where it uses it
    from recbole.evaluator.metrics import NDCG

    assert Interaction({"x": [1.5, 2.5]})["x"].dtype == torch.float32
    ndcg = NDCG(Config(model="BPR", dataset="ml-100k", config_dict={"device": "cpu", "use_gpu": False, "topk": [2]}))
    values = ndcg.metric_info(np.array([[True, False]]), np.array([1]))
    assert values[0, 1] == pytest.approx(1.0)


def test_trainer_reloads_its_own_checkpoint_with_torch_2_6(tmp_path):
    _, trainer, train, valid = ml100k_trainer(tmp_path, BPR)
    trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(valid, load_best_model=True)
    assert np.isfinite(result["ndcg@10"])
    trainer.resume_checkpoint(trainer.saved_model_file)
    assert trainer.start_epoch == 1
    # the repair lives in recbole.trainer.trainer only: torch.load keeps its safe default elsewhere
    with pytest.raises(Exception, match="weights_only"):
        torch.load(trainer.saved_model_file)


def test_lightgcn_builds_its_adjacency_on_new_scipy(tmp_path):
    config = Config(model="LightGCN", dataset="ml-100k", config_dict={"device": "cpu", "use_gpu": False})
    train, _, _ = data_preparation(config, create_dataset(config))
    model = LightGCN(config, train._dataset)
    n = model.n_users + model.n_items
    assert model.norm_adj_matrix.shape == (n, n)
    assert model.norm_adj_matrix._nnz() == 2 * train._dataset.inter_num
    assert not hasattr(scipy.sparse.dok_matrix, "_update")  # scipy itself is untouched


def test_missing_float_values_are_filled_under_copy_on_write(tmp_path):
    toy_files(tmp_path, ["u1\ti1\t1.0\t1", "u1\ti2\t\t2", "u2\ti1\t5.0\t3"])
    ratings = create_dataset(toy_config(tmp_path)).inter_feat["rating"].to_numpy()
    assert sorted(ratings) == [1.0, 3.0, 5.0]  # the missing rating became the column mean


def test_empty_token_seq_field_loads_under_copy_on_write(tmp_path):
    toy_files(tmp_path, ["u1\ti1\t1\t1", "u1\ti2\t1\t2"], item=["i1\ta b", "i2\t"])
    dataset = create_dataset(toy_config(tmp_path))
    genres = dict(zip(dataset.item_feat["item_id"], dataset.item_feat["genre"]))
    assert len(genres[dataset.token2id("item_id", "i2")]) == 0
    assert len(genres[dataset.token2id("item_id", "i1")]) == 2


def test_token_seq_fields_keep_per_row_lengths(tmp_path):
    toy_files(tmp_path, ["u1\ti1\t1\t1", "u1\ti2\t1\t2", "u2\ti3\t1\t3"], item=["i1\ta b c", "i2\tb", "i3\ta c"])
    dataset = create_dataset(toy_config(tmp_path))
    rows = zip(dataset.item_feat["item_id"], dataset.item_feat["genre"])
    lengths = {dataset.id2token("item_id", i): len(genre) for i, genre in rows}
    assert (lengths["i1"], lengths["i2"], lengths["i3"]) == (3, 1, 2)
    i1 = dataset.item_feat["genre"][dataset.token2id("item_id", "i1")]
    assert list(dataset.id2token("genre", i1)) == ["a", "b", "c"]


def test_sequential_benchmark_files_get_per_row_item_length(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    header = "user_id:token\titem_id:token\ttimestamp:float\titem_id_list:token_seq\n"
    rows = {
        "train": ["u1\ti2\t2\ti1", "u1\ti3\t3\ti1 i2", "u2\ti3\t2\ti2"],
        "valid": ["u1\ti4\t4\ti1 i2 i3"],
        "test": ["u2\ti1\t5\ti2 i3"],
    }
    for stage, lines in rows.items():
        (folder / f"toy.{stage}.inter").write_text(header + "\n".join(lines) + "\n")
    config = toy_config(
        tmp_path,
        model="SASRec",
        benchmark_filename=["train", "valid", "test"],
        alias_of_item_id=["item_id_list"],
        train_neg_sample_args=None,
    )
    dataset = create_dataset(config)
    assert dataset.inter_feat["item_length"].tolist() == [1, 2, 1, 3, 2]


def test_pop_counts_items_repeated_within_a_batch(tmp_path):
    toy_files(tmp_path, ["u1\ti1\t1\t1", "u2\ti1\t1\t2", "u3\ti1\t1\t3", "u1\ti2\t1\t4"])
    dataset = create_dataset(toy_config(tmp_path, model="Pop"))
    model = Pop(toy_config(tmp_path, model="Pop"), dataset)
    i1, i2 = dataset.token2id("item_id", "i1"), dataset.token2id("item_id", "i2")
    model.calculate_loss(Interaction({"item_id": torch.tensor([i1, i1, i1, i2])}))
    assert model.item_cnt[[i1, i2], 0].tolist() == [3, 1]


@pytest.mark.subprocess
def test_recexp_and_the_adapter_import_neither_ray_nor_quick_start():
    code = (
        "import sys, numpy, recexp; assert 'recbole' not in sys.modules; "
        "import recexp.models.recbole; "
        "bad = [m for m in ('ray', 'recbole.quick_start', 'pkg_resources') if m in sys.modules]; "
        "assert not bad, bad; assert not hasattr(numpy, 'float_')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_recbole_logs_to_its_own_logger_not_the_root(tmp_path):
    recbole_logger = logging.getLogger(compat.LOGGER)
    assert recbole_logger.level == logging.INFO and not recbole_logger.propagate
    for name in compat._LOGGER_USERS:
        assert importlib.import_module(name).getLogger() is recbole_logger, name
    root, level = logging.getLogger(), logging.getLogger().level
    assert root is logging.root  # logging itself is untouched
    mine, at_root = logging.handlers.BufferingHandler(10**6), logging.handlers.BufferingHandler(10**6)
    recbole_logger.addHandler(mine)
    root.addHandler(at_root)
    root.setLevel(logging.DEBUG)
    try:
        ml100k_trainer(tmp_path, BPR)  # data_preparation logs the batch sizes at INFO
    finally:
        recbole_logger.removeHandler(mine)
        root.removeHandler(at_root)
        root.setLevel(level)
    assert any("train_batch_size" in r.getMessage() for r in mine.buffer)
    assert not [r for r in at_root.buffer if "recbole" in r.pathname]


def test_tensorboard_goes_beside_this_threads_run_log(tmp_path):
    logger = logging.getLogger(compat.LOGGER)
    handlers = []
    for run, thread in (("other", threading.get_ident() + 1), ("mine", threading.get_ident())):
        (tmp_path / run).mkdir()
        handler = logging.FileHandler(tmp_path / run / "recbole.log")
        only = compat.ThreadFilter()
        only.thread = thread
        handler.addFilter(only)
        logger.addHandler(handler)
        handlers.append(handler)
    try:
        _, trainer, _, _ = ml100k_trainer(tmp_path, BPR)
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
    trainer.tensorboard.close()
    assert Path(trainer.tensorboard.log_dir) == tmp_path / "mine" / "log_tensorboard" / "recbole"
    assert any((tmp_path / "mine" / "log_tensorboard" / "recbole").iterdir())
    assert not (tmp_path / "log_tensorboard").exists()  # the cwd (isolated) stays empty of events


@pytest.mark.subprocess
def test_recbole_warnings_are_ignored_and_others_kept():
    code = (
        "import warnings; from recexp.models.recbole import compat; compat.apply(); "
        "warnings.warn_explicit('from recbole', UserWarning, 'dataset.py', 1, module='recbole.data.dataset.dataset'); "
        "warnings.warn_explicit('from elsewhere', UserWarning, 'other.py', 1, module='recexp.other')"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    assert "from elsewhere" in result.stderr and "from recbole" not in result.stderr


def test_apply_is_idempotent():
    import recbole.trainer.trainer as trainer_module

    shadow = trainer_module.torch
    compat.apply()
    compat._APPLIED = False
    try:
        compat.apply()
    finally:
        compat._APPLIED = True
    assert trainer_module.torch is shadow
    assert trainer_module.torch.nn is torch.nn


@pytest.mark.subprocess
def test_sequential_models_leave_autograd_anomaly_mode_as_it_was():
    """RecBole's SINE module switches anomaly detection on at import: every autograd op then records a stack trace."""
    plain = "import torch, recbole.model.sequential_recommender; print(torch.is_anomaly_enabled())"
    repaired = (
        "import torch; from recexp.models.recbole import compat; compat.apply(); "
        "from recbole.utils import get_model; get_model('SINE'); print(torch.is_anomaly_enabled())"
    )
    assert python(plain).split()[-1] == "True"  # the RecBole bug this repair is for
    assert python(repaired).split()[-1] == "False"


def python(code: str, *args: str) -> str:
    """stdout of ``python -c code args`` in a fresh process (an AssertionError with its stderr if it fails)."""
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


SKLEARN_ON_FIRST_CALL = """
import sys, warnings
from pathlib import Path
from recexp.models.recbole import compat
compat.apply()
from recbole.config import Config
from recbole.data import create_dataset
from recbole.evaluator import metrics
from recbole.model.general_recommender import SLIMElastic, slimelastic
assert "sklearn" not in sys.modules
assert metrics.sk_auc([0.0, 0.5, 1.0], [0.0, 1.0, 1.0]) == 0.75 and "sklearn" in sys.modules
import sklearn.exceptions, sklearn.metrics
assert metrics.sk_auc is sklearn.metrics.auc and metrics.mean_squared_error is sklearn.metrics.mean_squared_error
folder = Path(sys.argv[1])
(folder / "toy").mkdir()
rows = [f"u{u}\\ti{(u * 3 + k) % 7}\\t1\\t{k}" for u in range(12) for k in range(4)]
(folder / "toy" / "toy.inter").write_text("user_id:token\\titem_id:token\\trating:float\\ttimestamp:float\\n" + "\\n".join(rows))
config = Config(model="SLIMElastic", dataset="toy", config_dict={"data_path": str(folder), "device": "cpu", "use_gpu": False})
model = SLIMElastic(config, create_dataset(config))
assert slimelastic.ConvergenceWarning is sklearn.exceptions.ConvergenceWarning
print(model.item_similarity.shape[0])
"""


@pytest.mark.subprocess
def test_scikit_learn_is_imported_when_a_recbole_metric_or_model_first_calls_it(tmp_path):
    """recbole.config and the general models import scikit-learn names at their top; a Pop run never calls them."""
    assert python(SKLEARN_ON_FIRST_CALL, str(tmp_path)).split()[-1] == "8"  # 7 items and RecBole's padding item

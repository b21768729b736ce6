"""A run imports only what its components need: ``python -m recexp`` on a tiny dataset, read off ``-X importtime``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from recexp.bench.startup import heavy_imports, imported_modules, run_command, write_tiny_dataset

pytestmark = pytest.mark.subprocess  # each test runs python: a recexp run or an import check
NOT_FOR_POP = ("transformers", "peft", "wandb", "sklearn", "torch._dynamo", "scipy.stats", "numba")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def run_imports(data: Path, tmp_path: Path, *overrides: str) -> set[str]:
    return imported_modules(run_command(data, tmp_path / "run", tmp_path / "cache", *overrides))


def test_pop_run_imports_recbole_and_nothing_for_text_models_logging_or_compiling(tiny, tmp_path):
    modules = run_imports(tiny, tmp_path)
    heavy = heavy_imports(modules)
    assert {"recbole.config", "recbole.trainer.trainer", "recbole.model.general_recommender.pop"} <= modules
    assert [name for name in NOT_FOR_POP if heavy[name]] == []


def test_text_model_run_imports_transformers_and_peft_but_not_recbole(tiny, tmp_path):
    heavy = heavy_imports(run_imports(tiny, tmp_path, "model=text_tower", "dataset.item_template='{title}'",
                                      "trainer.max_epochs=1"))
    assert heavy["transformers"] and heavy["peft"]
    assert not heavy["recbole"] and not heavy["wandb"] and not heavy["sklearn"]


def test_wandb_is_imported_with_logger_wandb_only(tiny, tmp_path):
    heavy = heavy_imports(run_imports(tiny, tmp_path, "model=random", "logger=wandb"))  # offline (conftest)
    assert heavy["wandb"]
    assert not heavy["recbole"] and not heavy["transformers"] and not heavy["peft"]


def test_importing_recexp_and_its_recbole_adapter_imports_no_heavy_package():
    code = ("import sys, torch; import recexp, recexp.run, recexp.models.recbole; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'recbole', 'sklearn', 'wandb', 'transformers', 'peft'}), "
            "torch.is_anomaly_enabled())")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] False"

"""The package as users install it: a wheel carrying its configs, run from an empty folder, and
user config folders added through ``hydra.searchpath``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import CONF, ROOT
from hydra import compose, initialize_config_dir

USER_MODEL = """# python -m recexp hydra.searchpath=[file:///path/to/my_conf] model=my_pop
_target_: recexp.models.recbole.RecBoleRecommender
_convert_: object
name: Pop
"""


@pytest.mark.subprocess
def test_wheel_carries_the_configs_and_runs_from_an_empty_folder(tmp_path):
    dist, target, empty, source = tmp_path / "dist", tmp_path / "site", tmp_path / "empty", tmp_path / "source"
    empty.mkdir()
    skip = shutil.ignore_patterns(".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, source, ignore=skip)  # setuptools writes build/ beside the sources: keep it out of the checkout
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(dist)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("recexp-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "recexp/conf/config.yaml" in names and "recexp/conf/model/text_tower.yaml" in names
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "recexp").rglob("*.py")}
    assert modules <= set(names), f"pyproject.toml's packages leave out {sorted(modules - set(names))}"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline"}
    env.pop("RECEXP_CACHE_DIR", None)
    where = subprocess.run([sys.executable, "-c", "import recexp; print(recexp.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(target))  # the wheel, not this checkout
    done = subprocess.run([str(target / "bin" / "recexp"), "model=pop", "logger=none", "progress=false"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = list(empty.glob("outputs/runs/*/*/results.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["status"] == "ok"


def test_user_config_folders_join_through_the_searchpath(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_pop.yaml").write_text(USER_MODEL)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "model=my_pop"])
    assert cfg.model.name == "Pop" and cfg.task._target_ == "recexp.tasks.Holdout"

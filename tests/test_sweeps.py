"""Sweeps: parallel launchers, resuming a killed sweep, failing jobs, and Optuna studies that continue."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from helpers import CONF, ROOT
from hydra import compose, initialize_config_dir

TWO_MODELS = ("model=random,pop",)
BASE = ("logger=none", "progress=false")


def command(*overrides: str, multirun: bool = False) -> list[str]:
    return [sys.executable, "-m", "recexp", *(["-m"] if multirun else []), *BASE, *overrides]


def environment(tmp: Path) -> dict[str, str]:
    return {**os.environ, "RECEXP_CACHE_DIR": str(tmp / "cache"), "WANDB_MODE": "offline"}


def sweep(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(*overrides, multirun=True), cwd=ROOT, env=environment(tmp), capture_output=True,
                          text=True, timeout=600)


def records(folder: Path) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))}


def by_config(found: dict[Path, dict], *keys: str) -> Counter:
    """How many ok records each configuration has, keyed by the given dotted config keys."""
    counts = Counter()
    for record in found.values():
        if record["status"] == "ok":
            counts[tuple(json.dumps(_get(record["config"], k), sort_keys=True) for k in keys)] += 1
    return counts


def _get(node: dict, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")))
def test_launcher_presets_compose_against_the_plugin_schemas(launcher):
    with warnings.catch_warnings(record=True) as caught, initialize_config_dir(str(CONF), version_base="1.3"):
        warnings.simplefilter("always")
        overrides = [f"hydra/launcher={launcher}", "model=random"]
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.hydra_")
    assert not [w for w in caught if "ConfigStore schema" in str(w.message)]


@pytest.mark.subprocess
def test_two_models_two_seeds_through_joblib(tmp_path):
    done = sweep(tmp_path, "hydra/launcher=local_parallel", *TWO_MODELS, "seed=0,1", f"hydra.sweep.dir={tmp_path}/s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stderr + done.stdout
    found = records(tmp_path / "s")
    counts = by_config(found, "model", "evaluator", "seed")
    assert len(counts) == 4 and set(counts.values()) == {1}
    assert len(found) == 4 and {r["status"] for r in found.values()} == {"ok"}


@pytest.mark.subprocess
def test_submitit_local_launcher_runs_jobs(tmp_path):
    done = sweep(tmp_path, "hydra/launcher=local_submitit", "model=random", "seed=0,1", f"hydra.sweep.dir={tmp_path}/s")
    assert done.returncode == 0, done.stderr[-3000:]
    found = records(tmp_path / "s")
    assert sorted(r["config"]["seed"] for r in found.values()) == [0, 1]
    assert {r["status"] for r in found.values()} == {"ok"}
    assert (tmp_path / "s" / ".submitit").is_dir()


@pytest.mark.subprocess
def test_killed_sweep_resumes_without_rerunning_finished_jobs(tmp_path):
    folder, seeds = tmp_path / "s", list(range(8))
    args = command("model=random", f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={folder}", multirun=True)
    process = subprocess.Popen(args, cwd=ROOT, env=environment(tmp_path), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not any(r["status"] == "ok" for r in records(folder).values() if r) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = {p: p.read_bytes() for p, r in records(folder).items() if r["status"] == "ok"}
    assert 1 <= len(before) < len(seeds), "the sweep must be killed part-way"
    done = sweep(tmp_path, "model=random", f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={folder}")
    assert done.returncode == 0, done.stderr[-3000:]
    after = records(folder)
    assert by_config(after, "seed") == {(str(s),): 1 for s in seeds}
    assert {r["status"] for r in after.values()} == {"ok"}
    for path, content in before.items():
        assert path.read_bytes() == content  # finished runs untouched: same started_at, same numbers
    assert (done.stdout + done.stderr).count("already finished") == len(before)


@pytest.mark.subprocess
def test_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    folder = tmp_path / "s"
    args = ("model=random", "scenario=cold_item", "scenario.cold_fraction=0.2,1.5", f"hydra.sweep.dir={folder}")
    done = sweep(tmp_path, *args)
    assert done.returncode == 1 and "error: 1 job(s) of this sweep failed" in done.stderr, done.stderr[-3000:]
    found = records(folder)
    status = {r["config"]["scenario"]["cold_fraction"]: r for r in found.values()}
    assert status[0.2]["status"] == "ok"
    failed = status[1.5]
    assert failed["status"] == "failed" and "cold_fraction" in failed["error"] and failed["finished_at"]
    run_dir = next(p.parent for p, r in found.items() if r is failed)
    assert "Traceback" in (run_dir / "traceback.txt").read_text()
    again = sweep(tmp_path, *args)
    assert (again.stdout + again.stderr).count("already finished") == 1  # only the failed job runs again
    from recexp.compare.cli import main as compare_main

    assert compare_main([str(folder), "--out", str(tmp_path / "c"), "--no-wandb"]) == 0
    listed = pd.read_csv(tmp_path / "c" / "failed.csv")
    assert list(listed["status"]) == ["failed"] and "cold_fraction" in listed["error"].item()


@pytest.mark.subprocess
def test_extending_a_sweep_keeps_finished_records_in_override_named_folders(tmp_path):
    """A larger sweep in the same folder reuses job numbers; naming run folders by (a hash of) their
    overrides keeps every record (a ``${hydra.job.num}`` subdir would let new jobs overwrite old ones)."""
    folder = tmp_path / "s"
    first = sweep(tmp_path, "model=random", "evaluator.tie_seed=0,1", "seed=0", f"hydra.sweep.dir={folder}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in records(folder)}
    second = sweep(tmp_path, "model=random", "evaluator.tie_seed=0,1", "seed=0,1", f"hydra.sweep.dir={folder}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert all(p.read_bytes() == content for p, content in before.items())
    counts = by_config(records(folder), "evaluator.tie_seed", "seed")
    assert counts == {(str(t), str(s)): 1 for t in (0, 1) for s in (0, 1)}


@pytest.mark.subprocess
def test_the_same_sweep_launched_twice_at_once_runs_every_job_once(tmp_path):
    folder, args = tmp_path / "s", ("model=random", "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}")
    launches = [subprocess.Popen(command(*args, multirun=True), cwd=ROOT, env=environment(tmp_path), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs
    found = records(folder)
    assert by_config(found, "seed") == {("0",): 1, ("1",): 1} and len(found) == 2
    assert [r["provenance"]["attempts"] for r in found.values()] == [1, 1]
    assert "".join(outputs).count("skipped") == 2  # each launch left the other's job (running or finished) alone


@pytest.mark.subprocess
def test_optuna_study_continues_in_its_storage(tmp_path):
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ("hparams_search=optuna", "model=bpr", "trainer.max_epochs=1", "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=test")
    for launch in ("a", "b"):
        done = subprocess.run(command(*args, f"hydra.sweep.dir={tmp_path / launch}"), cwd=ROOT,
                              env=environment(tmp_path), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="test", storage=storage)
    assert len(study.trials) == 4 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    objectives = [r["objective"] for r in records(tmp_path / "a").values()] + \
                 [r["objective"] for r in records(tmp_path / "b").values()]
    assert study.best_value == pytest.approx(max(objectives))


PAPER_ARMS = {
    "pop", "bpr", "lightgcn", "text_tower_frozen", "text_tower_partial", "text_tower_lora", "text_tower_full_ft",
    "fusion_frozen", "fusion_partial", "fusion_lora", "text_tower_frozen_smollm2", "text_tower_lora_smollm2",
}
# arm -> (model, strategy or None for models without a text encoder, budget key or None)
ARMS = {
    "pop": ("pop", None, None),
    "bpr": ("bpr", None, "bpr_epochs"),
    "lightgcn": ("lightgcn", None, "lightgcn_epochs"),
    **{f"{m}_frozen": (m, "frozen", "frozen_text_epochs") for m in ("text_tower", "fusion")},
    **{f"{m}_{s}": (m, s, "tuned_text_epochs") for m in ("text_tower", "fusion") for s in ("partial", "lora", "full_ft")},
    "text_tower_frozen_smollm2": ("text_tower", "frozen", "frozen_text_epochs"),  # encoder=smollm2 (the arm's suffix)
    "text_tower_lora_smollm2": ("text_tower", "lora", "tuned_text_epochs"),
}


def compose_paper(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_every_arm_file_is_described():
    assert {p.stem for p in (CONF / "arm").glob("*.yaml")} == set(ARMS)


@pytest.mark.parametrize("preset", ["paper_cpu", "paper_full"])
def test_paper_presets_sweep_the_paper_arms_on_cold_item(preset):
    cfg = compose_paper(f"experiment={preset}")
    params = cfg.hydra.sweeper.params
    assert set(params["+arm"].split(",")) == PAPER_ARMS
    assert len(str(params["seed"]).split(",")) == (2 if preset == "paper_cpu" else 3)
    assert cfg.scenario._target_.endswith("ColdItemScenario")


@pytest.mark.parametrize("preset", ["paper_cpu", "paper_full"])
@pytest.mark.parametrize("arm", sorted(ARMS))
def test_arm_selects_its_pair_and_reads_the_budget(preset, arm):
    model, strategy, budget = ARMS[arm]
    cfg = compose_paper(f"experiment={preset}", f"+arm={arm}")
    assert cfg.hydra.runtime.choices.model == model
    assert cfg.hydra.runtime.choices.encoder == ("smollm2" if arm.endswith("_smollm2") else "minilm")
    if strategy:
        assert cfg.hydra.runtime.choices.strategy == strategy
    assert cfg.trainer.max_epochs == (cfg.budget[budget] if budget else None)
    if budget == "tuned_text_epochs":  # a trained encoder starts from the frozen arm's heads (LP-FT)
        assert cfg.model.lp_ft is True

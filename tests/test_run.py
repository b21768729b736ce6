"""End to end through ``python -m recexp``: the run record, per-user files, W&B offline files, multiruns.

Bad input is checked in ``test_bad_input.py``."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, recexp
from wandb_records import history_and_summary

RECORD_KEYS = {"run_id", "status", "error", "metrics", "segments", "stages", "effective", "cost", "split", "config",
               "versions", "git_sha", "provenance"}
COST_KEYS = {"trainable_params", "total_params", "train_seconds", "eval_seconds", "peak_memory_mb", "device", "world_size"}


# starts python -m recexp: the tests that use it are marked subprocess
@pytest.fixture(scope="module")
def cold_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    done = recexp("model=random", "scenario=cold_item", "logger=wandb", f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    assert done.returncode == 0, done.stderr
    return tmp / "run"


@pytest.mark.subprocess
def test_record_has_every_key(cold_run):
    record = json.loads((cold_run / "results.json").read_text())
    assert RECORD_KEYS <= set(record) and record["status"] == "ok" and record["error"] is None
    assert set(record["metrics"]) == {"valid", "test"} and "ndcg@10" in record["metrics"]["test"]
    views = {"head", "tail", "cold", "warm"}  # each item segment restricted, and as the full ranking (`_full`)
    assert set(record["segments"]) == {"all", *views, *(f"{s}_full" for s in views)}
    assert record["stages"]["test"] == record["segments"] and record["stages"]["valid"]["all"] == record["metrics"]["valid"]
    assert COST_KEYS <= set(record["cost"]) and record["cost"]["device"] == "cpu"
    assert len(record["split"]["hash"]) == 64 and record["split"]["counts"]["users"] == 943
    assert record["config"]["model"]["_target_"].endswith("RandomRecommender")
    assert record["versions"]["recbole"] == "1.2.1"
    assert record["objective"] == record["metrics"]["valid"]["ndcg@10"]
    assert {"host", "pid", "started", "attempts"} <= set(record["provenance"]) and record["provenance"]["attempts"] == 1


@pytest.mark.subprocess
def test_record_is_readable_as_the_other_files_of_the_run(cold_run):
    def mode(path):
        return path.stat().st_mode & 0o777
    assert mode(cold_run / "results.json") == mode(cold_run / "per_user_test.csv.gz")  # a colleague can compare it


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_json_takes_the_process_umask(tmp_path, umask):
    from recexp.tracking import write_json_atomic

    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1} and list(tmp_path.iterdir()) == [tmp_path / "r.json"]


@pytest.mark.subprocess
def test_metrics_recompute_from_saved_files(cold_run):
    """Independent recomputation: the saved top-K lists + the split artifact give the reported NDCG."""
    record = json.loads((cold_run / "results.json").read_text())
    artifact = Path(record["split"]["path"])
    if not artifact.is_absolute():
        artifact = ROOT / artifact
    meta = json.loads((artifact / "split.json").read_text())
    test = pd.read_csv(artifact / "test.inter", sep="\t", dtype=str)
    rankings = np.load(cold_run / "rankings_test.npz", allow_pickle=True)
    per_user = pd.read_csv(cold_run / "per_user_test.csv.gz", dtype={"user": str})
    for segment in ("cold", "all"):
        allowed = set(meta["stages"]["test"]["segments"][segment])
        users, topk = rankings[f"{segment}/users"], rankings[f"{segment}/topk"]
        item_tokens = _item_tokens()
        ndcgs = []
        positives = test[test["item_id:token"].isin(allowed)].groupby("user_id:token")["item_id:token"].apply(set)
        user_tokens_all = _user_tokens()
        for user, row in zip(users, topk):
            pos = positives[user_tokens_all[user]]
            gains = [1 / np.log2(i + 2) for i, item in enumerate(row[:10]) if item >= 0 and item_tokens[item] in pos]
            ideal = sum(1 / np.log2(i + 2) for i in range(min(len(pos), 10)))
            ndcgs.append(sum(gains) / ideal)
        assert np.mean(ndcgs) == pytest.approx(record["segments"][segment]["ndcg@10"], abs=1e-9)
        saved = per_user[per_user["segment"] == segment]["ndcg@10"].to_numpy()
        np.testing.assert_allclose(np.sort(saved), np.sort(ndcgs), atol=1e-9)


def _item_tokens():
    from recexp.data import AtomicDataset

    return AtomicDataset(name="ml-100k").load().item_tokens


def _user_tokens():
    from recexp.data import AtomicDataset

    return AtomicDataset(name="ml-100k").load().user_tokens


@pytest.mark.subprocess
def test_wandb_offline_run_recorded_config_and_results(cold_run):
    record = json.loads((cold_run / "results.json").read_text())
    _, summary, config = history_and_summary(cold_run)
    assert float(summary["test/cold/ndcg@10"]) == pytest.approx(record["segments"]["cold"]["ndcg@10"])
    assert float(summary["valid/ndcg@10"]) == pytest.approx(record["metrics"]["valid"]["ndcg@10"])
    assert "cost/train_seconds" in summary
    assert json.loads(config["scenario"])["_target_"].endswith("ColdItemScenario")


@pytest.mark.subprocess
def test_labelled_pairs_score_every_model_pointwise(tmp_path):
    """BPR has no notion of labels, yet its scores rank liked above disliked pairs: AUC and GAUC per segment."""
    done = recexp("model=bpr", "scenario=random", "scenario.label_threshold=4", "trainer.max_epochs=3", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    for where in (record["metrics"]["test"], record["segments"]["all"], record["segments"]["tail"]):
        assert {"auc", "gauc"} <= set(where) and "logloss" not in where  # BPR scores are not probabilities
    assert 0.5 < record["metrics"]["test"]["auc"] < 0.8
    assert record["effective"]["max_epochs"] == 3 and record["effective"]["epochs_run"] == 3
    per_user = pd.read_csv(tmp_path / "run" / "per_user_test.csv.gz", dtype={"user": str})
    assert {"gauc", "n_pairs", "ndcg@10"} <= set(per_user.columns)


@pytest.mark.subprocess
def test_multirun_shares_a_wandb_group_and_skips_finished_runs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("-m", "model=random", "seed=0,1", "logger=wandb", f"hydra.sweep.dir={sweep}")
    first = recexp(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert [r["status"] for r in records] == ["ok", "ok"]
    groups = {_group(p.parent) for p in sweep.glob("*/results.json")}
    assert groups == {"sweep"}
    again = recexp(*args, cwd=tmp_path)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already finished") == 2
    assert [json.loads(p.read_text())["started_at"] for p in sorted(sweep.glob("*/results.json"))] == [
        r["started_at"] for r in records
    ]


def _group(run_dir: Path) -> str:
    from wandb_records import read_records

    run_file = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    runs = [r.run for r in read_records(run_file) if r.WhichOneof("record_type") == "run"]
    return runs[0].run_group


@pytest.mark.subprocess
@pytest.mark.parametrize("where, recorded", [("", True), ("lib/site-packages/", False)])
def test_git_sha_is_recexps_own_commit_or_none(tmp_path, where, recorded):
    """A checkout records its commit; a package installed somewhere inside another repository records none."""
    import importlib.util

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    package = tmp_path / where / "recexp"
    package.mkdir(parents=True)
    (package / "tracking.py").write_text((ROOT / "recexp" / "tracking.py").read_text())
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "other")
    spec = importlib.util.spec_from_file_location("tracking_copy", package / "tracking.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.git_sha() == (git("rev-parse", "HEAD").strip() if recorded else None)

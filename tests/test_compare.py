"""recexp.compare: numbers recomputed from per-user files, ranking marks, LaTeX, Holm, plots, errors.

Synthetic run folders (written here) give exact control over values; one real ``model=random``
sweep checks the tool on what ``python -m recexp`` actually writes.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import CONF, ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats

from recexp.compare import Options, compare
from recexp.compare.aggregate import constant_by_construction, ranks
from recexp.compare.buckets import item_buckets, ranked_items, recall_by_bucket
from recexp.compare.cli import main as cli_main
from recexp.compare.load import Run, find_runs, uses_text_encoder
from recexp.compare.plots import pareto_front
from recexp.compare.rows import axis_value
from recexp.compare.stats import holm, wilcoxon
from recexp.compare.tables import TableSpec
from recexp.compare.tradeoff import tail_setting
from recexp.errors import RecexpError

PNG = b"\x89PNG\r\n\x1a\n"
USERS = [str(u) for u in range(1, 41)]


# --- synthetic run folders ---------------------------------------------------------------------


def write_run(
    folder: Path,
    model: str,
    seed: int,
    shift: float = 0.0,
    gini: float = 0.3,
    strategy: str | None = None,
    split_hash: str | None = None,
    status: str = "ok",
    extra_config: dict | None = None,
    params: int = 0,
    noise_sd: float = 0.0,
) -> Path:
    """A run folder as ``python -m recexp`` leaves it: results.json, per-user CSV, .hydra choices."""
    folder.mkdir(parents=True)
    base = np.random.default_rng(seed)  # the same users' base values for every model of a seed
    noise = np.random.default_rng([seed, len(model)]).normal(0, noise_sd, (2, len(USERS)))
    per_user = pd.DataFrame({
        "segment": "all", "user": USERS, "n_pos": 5,
        "ndcg@10": np.clip(base.uniform(0.1, 0.5, len(USERS)) + shift + noise[0], 0, 1),
        "recall@10": np.clip(base.uniform(0.05, 0.4, len(USERS)) + shift + noise[1], 0, 1),
    })
    per_user.to_csv(folder / "per_user_test.csv.gz", index=False)
    means = {c: float(per_user[c].mean()) for c in ("ndcg@10", "recall@10")}
    segments = {"all": {**means, "gini@10": gini + 0.01 * seed, "n_users": float(len(USERS))}}
    model_node = {"_target_": f"fake.{model}"}
    if strategy:
        model_node["strategy"] = {"_target_": f"fake.{strategy}"}
    config = {
        "model": model_node, "strategy": {"_target_": f"fake.{strategy or 'frozen'}"}, "seed": seed,
        "dataset": {"name": "ml-100k"}, "scenario": {"_target_": "fake.Random"}, **(extra_config or {}),
    }
    record = {
        "run_id": f"{model}-{strategy}-{seed}-{json.dumps(extra_config)}", "status": status,
        "error": "ValueError: boom" if status == "failed" else None, "config": config,
        "segments": segments if status == "ok" else {}, "metrics": {"test": segments["all"]} if status == "ok" else {},
        "cost": {"trainable_params": params, "train_seconds": 1.0 + seed, "peak_memory_mb": 100.0},
        "split": {"hash": split_hash or f"split-{seed}", "path": "nowhere"},
        "started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:01:00",
    }
    (folder / "results.json").write_text(json.dumps(record))
    (folder / ".hydra").mkdir()
    choices = {"model": model, "strategy": strategy or "frozen", "hydra/launcher": "basic"}
    (folder / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"choices": choices}}}))
    return folder


@pytest.fixture
def three_models(tmp_path) -> Path:
    """pop (reference), bpr (pop + 0.05 for every user), text_tower/lora (pop + 0.01 + noise)."""
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_run(root / f"pop-{seed}", "pop", seed, shift=0.0, gini=0.5)
        write_run(root / f"bpr-{seed}", "bpr", seed, shift=0.05, gini=0.2, params=10_000)
        write_run(root / f"tt-{seed}", "text_tower", seed, 0.01, 0.3, "lora", params=50_000, noise_sd=0.05)
    return root


def run_compare(dirs, out: Path, **options) -> object:
    return compare([Path(d) for d in dirs], out, Options(wandb=False, **options))


# --- aggregation and marks ---------------------------------------------------------------------


def test_rows_aggregate_seeds_and_key_text_models_by_strategy(three_models, tmp_path):
    result = run_compare([three_models], tmp_path / "out", metrics=["ndcg@10", "gini@10"], reference="pop")
    assert list(result.summary["row"]) == ["bpr", "pop", "text_tower/lora"]
    assert list(result.summary["n_seeds"]) == [3, 3, 3]
    for row in result.rows:
        values = [row.runs[s].metric("all", "ndcg@10") for s in row.seeds]
        line = result.summary.set_index("row").loc[row.label]
        assert line["all/ndcg@10"] == pytest.approx(np.mean(values))
        assert line["all/ndcg@10 std"] == pytest.approx(np.std(values, ddof=1))


def test_bold_and_underline_respect_metric_direction(three_models, tmp_path):
    result = run_compare([three_models], tmp_path / "out", metrics=["ndcg@10", "gini@10"], reference="pop")
    lines = {line.split(" | ")[0].strip("| ").replace(" [ref]", ""): line.split(" | ")
             for line in result.files["markdown"].read_text().splitlines() if line.startswith("| ")}
    gini = 3  # columns: row, seeds, ndcg@10, gini@10
    assert lines["bpr"][gini].startswith("**0.2100")  # smallest gini is best
    assert lines["text_tower/lora"][gini].startswith("<u>0.3100")
    assert "**" not in lines["pop"][gini] and "<u>" not in lines["pop"][gini]
    assert lines["bpr"][2].startswith("**")  # largest ndcg is best
    tex = result.files["latex"].read_text()
    assert re.search(r"bpr & 3 & \\textbf\{[^}]*\}[^&]* & \\textbf\{0\.2100", tex)


@pytest.mark.parametrize(
    "values, smaller, expected",
    [
        ([0.1, 0.3, 0.2], False, [None, 1, 2]),
        ([0.1, 0.3, 0.2], True, [1, None, 2]),
        ([0.3, 0.3, 0.2], False, [1, 1, 2]),  # ties share a rank
        ([math.nan, 0.3, 0.2], False, [None, 1, 2]),
        ([0.5], True, [1]),
    ],
)
def test_ranks(values, smaller, expected):
    assert ranks(values, smaller) == expected


@pytest.mark.subprocess  # pdflatex, where it is installed
def test_latex_is_balanced_booktabs(three_models, tmp_path):
    result = run_compare([three_models], tmp_path / "out", reference="pop", metrics=["ndcg@10", "recall@10", "gini@10"])
    tex = result.files["latex"].read_text()
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
    assert tex.count(r"\begin{") == tex.count(r"\end{") == 2
    rules = [r for r in re.findall(r"\\(toprule|midrule|bottomrule)", tex)]
    assert rules == ["toprule", "midrule", "bottomrule"]
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    header = tex.split(r"\midrule")[0].strip().splitlines()[-1]
    assert len(body) == 3 and all(line.endswith(r"\\") for line in body)
    assert {line.count("&") for line in body} == {header.count("&")} == {2 + 3 + 3 - 1}
    assert "_" not in tex.replace(r"\_", "") and "±" not in tex and "<" not in tex.replace("$<$", "")
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[utf8]{inputenc}"
                       "\\begin{document}\\input{" + str(result.files["latex"]) + "}\\end{document}")
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, capture_output=True)
        assert done.returncode == 0, done.stdout[-2000:]


# --- statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pvalues, expected",
    [
        ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),  # 3*0.01; 2*0.03; max(0.06, 1*0.04)
        ([0.02, 0.5], [0.04, 0.5]),
        ([0.4, 0.3, 0.2], [0.6, 0.6, 0.6]),  # monotone: later steps never undercut earlier ones
        ([0.9, 0.6], [1.0, 1.0]),  # clipped at 1
        ([0.01, math.nan, 0.02], [0.02, math.nan, 0.02]),  # NaN stays out of the family
        ([0.04, math.nan, 0.01, 0.03], [0.06, math.nan, 0.03, 0.06]),  # ... and does not disturb the others' order
        ([], []),
    ],
)
def test_holm_matches_hand_computation(pvalues, expected):
    got = holm(pvalues)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e)


def test_rank_biserial_by_hand():
    a, b = np.array([3.0, 2.0, 5.0, 1.0]), np.array([1.0, 2.0, 2.0, 2.0])
    # differences 2, 0, 3, -1 -> zero dropped; ranks of |d| = 2, 3, 1 -> W+ = 5, W- = 1
    _, p, effect, name = wilcoxon(a, b)
    assert name == "rank_biserial" and effect == pytest.approx((5 - 1) / 6)
    assert p == pytest.approx(stats.wilcoxon(a, b).pvalue)


@pytest.mark.filterwarnings("ignore:Precision loss occurred")  # scipy on bpr's constant differences
@pytest.mark.parametrize("test", ["wilcoxon", "ttest"])
def test_significance_pools_users_over_seeds_with_holm(three_models, tmp_path, test):
    result = run_compare([three_models], tmp_path / "out", reference="pop", test=test, metrics=["ndcg@10", "gini@10"])
    sig = result.significance
    ndcg = sig[sig.metric == "ndcg@10"].set_index("row")
    assert set(ndcg.index) == {"bpr", "text_tower/lora"}
    pooled = {}
    for label in ("bpr", "text_tower/lora", "pop"):
        row = next(r for r in result.rows if r.label == label)
        pooled[label] = np.concatenate([
            pd.read_csv(row.runs[s].path / "per_user_test.csv.gz")["ndcg@10"].to_numpy() for s in (0, 1, 2)
        ])
    scipy_test = stats.wilcoxon if test == "wilcoxon" else stats.ttest_rel
    raw = {k: scipy_test(pooled[k], pooled["pop"]).pvalue for k in ("bpr", "text_tower/lora")}
    for label, p in raw.items():
        assert ndcg.loc[label, "n_pairs"] == 3 * len(USERS) and ndcg.loc[label, "n_seeds"] == 3
        assert ndcg.loc[label, "p_value"] == pytest.approx(p)
    expected = holm(list(raw.values()))
    assert list(ndcg.loc[list(raw), "p_holm"]) == pytest.approx(expected)
    assert bool(ndcg.loc["bpr", "significant"]) and ndcg.loc["bpr", "mean_diff"] == pytest.approx(0.05, abs=1e-9)
    assert sig[sig.metric == "gini@10"]["p_value"].isna().all()  # list-level: nothing to pair
    assert "†" in result.files["markdown"].read_text()
    saved = pd.read_csv(result.files["significance"])
    assert {"p_value", "p_holm", "effect_size", "effect_measure"} <= set(saved.columns)


# --- buckets and plots ---------------------------------------------------------------------------


def test_recall_by_popularity_bucket_by_hand():
    train = pd.DataFrame({"user": list("aaabbc"), "item": ["i1", "i1", "i1", "i2", "i2", "i3"]})
    buckets = item_buckets(train, np.array(["i1", "i3", "i9"]), n_buckets=3)
    assert buckets.to_dict() == {"i1": "B1 head", "i2": "B2", "i3": "B3 tail", "i9": "cold"}
    topk = pd.DataFrame({"user": ["u", "u", "v", "v"], "item": ["i1", "i9", "i3", "i2"], "rank": [0, 1, 0, 1]})
    test = pd.DataFrame({"user": ["u", "u", "v", "v"], "item": ["i1", "i3", "i3", "i9"]})
    # k=1: u hits i1 (head 1/1), misses i3 (tail 0/1); v hits i3 (tail 1/1), misses i9 (cold 0/1)
    assert recall_by_bucket(topk, test, buckets, k=1) == {"B1 head": 1.0, "B3 tail": 0.5, "cold": 0.0}
    assert recall_by_bucket(topk, test, buckets, k=2)["cold"] == 0.0


def test_empty_slots_of_saved_lists_are_no_item():
    """A user with fewer rankable items than K has -1 slots; none may decode to a real item (the last one)."""
    tokens = (np.array(["u0", "u1"]), np.array(["i0", "i1", "i2"]))
    frame = ranked_items(np.array([0, 1]), np.array([[2, 0, 1], [1, -1, -1]]), tokens)
    assert frame.to_dict("list") == {"user": ["u0"] * 3 + ["u1"], "item": ["i2", "i0", "i1", "i1"], "rank": [0, 1, 2, 0]}
    test = pd.DataFrame({"user": ["u1", "u1"], "item": ["i1", "i2"]})
    buckets = pd.Series({"i0": "B1 head", "i1": "B1 head", "i2": "B1 head"})
    assert recall_by_bucket(frame, test, buckets, k=3) == {"B1 head": 0.5}  # i2 was never in u1's list


@pytest.mark.parametrize(
    "cost, quality, smaller, expected",
    [
        ([0, 10, 100], [0.1, 0.2, 0.3], False, [True, True, True]),
        ([0, 10, 100], [0.3, 0.2, 0.1], False, [True, False, False]),
        ([0, 10, 100], [0.3, 0.2, 0.1], True, [True, True, True]),  # smaller is better: each buys a gain
        ([5, 5, 1], [0.2, 0.2, 0.1], False, [True, True, True]),
        ([1, math.nan], [0.1, 0.9], False, [True, False]),
    ],
)
def test_pareto_front(cost, quality, smaller, expected):
    assert pareto_front(cost, quality, smaller) == expected


# --- failed runs and bad input -------------------------------------------------------------------


def test_failed_runs_are_listed_never_dropped(three_models, tmp_path, capsys):
    write_run(three_models / "broken", "bpr", 3, status="failed")
    write_run(three_models / "killed", "pop", 4, status="running")
    out = tmp_path / "out"
    assert cli_main([str(three_models), "--out", str(out), "--no-wandb", "--reference", "pop"]) == 0
    failed = pd.read_csv(out / "failed.csv")
    assert sorted(failed["status"]) == ["failed", "running"]
    assert set(failed["path"].map(lambda p: Path(p).name)) == {"broken", "killed"}
    assert failed.loc[failed.status == "failed", "error"].item() == "ValueError: boom"
    markdown = (out / "table.md").read_text()
    assert "## Failed or unfinished runs" in markdown and "broken" in markdown and "killed" in markdown
    captured = capsys.readouterr()
    assert "2 failed or unfinished" in captured.err


def _error(dirs, out, **options) -> str:
    with pytest.raises(RecexpError) as info:
        run_compare(dirs, out, **options)
    return str(info.value)


def test_error_for_a_folder_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "No results.json found under" in _error([tmp_path / "empty"], tmp_path / "out")
    assert "not found" in _error([tmp_path / "missing"], tmp_path / "out")


def test_error_when_every_run_failed(tmp_path):
    write_run(tmp_path / "runs" / "a", "bpr", 0, status="failed")
    message = _error([tmp_path / "runs"], tmp_path / "out")
    assert "No finished run" in message and "ValueError: boom" in message
    assert len(pd.read_csv(tmp_path / "out" / "failed.csv")) == 1


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"metrics": ["ndgc@10"]}, "Unknown metric(s) ndgc@10; these runs have: gini@10, ndcg@10, recall@10"),
        ({"segments": ["cold"]}, "Unknown segment(s) cold; these runs have: all"),
        ({"reference": "lightgcn"}, "matches no row; rows: bpr, pop, text_tower/lora"),
        ({"row_key": ["model", "seed"]}, "cannot contain seed"),
        ({"row_key": ["model", "nosuch.key"]}, "Unknown row key(s) nosuch.key"),
        ({"test": "anova"}, "Unknown test 'anova'"),
        ({"metrics": ["ndcg@10"], "plot_metric": "recall@10"}, "is not among the table's metrics"),
    ],
)
def test_bad_options_name_what_is_available(three_models, tmp_path, options, expected):
    assert expected in _error([three_models], tmp_path / "out", **options)


def test_error_for_a_run_missing_a_metric(three_models, tmp_path):
    path = three_models / "bpr-1" / "results.json"
    record = json.loads(path.read_text())
    del record["segments"]["all"]["recall@10"]
    path.write_text(json.dumps(record))
    message = _error([three_models], tmp_path / "out", metrics=["ndcg@10", "recall@10"])
    assert "bpr-1/results.json lacks recall@10 in segment 'all'" in message and "ndcg@10" in message


@pytest.mark.parametrize("seeds", [(1,), (0, 1, 2)])
def test_a_metric_recorded_as_not_computed_reads_n_c_where_no_seed_has_it(three_models, tmp_path, seeds):
    why = "stage 'test' has no labelled pairs"
    for seed in seeds:
        path = three_models / f"bpr-{seed}" / "results.json"
        record = json.loads(path.read_text())
        del record["segments"]["all"]["recall@10"]
        record["not_computed"] = {"test": {"all": {"recall@10": why}}}
        path.write_text(json.dumps(record))
    result = run_compare([three_models], tmp_path / "out", metrics=["ndcg@10", "recall@10"], reference="pop")
    markdown = (tmp_path / "out" / "table.md").read_text()
    bpr = next(line for line in markdown.splitlines() if line.startswith("| bpr |"))
    csv = pd.read_csv(tmp_path / "out" / "table.csv").set_index("row")
    if len(seeds) == 1:  # the other seeds have it: their mean, as for any missing seed
        assert " n/c " not in bpr and "n/c" not in markdown and "not computed" not in csv.columns
        assert result.summary.set_index("row").loc["bpr", "all/recall@10 n"] == 2
        return
    assert bpr.count(" n/c ") == 1 and f"n/c: not computed, as the runs record it; bpr: all/recall@10 ({why})." in markdown
    assert csv.loc["bpr", "all/recall@10"] == "n/c" and csv.loc["bpr", "not computed"] == f"all/recall@10: {why}"
    assert float(csv.loc["pop", "all/recall@10"]) > 0 and pd.isna(csv.loc["pop", "not computed"])
    assert "n/c" in (tmp_path / "out" / "table.tex").read_text()


def test_refuses_to_mix_splits_in_one_row(three_models, tmp_path):
    other = tmp_path / "older"
    write_run(other / "bpr-0", "bpr", 0, shift=0.05, split_hash="another-split")
    message = _error([three_models, other], tmp_path / "out")
    assert "used different splits" in message and "another-spli" in message and "cannot share a row" in message


def test_row_key_adds_swept_axes_and_refuses_ambiguous_rows(tmp_path):
    root = tmp_path / "runs"
    for lr in (0.01, 0.1):
        for seed in (0, 1):
            write_run(root / f"bpr-{lr}-{seed}", "bpr", seed, shift=lr, extra_config={"trainer": {"lr": lr}})
    result = run_compare([root], tmp_path / "out")
    assert list(result.summary["row"]) == ["bpr (trainer.lr=0.01)", "bpr (trainer.lr=0.1)"]
    assert "differ in trainer.lr (0.01 vs 0.1)" in _error([root], tmp_path / "out2", row_key=["model"])


def test_duplicate_runs_of_a_seed_are_noted(three_models, tmp_path):
    shutil.copytree(three_models / "pop-0", tmp_path / "again" / "pop-0")
    result = run_compare([three_models, tmp_path / "again"], tmp_path / "out", reference="pop")
    assert list(result.summary["n_seeds"]) == [3, 3, 3]
    assert any("2 finished runs of seed 0" in note for note in result.notes)
    assert "## Notes" in result.files["markdown"].read_text()


@pytest.mark.subprocess
def test_cli_reports_errors_without_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "recexp.compare", str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: No results.json") and "Traceback" not in done.stderr


# --- accuracy against tail exposure along λ / α -------------------------------------------------

TAILS = {"rerank": "recexp.tail.Rerank", "reweight": "recexp.tail.Reweight", "augment": "recexp.augment.Augment"}
LONGTAIL_KEY = ["model", "strategy", "tail", "tail.method", "tail.lam", "tail.alpha"]  # make longtail's --row-key


def write_tail_run(root: Path, model: str, seed: int, tail: str | None = None, method: str | None = None,
                   strength: float = 0.0, strategy: str | None = None) -> Path:
    """A run of ``model`` with ``tail=<tail>``: accuracy falls and tail exposure rises with ``strength``."""
    key = {"rerank": "lam", "reweight": "alpha"}.get(tail)
    node = {"_target_": TAILS[tail], "method": method, **({key: strength} if key else {})} if tail else None
    folder = write_run(root / f"{model}-{tail}-{method}-{strength}-{seed}", model, seed, shift=-0.02 * strength,
                       strategy=strategy, extra_config={"tail": node} if tail else None)
    record = json.loads((folder / "results.json").read_text())
    record["segments"]["all"]["aplt@10"] = 0.1 + 0.2 * strength + 0.01 * seed
    record["segments"]["tail_full"] = {"ndcg@10": 0.01, "recall@10": 0.02 + 0.03 * strength + 0.001 * seed}
    (folder / "results.json").write_text(json.dumps(record))
    if tail:  # the tail group choice, as Hydra records it
        choices = json.loads((folder / ".hydra" / "hydra.yaml").read_text())
        choices["hydra"]["runtime"]["choices"]["tail"] = tail
        (folder / ".hydra" / "hydra.yaml").write_text(json.dumps(choices))
    return folder


@pytest.fixture
def longtail_runs(tmp_path) -> Path:
    """make longtail's layout: main arms over seeds 0-2, the further xQuAD λ points over seed 0 only."""
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_tail_run(root, "bpr", seed)
        write_tail_run(root, "bpr", seed, "rerank", "xquad", 0.3)
        write_tail_run(root, "bpr", seed, "reweight", "negatives", 0.5)
        write_tail_run(root, "fusion", seed, strategy="frozen")
        write_tail_run(root, "fusion", seed, "augment", "keywords", strategy="frozen")
    for lam in (0.1, 0.6):
        write_tail_run(root, "bpr", 0, "rerank", "xquad", lam)
    return root


def test_tradeoff_plot_joins_each_strategys_values_from_its_base_model(longtail_runs, tmp_path):
    result = run_compare([longtail_runs], tmp_path / "out", metrics=["ndcg@10", "recall@10", "aplt@10"],
                         segments=["all", "tail_full"], row_key=LONGTAIL_KEY, reference="bpr")
    png, csv = result.files["tail_tradeoff"], result.files["tail_tradeoff_csv"]
    assert png.name == "accuracy_vs_tail_exposure.png" and png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    points = pd.read_csv(csv, dtype={"seeds": str})
    lines = {name: list(line["value"]) for name, line in points.groupby("line", sort=False)}
    assert lines == {"bpr + rerank xquad (λ)": [0.0, 0.1, 0.3, 0.6], "bpr + reweight negatives (α)": [0.0, 0.5]}
    xquad, negatives = (points[points.line == name].set_index("value") for name in lines)
    assert set(xquad["seeds"]) == {"0"} and set(negatives["seeds"]) == {"0 1 2"}  # the seeds all points share
    assert list(xquad["row"]) == ["bpr", "bpr (tail=rerank, tail.method=xquad, tail.lam=0.1)",
                                  "bpr (tail=rerank, tail.method=xquad, tail.lam=0.3)",
                                  "bpr (tail=rerank, tail.method=xquad, tail.lam=0.6)"]
    assert list(xquad["all/aplt@10"]) == pytest.approx([0.1, 0.12, 0.16, 0.22])  # seed 0 alone
    assert negatives.loc[0.5, "all/aplt@10"] == pytest.approx(0.21) and negatives.loc[0.5, "all/aplt@10 std"] == pytest.approx(0.01)
    assert negatives.loc[0.5, "tail_full/recall@10"] == pytest.approx(0.036)
    bpr = result.rows[[r.label for r in result.rows].index("bpr")]
    assert xquad.loc[0.0, "all/ndcg@10"] == pytest.approx(bpr.runs[0].metric("all", "ndcg@10"))
    assert negatives.loc[0.0, "all/ndcg@10"] == pytest.approx(np.mean([bpr.runs[s].metric("all", "ndcg@10") for s in (0, 1, 2)]))
    labels = list(result.summary["row"])  # the augmented arm has its own row, and no line (it has no λ or α)
    assert "fusion/frozen (tail=augment, tail.method=keywords)" in labels and "fusion/frozen" in labels
    assert len(labels) == len(set(labels)) == 7


def test_a_strategy_run_at_strength_0_is_its_lines_0_point(longtail_runs, tmp_path):
    """A RecBole model's α 0 (uniform over training items) is not the plain model (every item): the line
    starts at its own α 0 run where there is one; the plain model keeps its row."""
    for seed in (0, 1, 2):
        folder = write_tail_run(longtail_runs, "bpr", seed, "reweight", "negatives", 0.0)
        record = json.loads((folder / "results.json").read_text())
        record["segments"]["all"]["ndcg@10"] += 0.005  # differs from plain bpr
        (folder / "results.json").write_text(json.dumps(record))
    result = run_compare([longtail_runs], tmp_path / "out", metrics=["ndcg@10", "aplt@10"], segments=["all"],
                         row_key=LONGTAIL_KEY, reference="bpr")
    points = pd.read_csv(result.files["tail_tradeoff_csv"], dtype={"seeds": str})
    negatives = points[points.line == "bpr + reweight negatives (α)"]
    assert list(negatives["value"]) == [0.0, 0.5]
    zero = negatives.iloc[0]
    assert zero["row"] == "bpr (tail=reweight, tail.method=negatives, tail.alpha=0.0)" and zero["tail"] == "reweight"
    rows = {r.label: r for r in result.rows}
    assert zero["all/ndcg@10"] == pytest.approx(np.mean([rows[zero["row"]].runs[s].metric("all", "ndcg@10") for s in (0, 1, 2)]))
    assert "bpr" in rows  # the plain model is still a row of the table
    xquad = points[points.line == "bpr + rerank xquad (λ)"]
    assert xquad.iloc[0]["row"] == "bpr"  # a strategy without its own 0 run still starts at the plain model


@pytest.mark.parametrize(
    "record, choices, expected",
    [
        ({"config": {"tail": {"_target_": TAILS["rerank"], "method": "xquad", "lam": 0.3}}}, {}, ("rerank", "xquad", 0.3)),
        ({"config": {}, "effective": {"tail": "rerank", "tail_method": "penalty", "tail_lam": 1}}, {}, ("rerank", "penalty", 1.0)),
        ({"config": {"tail": {"method": "negatives", "alpha": 0.25}}}, {"tail": "reweight"}, ("reweight", "negatives", 0.25)),
        ({"config": {"tail": {"_target_": TAILS["augment"], "method": "keywords"}}}, {}, ("augment", "keywords", None)),
        ({"config": {"tail": None}}, {}, (None, None, None)),
    ],
)
def test_tail_setting_from_effective_settings_choices_or_config(record, choices, expected):
    assert astuple(tail_setting(Run(Path("run"), record, choices))) == expected


def test_tradeoff_uses_the_exposure_metrics_present_and_needs_a_line(longtail_runs, tmp_path):
    for path in longtail_runs.glob("*/results.json"):
        record = json.loads(path.read_text())
        del record["segments"]["tail_full"]
        path.write_text(json.dumps(record))
    result = run_compare([longtail_runs], tmp_path / "out", metrics=["ndcg@10", "aplt@10"], row_key=LONGTAIL_KEY)
    points = pd.read_csv(result.files["tail_tradeoff_csv"])
    assert "all/aplt@10" in points.columns and "tail_full/recall@10" not in points.columns
    for folder in longtail_runs.glob("bpr-re*"):  # no λ or α left: no trade-off plot
        shutil.rmtree(folder)
    result = run_compare([longtail_runs], tmp_path / "out2", metrics=["ndcg@10"], row_key=LONGTAIL_KEY[:4])
    assert "tail_tradeoff" not in result.files and not (tmp_path / "out2" / "accuracy_vs_tail_exposure.png").exists()


# --- a real sweep ------------------------------------------------------------------------------


# starts python -m recexp: the tests that use it are marked subprocess
@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> Path:
    """model=random on cold_item, seeds 0 and 1, two tie seeds: 4 runs written by python -m recexp."""
    tmp = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "RECEXP_CACHE_DIR": str(tmp / "cache"), "WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "recexp", "-m", "hydra/launcher=local_parallel", "model=random", "scenario=cold_item",
         "seed=0,1", "evaluator.tie_seed=0,1", "logger=none", "progress=false", f"hydra.sweep.dir={tmp}/sweep"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "sweep"


@pytest.fixture(scope="module")
def real_compare(real_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return compare([real_sweep], out, Options(wandb=False, metrics=["ndcg@10", "recall@10", "gini@10"]))


@pytest.mark.subprocess
def test_table_numbers_recompute_from_per_user_files(real_sweep, real_compare):
    table = pd.read_csv(real_compare.files["csv"]).set_index("row")
    assert list(table.index) == ["random (evaluator.tie_seed=0)", "random (evaluator.tie_seed=1)"]
    for tie_seed, label in enumerate(table.index):
        per_seed = {}
        for path in real_sweep.glob("*/results.json"):
            config = json.loads(path.read_text())["config"]
            if config["evaluator"]["tie_seed"] == tie_seed:
                per_user = pd.read_csv(path.parent / "per_user_test.csv.gz")
                per_seed[config["seed"]] = per_user.groupby("segment")[["ndcg@10", "recall@10"]].mean()
        assert sorted(per_seed) == [0, 1] and table.loc[label, "n_seeds"] == 2
        for segment in ("all", "head", "tail", "warm", "cold"):
            for metric in ("ndcg@10", "recall@10"):
                values = [frame.loc[segment, metric] for frame in per_seed.values()]
                assert table.loc[label, f"{segment}/{metric}"] == pytest.approx(np.mean(values), abs=1e-12)
                assert table.loc[label, f"{segment}/{metric} std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)


@pytest.mark.subprocess
def test_pngs_are_written_and_non_empty(real_compare):
    import matplotlib.image

    names = {"quality_vs_params", "quality_vs_time", "popularity_buckets"}
    assert names <= set(real_compare.files)
    for name in names:
        path = real_compare.files[name]
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
        assert matplotlib.image.imread(path).shape[0] > 200
    assert not [n for n in real_compare.notes if "left out" in n]


@pytest.mark.subprocess
def test_paired_test_on_the_same_split(real_compare):
    sig = real_compare.significance
    ndcg = sig[(sig.metric == "ndcg@10") & (sig.segment == "cold")].iloc[0]
    assert ndcg["n_seeds"] == 2 and ndcg["n_pairs"] > 100 and not math.isnan(ndcg["p_value"])


@pytest.mark.subprocess
def test_summary_run_logged_to_wandb_offline(real_sweep, tmp_path):
    out = tmp_path / "out"
    compare([real_sweep], out, Options(metrics=["ndcg@10"], segments=["all"]))
    media = out / "wandb" / "latest-run" / "files" / "media"
    tables = list((media / "table").rglob("*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"][0] == "row" and len(logged["data"]) == 2
    assert len(list((media / "images").rglob("*.png"))) == 3


@pytest.mark.parametrize(
    "segment, metric, value",
    [("head", "aplt@10", 0), ("tail", "aplt@5", 1), ("cold", "aplt@10", 1),
     ("cold", "averagepopularity@10", 0), ("all", "aplt@10", None), ("warm", "aplt@10", None),
     ("head", "averagepopularity@10", None), ("cold", "ndcg@10", None), ("tail", "recall@10", None)],
)
def test_constant_by_construction_follows_segment_definitions(segment, metric, value):
    assert constant_by_construction(segment, metric) == value


@pytest.mark.subprocess
def test_popularity_bias_columns_come_from_full_lists_only(real_sweep, tmp_path):
    """Restricted segments carry no APLT or ARP (inside head/tail/cold they would be constant): no such column."""
    metrics = ["ndcg@10", "aplt@10", "averagepopularity@10"]
    result = compare([real_sweep], tmp_path / "out", Options(wandb=False, metrics=metrics))
    header = result.files["markdown"].read_text().splitlines()[0]
    restricted = [f"{m} ({s})" for m in ("aplt@10", "averagepopularity@10 ↓") for s in ("head", "tail", "cold", "warm")]
    assert not [name for name in restricted if name in header]
    assert "aplt@10 (all)" in header and "aplt@10 (tail_full)" in header and "ndcg@10 (cold)" in header
    assert "ndcg@10 (cold_full)" in header
    table = pd.read_csv(result.files["csv"])
    assert "tail/aplt@10" not in table.columns and (table["head_full/aplt@10"] < 1).all()
    latex = result.files["latex"].read_text()
    widths = {line.count("&") for line in latex.splitlines() if line.endswith(r"\\") and "multicolumn" not in line}
    assert len(widths) == 1


def test_columns_constant_by_construction_are_left_out_of_older_records():
    """Records written before the full view carry APLT inside head/tail/cold: those columns are left out."""
    metrics = ["ndcg@10", "aplt@10", "averagepopularity@10"]
    spec = TableSpec(metrics, ["all", "head", "tail", "cold"], "ref", "wilcoxon", 0.05)
    assert spec.shown("head") == ["ndcg@10", "averagepopularity@10"] and spec.shown("cold") == ["ndcg@10"]
    assert spec.omitted() == ["head/aplt@10 = 0", "tail/aplt@10 = 1", "cold/aplt@10 = 1", "cold/averagepopularity@10 = 0"]
    assert TableSpec(metrics, ["head"], "ref", "wilcoxon", 0.05, keep_constant=True).shown("head") == metrics


@pytest.mark.parametrize("arm", sorted(p.stem for p in (CONF / "arm").glob("*.yaml")))
def test_text_models_get_their_strategy_in_the_row_label(arm):
    """Text models nest encoder and strategy under model.module; their rows read model/strategy (so a record
    written before it said ``model.text_encoder`` is read)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+arm={arm}", "logger=none"])
    run = Run(Path("runs") / arm, {"config": OmegaConf.to_container(cfg, resolve=False)})
    assert uses_text_encoder(run) is arm.startswith(("text_tower", "fusion"))


@pytest.mark.parametrize("recorded", [True, False])
def test_rows_read_the_model_kind_from_the_record_not_the_config(recorded, tmp_path):
    folder = write_run(tmp_path / "run", "m", 0, strategy=None if recorded else "lora")  # the config suggests the opposite
    record = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps({**record, "model": {"text_encoder": recorded}}))
    (run,) = find_runs([folder])
    assert uses_text_encoder(run) is recorded and (axis_value(run, "strategy") is None) is not recorded


# --- few-shot sweeps (scenario.shots = K): arms x K, paired bootstrap of pooled AUC ------------------

SHOTS = (16, 64, 256)
FEWSHOT_ARMS = {  # (model, strategy or None) -> how much the label moves the score
    ("user_rate", None): 0.3,
    ("twin", None): 0.3,  # the same scores as user_rate, pair for pair
    ("lm_classifier", "lora"): 1.5,
}


def fewshot_pairs() -> pd.DataFrame:
    """The fixed test pairs of every run (TALLRec's test part does not depend on K or seed): 16 users."""
    rng = np.random.default_rng(123)
    users = np.repeat([str(u) for u in range(900, 916)], 20)
    return pd.DataFrame({"user_id": users, "item_id": [str(i) for i in range(len(users))],
                         "label": rng.integers(0, 2, len(users)).astype(float)})


def write_fewshot_run(folder: Path, model: str, strategy: str | None, shots: int, seed: int, signal: float) -> Path:
    """A tallrec run folder: results.json (auc, gauc), per_user_test.csv.gz (gauc), pairs_test.csv.gz."""
    from recexp.evaluate.metrics import gauc, roc_auc

    folder.mkdir(parents=True)
    pairs = fewshot_pairs()
    noise = np.random.default_rng([seed, shots, len(model) if model != "twin" else len("user_rate")])
    pairs["score"] = signal * pairs["label"] + noise.normal(0, 1, len(pairs))
    pairs.to_csv(folder / "pairs_test.csv.gz", index=False)
    value, per_user = gauc(pairs.rename(columns={"user_id": "user"}))
    frame = pd.DataFrame({"segment": "all", "user": per_user.index, "n_pairs": 20, "gauc": per_user.to_numpy()})
    frame.to_csv(folder / "per_user_test.csv.gz", index=False)
    metrics = {"auc": roc_auc(pairs["label"].to_numpy(), pairs["score"].to_numpy()), "gauc": value, "n_pairs": 320.0}
    model_node = {"_target_": f"fake.{model}", **({"module": {"strategy": {"_target_": f"fake.{strategy}"}}} if strategy else {})}
    config = {"model": model_node, "strategy": {"_target_": f"fake.{strategy or 'frozen'}"}, "seed": seed,
              "dataset": {"name": "ml-100k"}, "scenario": {"_target_": "recexp.scenarios.TallRecScenario", "shots": shots}}
    record = {
        "run_id": f"{model}-{strategy}-{shots}-{seed}", "status": "ok", "error": None, "config": config,
        "segments": {"all": metrics}, "metrics": {"test": metrics},
        "cost": {"trainable_params": 1000 if strategy else 0, "train_seconds": shots / 16, "eval_seconds": 2.0,
                 "peak_memory_mb": 100.0},
        "split": {"hash": f"tallrec-{shots}-{seed}", "path": "nowhere"},
        "started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:01:00",
    }
    (folder / "results.json").write_text(json.dumps(record))
    (folder / ".hydra").mkdir()
    choices = {"model": model, "strategy": strategy or "frozen", "scenario": "tallrec", "fewshot_arm": model}
    (folder / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"choices": choices}}}))
    return folder


@pytest.fixture(scope="module")
def fewshot_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fewshot") / "runs"
    for (model, strategy), signal in FEWSHOT_ARMS.items():
        for shots in SHOTS:
            for seed in (0, 1, 2):
                write_fewshot_run(root / f"{model}-{shots}-{seed}", model, strategy, shots, seed, signal)
    return root


@pytest.fixture(scope="module")
def fewshot_compare(fewshot_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("fewshot-out")
    return compare([fewshot_runs], out, Options(wandb=False, metrics=["auc", "gauc"], reference="user_rate", resamples=500))


def test_fewshot_table_has_auc_and_gauc_per_k(fewshot_runs, fewshot_compare):
    table = pd.read_csv(fewshot_compare.files["fewshot_csv"])
    assert list(zip(table["arm"], table["shots"])) == [(a, k) for a in ("user_rate", "twin", "lm_classifier/lora") for k in SHOTS]
    assert table["reference"].tolist() == [a == "user_rate" for a in table["arm"]]
    for line in table.itertuples():
        model = line.arm.split("/")[0]
        records = [json.loads((fewshot_runs / f"{model}-{line.shots}-{s}" / "results.json").read_text()) for s in (0, 1, 2)]
        for metric in ("auc", "gauc"):
            values = [r["segments"]["all"][metric] for r in records]
            assert getattr(line, metric) == pytest.approx(np.mean(values))
            assert table.loc[line.Index, f"{metric} std"] == pytest.approx(np.std(values, ddof=1))
        assert line.n_seeds == 3 and table.loc[line.Index, "train s"] == pytest.approx(line.shots / 16)
    lora = table[table.arm == "lm_classifier/lora"]
    assert (lora["trainable params"] == 1000).all() and (table["eval s"] == 2.0).all()
    markdown = fewshot_compare.files["fewshot"].read_text()
    assert "| user_rate [ref] | 16 | 3 |" in markdown and "| lm_classifier/lora | 256 | 3 | **" in markdown
    # the main table keys rows by arm and K, K in numeric order, the reference marked at every K
    assert list(fewshot_compare.summary["row"][:3]) == [f"twin (scenario.shots={k})" for k in SHOTS]
    assert fewshot_compare.files["markdown"].read_text().count("[ref]") == 3
    assert fewshot_compare.reference == "user_rate" and "recall_by_popularity" not in fewshot_compare.files


def test_fewshot_rows_are_tested_against_the_reference_at_the_same_k(fewshot_runs, fewshot_compare):
    from sklearn.metrics import roc_auc_score

    sig = fewshot_compare.significance
    assert len(sig) == 2 * len(SHOTS) * 2  # (twin, lora) x K x (auc, gauc)
    for line in sig.itertuples():
        shots = int(line.row.split("=")[1].rstrip(")"))
        assert line.reference == f"user_rate (scenario.shots={shots})" and line.n_seeds == 3
    auc, gauc = sig[sig.metric == "auc"].set_index("row"), sig[sig.metric == "gauc"].set_index("row")
    for shots in SHOTS:
        better, twin = f"lm_classifier/lora (scenario.shots={shots})", f"twin (scenario.shots={shots})"
        assert auc.loc[better, "test"] == "paired_bootstrap" and auc.loc[better, "n_pairs"] == 3 * 320
        assert auc.loc[better, "p_value"] == pytest.approx(1 / 501) and auc.loc[better, "significant"]
        assert auc.loc[twin, "p_value"] == 1.0 and auc.loc[twin, "mean_diff"] == 0.0
        diffs = []
        for seed in (0, 1, 2):
            a, b = (pd.read_csv(fewshot_runs / f"{m}-{shots}-{seed}" / "pairs_test.csv.gz") for m in ("lm_classifier", "user_rate"))
            diffs.append(roc_auc_score(a["label"], a["score"]) - roc_auc_score(b["label"], b["score"]))
        assert auc.loc[better, "mean_diff"] == pytest.approx(np.mean(diffs))
        assert gauc.loc[better, "test"] == "wilcoxon" and gauc.loc[better, "n_pairs"] == 3 * 16
        assert gauc.loc[better, "p_value"] < 1e-3 and gauc.loc[twin, "p_value"] == 1.0


def test_paired_bootstrap_by_hand():
    from sklearn.metrics import roc_auc_score

    from recexp.compare.pairs import Paired, auc_rows, paired_bootstrap

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (4, 50)).astype(float)
    scores = np.round(rng.normal(size=(4, 50)), 1)  # ties: mean ranks, as roc_auc_score
    assert auc_rows(labels, scores) == pytest.approx([roc_auc_score(y, s) for y, s in zip(labels, scores)])
    y = rng.integers(0, 2, 200).astype(float)
    same = rng.normal(size=200)
    assert paired_bootstrap([Paired(y, same, same.copy())], 200)["p"] == 1.0
    better = paired_bootstrap([Paired(y, y + rng.normal(0, 0.5, 200), same)], 200)
    assert better["p"] == pytest.approx(1 / 201) and better["low"] > 0 and better["diff"] > 0.3
    close = paired_bootstrap([Paired(y, same + rng.normal(0, 0.05, 200), same)], 200)
    assert close["p"] > 0.05 and close["low"] < 0 < close["high"]


def test_auc_against_shots_plot_draws_tallrec_published_points(fewshot_compare):
    import matplotlib.image

    png, points = fewshot_compare.files["fewshot_plot"], fewshot_compare.files["fewshot_points"]
    assert png.name == "auc_vs_shots.png" and png.read_bytes()[:8] == PNG and matplotlib.image.imread(png).shape[0] > 300
    frame = pd.read_csv(points)
    published = frame[frame.source == "published"]
    tallrec = published[published.series == "TALLRec LLaMA-7B LoRA (published)"].set_index("shots")["mean"]
    assert tallrec.to_dict() == {16: 0.6724, 64: 0.6748, 256: 0.7198}
    assert (published.citation == "Bao et al., TALLRec, RecSys 2023").all()
    assert {f"{m} (published in the TALLRec paper)" for m in ("GRU4Rec", "Caser", "SASRec")} <= set(published.series)
    ours = frame[frame.source == "these runs"]
    assert len(ours) == 9 and set(ours.shots) == set(SHOTS) and (ours.n_seeds == 3).all()


def test_fewshot_cli_and_bad_reference(fewshot_runs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(fewshot_runs), "--out", str(out), "--no-wandb", "--metrics", "auc,gauc", "--bootstrap", "100"]
    assert cli_main(argv + ["--reference", "user_rate"]) == 0
    assert "## Few-shot (all, mean ± std over seeds)" in capsys.readouterr().out
    assert (out / "auc_vs_shots.csv").is_file() and (out / "fewshot.csv").is_file()
    assert "matches no arm; arms: twin, user_rate, lm_classifier/lora" in _error(
        [fewshot_runs], tmp_path / "bad", metrics=["auc"], reference="bpr")


@pytest.mark.parametrize("arm", sorted(p.stem for p in (CONF / "fewshot_arm").glob("*.yaml")))
def test_fewshot_arms_are_labelled_model_or_model_strategy(arm):
    """ID-only pair classifiers (encoder: null) carry no strategy; text models read model/strategy."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fewshot_tallrec", f"+fewshot_arm={arm}", "logger=none"])
    run = Run(Path("runs") / arm, {"config": OmegaConf.to_container(cfg, resolve=False)})
    text = arm.startswith(("lm_classifier", "llm_ranker", "text_", "fusion_"))
    assert uses_text_encoder(run) is text


@pytest.mark.subprocess
def test_fewshot_preset_runs_and_compares(tmp_path):
    """The real preset on its two quickest arms (2 K x 2 seeds), then the comparison `make fewshot` runs."""
    env = {**os.environ, "RECEXP_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "recexp", "-m", "experiment=fewshot_tallrec", "hydra/launcher=basic", "logger=none",
         "progress=false", "+fewshot_arm=user_rate,item_rate", "scenario.shots=16,64", "seed=0,1",
         f"hydra.sweep.dir={tmp_path / 'runs'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(path.read_text()) for path in (tmp_path / "runs").rglob("results.json")]
    assert len(records) == 8 and all(record["model"] == {"text_encoder": False} for record in records)
    argv = [str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--metrics", "auc,gauc",
            "--row-key", "model,strategy,scenario.shots", "--reference", "user_rate", "--no-wandb", "--bootstrap", "200"]
    assert cli_main(argv) == 0
    table = pd.read_csv(tmp_path / "out" / "fewshot.csv")
    assert list(zip(table.arm, table.shots)) == [("user_rate", 16), ("user_rate", 64), ("item_rate", 16), ("item_rate", 64)]
    sig = pd.read_csv(tmp_path / "out" / "significance.csv")
    assert set(sig.test) == {"paired_bootstrap", "wilcoxon"} and (sig.n_seeds == 2).all() and sig.p_value.notna().all()
    assert set(sig[sig.metric == "gauc"].n_pairs) == {2 * 16}  # 16 test users per seed
    assert set(sig[sig.metric == "auc"].n_pairs) == {2 * 1000}  # TALLRec's 1,000 test pairs per seed
    points = pd.read_csv(tmp_path / "out" / "auc_vs_shots.csv")
    assert "TALLRec LLaMA-7B LoRA (published)" in set(points.series)


def test_default_rows_separate_a_model_with_a_tail_strategy_from_it_without(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_tail_run(root, "bpr", seed)
        write_tail_run(root, "bpr", seed, "rerank", "xquad", 0.3)
    result = run_compare([root], tmp_path / "out", metrics=["ndcg@10"], segments=["all"])
    assert sorted(row.label for row in result.rows) == ["bpr", "bpr (tail=rerank)"]


def test_default_rows_key_on_what_an_arm_sets_not_on_its_name(longtail_runs, tmp_path):
    """``longtail_arm=bpr_rerank`` names a bundle of settings (model=bpr tail=rerank ...): keyed on the arm too,
    the base row ``bpr`` (arm bpr) would differ from its xQuAD rows beyond the tail axes, losing the 0 points."""
    arms = {"bpr-None": "bpr", "bpr-rerank": "bpr_rerank", "bpr-reweight": "bpr_reweight", "fusion-None": "fusion_frozen",
            "fusion-augment": "fusion_frozen_augment"}
    for folder in longtail_runs.iterdir():
        hydra_yaml = folder / ".hydra" / "hydra.yaml"
        choices = json.loads(hydra_yaml.read_text())
        choices["hydra"]["runtime"]["choices"]["longtail_arm"] = arms["-".join(folder.name.split("-")[:2])]
        hydra_yaml.write_text(json.dumps(choices))
    result = run_compare([longtail_runs], tmp_path / "out", metrics=["ndcg@10", "aplt@10"], segments=["all"])
    labels = sorted(row.label for row in result.rows)
    assert not any("longtail_arm" in label for label in labels) and len(labels) == 7
    points = pd.read_csv(result.files["tail_tradeoff_csv"])
    lines = {name: list(line["value"]) for name, line in points.groupby("line", sort=False)}
    assert lines == {"bpr + rerank xquad (λ)": [0.0, 0.1, 0.3, 0.6], "bpr + reweight negatives (α)": [0.0, 0.5]}
    by_arm = run_compare([longtail_runs], tmp_path / "by_arm", metrics=["ndcg@10"], segments=["all"], row_key=["longtail_arm", "tail.lam"])
    assert "longtail_arm=bpr_rerank, tail.lam=0.6" in {row.label for row in by_arm.rows}  # an arm is still a key when asked for


def test_saved_per_user_files_keep_ids_that_look_missing(tmp_path):
    """Users "NA" and "null" stay two users when a comparison reads a run's files; an empty metric is NaN."""
    from recexp.compare.load import Run, per_user
    from recexp.records import PER_USER

    written = pd.DataFrame({"segment": ["all", "all", "all"], "user": ["NA", "null", "u3"], "ndcg@10": [0.5, None, 1.0]})
    written.to_csv(tmp_path / PER_USER, index=False)
    read = per_user(Run(path=tmp_path, data={}))
    assert read["user"].tolist() == ["NA", "null", "u3"] and read["ndcg@10"].isna().tolist() == [False, True, False]


def test_curves_average_the_seeds_still_running_at_the_epochs_that_validated():
    from recexp.compare.plots import mean_curve

    epochs, mean = mean_curve([[None, 0.2, None, 0.4], [None, 0.4]])  # trainer.valid_every=2; one seed stopped early
    assert epochs.tolist() == [2, 4] and mean.tolist() == pytest.approx([0.3, 0.4])
    epochs, mean = mean_curve([[0.1, 0.2], [0.3]])
    assert epochs.tolist() == [1, 2] and mean.tolist() == pytest.approx([0.2, 0.2])


def test_cost_columns_are_chosen_and_curves_drawn(three_models, tmp_path, capsys):
    for folder in three_models.glob("tt-*"):  # the LoRA runs trained an encoder and recorded their validation curve
        record = json.loads((folder / "results.json").read_text())
        record["cost"]["encoder_tokens_per_second"] = 1234.0
        record["effective"] = {"valid_curve": [0.1, 0.2, 0.15]}
        (folder / "results.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    assert cli_main([str(three_models), "--out", str(out), "--no-wandb", "--costs", "trainable_params,encoder_tokens_per_second"]) == 0
    header, rule, *rows = (out / "table.md").read_text().splitlines()[:5]
    assert header.endswith("| trainable params | encoder tok/s |") and "peak MB" not in header
    assert next(r for r in rows if r.startswith("| text_tower/lora")).endswith("| 50.0k | 1234 |")
    assert (out / "valid_curves.png").stat().st_size > 0
    assert cli_main([str(three_models), "--out", str(out), "--no-wandb", "--costs", "watts"]) == 2
    assert "unknown --costs watts" in capsys.readouterr().err

"""Every bad input is one clear error: a line naming the problem (and the fix), no traceback, a
non-zero exit, and a ``failed`` record holding the error when the run had started.

One table drives the checks. Cases run the real Hydra app in this process (``recexp.__main__.main``
with ``sys.argv`` set): the same code path as the command line without ~5 s of imports per case.
A few go through ``python -m recexp`` to check the shell-facing end as well.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import ROOT, save_tiny_generator
from wandb_records import history_and_summary

from recexp.errors import ConfigError, check_int, check_number

BASE = ("model=random", "logger=none", "progress=false")
ROWS = [(f"u{u}", f"i{(u * 7 + k) % 30}", str(1 + (u + k) % 5), str(u * 100 + k)) for u in range(40) for k in range(10)]
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEMS = "item_id:token\ttitle:token\n" + "".join(f"i{i}\tMovie number {i}\n" for i in range(30))


def lines(*rows: str) -> str:
    return "".join(f"{row}\n" for row in rows)


TINY = lines(HEADER, *("\t".join(r) for r in ROWS))  # 40 users x 10 of 30 items, rated, timed
VARIANTS = {  # name -> (NAME.inter, NAME.item); None: no such file
    "tiny": (TINY, ITEMS),
    "empty": ("", ITEMS),
    "header_only": (lines(HEADER), ITEMS),
    "no_types": (lines("user_id\titem_id", "u1\ti1"), ITEMS),
    "csv": (lines(HEADER.replace("\t", ","), "u1,i1,5,1"), ITEMS),
    "short_row": (TINY + lines("u1\ti2"), ITEMS),
    "text_rating": (TINY + lines("u1\ti2\tgood\t5"), ITEMS),
    "latin1_item": (TINY, ITEMS.encode() + "i99\tCaf\xe9\n".encode("latin-1")),
    "no_item": (TINY, None),
    "unrated": (lines("user_id:token\titem_id:token", *(f"{u}\t{i}" for u, i, _, _ in ROWS)), ITEMS),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name, files in VARIANTS.items():
        (root / name).mkdir()
        for suffix, content in zip(("inter", "item"), files):
            if content is not None:
                (root / name / f"tiny.{suffix}").write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / "a_file").write_text("not a folder")
    save_tiny_generator(root / "generator")
    return root


def atomic(variant: str, *more: str) -> tuple[str, ...]:
    return ("dataset=atomic", f"dataset.path={{data}}/{variant}", "dataset.name=tiny", *more)


TEXT = ("model=text_tower", *atomic("tiny", "dataset.item_template='{title}'"), "trainer.max_epochs=1")
AUGMENT = (*TEXT, "tail=augment")
GENERATE = (*AUGMENT, "tail.method=generate", "tail.generator={data}/generator")

# (id, overrides, text the one error line must hold, where it fails: "hydra" before a run dir exists, else "run")
CASES = [
    # seed, device, output places, display
    ("seed_text", ["seed=abc"], "seed='abc' is not allowed", "run"),
    ("seed_negative", ["seed=-1"], "seed=-1 is not allowed", "run"),
    ("seed_float", ["seed=1.5"], "seed=1.5 is not allowed", "run"),
    ("seed_too_big", ["seed=4294967296"], "seed=4294967296 is not allowed", "run"),
    ("seed_bool", ["seed=true"], "seed=True is not allowed", "run"),
    ("device_gpu", ["device=gpu"], "device='gpu' is not a device", "run"),
    ("device_tpu", ["device=tpu"], "device='tpu' is not a device", "run"),
    ("device_bad_index", ["device=cuda:abc"], "device='cuda:abc' is not a device", "run"),
    ("device_index_too_high", ["device=cuda:99"], "device=cuda:99 but this machine has", "run"),
    ("device_cuda_without_gpu", ["device=cuda"], "no CUDA device", "run"),
    ("cache_dir_is_a_file", ["cache_dir={data}/a_file/cache"], "is not a writable folder", "run"),
    ("cache_dir_unresolvable", ["cache_dir=${oc.env:RECEXP_TEST_NO_SUCH_VARIABLE}"], "cache_dir cannot be resolved", "run"),
    ("progress_not_bool", ["progress=maybe"], "progress: Value 'maybe' is not a valid bool", "run"),
    # objective
    ("objective_without_stage", ["objective=ndcg@10"], "stage one of valid, test", "run"),
    ("objective_unknown_stage", ["objective=later/ndcg@10"], "stage one of valid, test", "run"),
    ("objective_without_k", ["objective=valid/ndcg"], "ndcg needs a cut-off", "run"),
    ("objective_unknown_metric", ["objective=valid/nosuch@10"], "objective='valid/nosuch@10': 'nosuch@10' is not a known metric", "run"),
    ("objective_k_not_evaluated", ["objective=valid/ndcg@7"], "add ndcg@7 to them", "run"),
    ("objective_metric_not_evaluated", ["objective=valid/recall@10", "evaluator.metrics=[ndcg]"], "add recall@10", "run"),
    ("objective_pointwise_without_pairs", ["objective=valid/auc"], "has no labelled pairs", "run"),
    ("objective_unresolvable", ["objective=${oc.env:RECEXP_TEST_NO_SUCH_VARIABLE}"], "objective cannot be resolved", "run"),
    ("objective_unset", ["objective=???"], "objective must be set", "run"),
    ("objective_logloss_from_a_scorer", ["scenario.label_threshold=4", "objective=valid/logloss"],
     "objective='valid/logloss' cannot be computed here: model RandomRecommender gives plain scores, not probabilities. "
     "Use a model that gives P(like)", "run"),
    ("objective_rmse_from_a_scorer", ["scenario.label_threshold=4", "objective=test/rmse"],
     "objective='test/rmse' cannot be computed here: model RandomRecommender gives plain scores, not predicted ratings. "
     "Use the model that predicts ratings (model=lm_classifier model.module.head=regression)", "run"),
    # a metric the run asks for that no stage can compute: named, with the reason and the fix, before any training
    ("metric_pointwise_without_pairs", ["model=pop", "evaluator.metrics=[ndcg,auc]"],
     "auc in evaluator.metrics cannot be computed here: no stage of this split has labelled pairs. Set "
     "scenario.label_threshold=4 (a valid/test rating >= 4 labels its pair 1, lower 0), or drop auc from evaluator.metrics.",
     "run"),
    ("metric_rating_from_a_scorer", ["scenario.label_threshold=4", "evaluator.metrics=[ndcg,rmse]"],
     "rmse in evaluator.metrics cannot be computed here: model RandomRecommender gives plain scores, not predicted ratings. "
     "Use the model that predicts ratings (model=lm_classifier model.module.head=regression), or drop rmse", "run"),
    ("metric_rating_without_pairs_from_a_scorer", ["evaluator.metrics=[mae]"],
     "mae in evaluator.metrics cannot be computed here: no stage of this split has labelled pairs, and model "
     "RandomRecommender gives plain scores, not predicted ratings. Set scenario.label_threshold=4", "run"),
    ("metric_logloss_from_a_scorer", ["model=pop", "scenario.label_threshold=4", "evaluator.metrics=[auc,logloss]"],
     "logloss in evaluator.metrics cannot be computed here: model Pop gives plain scores, not probabilities. Use a model "
     "that gives P(like) (lm_classifier, pair_classifier", "run"),
    ("metrics_each_named_with_its_reason", ["evaluator.metrics=[ndcg,auc,rmse]"],
     "auc and rmse in evaluator.metrics cannot be computed here: no stage of this split has labelled pairs (auc, rmse), "
     "and model RandomRecommender gives plain scores, not predicted ratings (rmse)", "run"),
    ("metric_ranking_without_targets", ["scenario=tallrec", "evaluator.metrics=[auc,ndcg]"],
     "ndcg in evaluator.metrics cannot be computed here: no stage of this split has ranking targets. Use a scenario with "
     "ranking targets", "run"),
    ("valid_metric_pointwise_without_pairs", [*TEXT, "trainer.valid_metric=auc"],
     "trainer.valid_metric=auc cannot be computed here: stage 'valid' has no labelled pairs. Set scenario.label_threshold=4 "
     "(a valid/test rating >= 4 labels its pair 1, lower 0), or choose another trainer.valid_metric (e.g. ndcg@10).", "run"),
    ("valid_metric_logloss_from_a_scorer", [*TEXT, "scenario.label_threshold=4", "trainer.valid_metric=logloss"],
     "trainer.valid_metric=logloss cannot be computed here: model TextTower gives plain scores, not probabilities", "run"),
    ("valid_metric_ranking_without_targets", ["model=id_fm", "scenario=tallrec", "trainer.valid_metric=ndcg@10"],
     "trainer.valid_metric=ndcg@10 cannot be computed here: stage 'valid' has no ranking targets", "run"),
    # what Hydra refuses before recexp runs
    ("unknown_model", ["model=nosuchmodel"], "Could not find 'model/nosuchmodel'", "hydra"),
    ("unknown_strategy", ["strategy=nosuch"], "Could not find 'strategy/nosuch'", "hydra"),
    ("unknown_scenario", ["scenario=nosuch"], "Could not find 'scenario/nosuch'", "hydra"),
    ("unknown_experiment", ["experiment=nosuch"], "Could not find 'experiment/nosuch'", "hydra"),
    ("unknown_key", ["nosuchkey=1"], "Could not override 'nosuchkey'", "hydra"),
    ("template_unquoted", ["dataset.item_template={title}"], "Quote the value for Hydra inside shell quotes", "hydra"),
    ("override_unclosed_list", ["evaluator.ks=[10,20"], "cannot parse the override evaluator.ks=[10,20", "hydra"),
    # dataset files and fields
    ("atomic_without_path_and_name", ["dataset=atomic"], "dataset.name, dataset.path must be set", "run"),
    ("atomic_without_name", ["dataset=atomic", "dataset.path={data}/tiny"], "dataset.name must be set", "run"),
    ("dataset_folder_missing", ["dataset=atomic", "dataset.path={data}/nosuch", "dataset.name=tiny"], "not found", "run"),
    ("inter_file_missing", [*atomic("tiny", "dataset.name=other")], "other.inter", "run"),
    ("inter_empty", [*atomic("empty")], "the file is empty", "run"),
    ("inter_header_only", [*atomic("header_only")], "split empty", "run"),
    ("inter_header_without_types", [*atomic("no_types")], "is not 'field:type'", "run"),
    ("inter_comma_separated", [*atomic("csv")], "is not 'field:type'", "run"),
    ("inter_short_row", [*atomic("short_row")], "expected 4 tab-separated fields", "run"),
    ("inter_text_in_float_column", [*atomic("text_rating")], "declared float but holds 'good'", "run"),
    ("item_file_not_utf8", [*atomic("latin1_item", "dataset.item_template='{title}'")], "not UTF-8", "run"),
    ("item_template_without_item_file", [*atomic("no_item", "dataset.item_template='{title}'")], "no .item file", "run"),
    ("item_template_unknown_field", ["dataset.item_template='{nosuchfield}'"], "names field 'nosuchfield'", "run"),
    ("user_template_unknown_field", ["dataset.user_template='{nosuchfield}'"], "names field 'nosuchfield'", "run"),
    ("user_field_missing", [*atomic("tiny", "dataset.user_field=uid")], "no 'uid' column", "run"),
    ("item_field_missing", [*atomic("tiny", "dataset.item_field=iid")], "no 'iid' column", "run"),
    ("label_threshold_on_unrated_data", [*atomic("unrated", "dataset.rating_field=null", "scenario.label_threshold=4")],
     "have no rating", "run"),
    ("temporal_without_time", [*atomic("tiny", "dataset.time_field=null", "scenario=temporal")], "needs a timestamp", "run"),
    # scenario
    ("ratios_two_numbers", ["scenario.ratios=[0.5,0.5]"], "scenario.ratios must be three non-negative numbers", "run"),
    ("ratios_sum_not_one", ["scenario.ratios=[0.8,0.1,0.2]"], "scenario.ratios must be three non-negative numbers", "run"),
    ("ratios_negative", ["scenario.ratios=[-0.1,0.6,0.5]"], "scenario.ratios must be three non-negative numbers", "run"),
    ("ratios_text", ["scenario.ratios=abc"], "scenario.ratios must be three non-negative numbers", "run"),
    ("ratios_empty_valid", ["scenario.ratios=[1.0,0.0,0.0]"], "left the valid split empty", "run"),
    ("head_fraction_zero", ["scenario.head_fraction=0"], "scenario.head_fraction=0 is not allowed: it must be a number in (0, 1)", "run"),
    ("head_fraction_above_one", ["scenario.head_fraction=1.5"], "scenario.head_fraction=1.5 is not allowed", "run"),
    ("cold_fraction_zero", ["scenario=cold_item", "scenario.cold_fraction=0"], "scenario.cold_fraction=0 is not allowed: it must be a number in (0, 1)", "run"),
    ("cold_fraction_above_one", ["scenario=cold_item", "scenario.cold_fraction=1.5"], "scenario.cold_fraction=1.5 is not allowed", "run"),
    ("cold_fraction_text", ["scenario=cold_item", "scenario.cold_fraction=abc"], "scenario.cold_fraction='abc' is not allowed", "run"),
    ("cold_valid_share_one", ["scenario=cold_item", "scenario.cold_valid_share=1"], "scenario.cold_valid_share=1 is not allowed", "run"),
    ("cold_items_too_few", [*atomic("tiny", "scenario=cold_item", "scenario.cold_fraction=0.01")], "both need at least one", "run"),
    ("label_threshold_text", ["scenario.label_threshold=abc"], "scenario.label_threshold='abc' is not allowed: it must be a rating", "run"),
    # evaluator
    ("ks_empty", ["evaluator.ks=[]"], "evaluator.ks must be a list of positive integers", "run"),
    ("ks_zero", ["evaluator.ks=[0]"], "evaluator.ks must be a list of positive integers", "run"),
    ("ks_text", ["evaluator.ks=[a]"], "evaluator.ks must be a list of positive integers", "run"),
    ("ks_null", ["evaluator.ks=null"], "evaluator.ks must be a list of positive integers", "run"),
    ("metrics_unknown", ["evaluator.metrics=[nosuch]"], "Unknown evaluator metrics ['nosuch']", "run"),
    ("metrics_empty", ["evaluator.metrics=[]"], "evaluator.metrics is empty", "run"),
    ("eval_batch_size_zero", ["evaluator.batch_size=0"], "evaluator.batch_size=0 is not allowed: it must be an integer >= 1", "run"),
    ("eval_batch_size_text", ["evaluator.batch_size=abc"], "evaluator.batch_size='abc' is not allowed: it must be an integer >= 1", "run"),
    ("tie_seed_text", ["evaluator.tie_seed=abc"], "evaluator.tie_seed='abc' is not allowed: it must be an integer >= 0", "run"),
    # trainer
    ("trainer_on_untrained_model", ["trainer.max_epochs=3"], "has no effect on model=random", "run"),
    ("bpr_batch_size_zero", ["model=bpr", "trainer.batch_size=0"], "trainer.batch_size=0", "run"),
    ("bpr_lr_zero", ["model=bpr", "trainer.lr=0"], "trainer.lr=0", "run"),
    ("bpr_lr_text", ["model=bpr", "trainer.lr=abc"], "trainer.lr='abc' is not allowed", "run"),
    ("bpr_max_epochs_negative", ["model=bpr", "trainer.max_epochs=-1"], "trainer.max_epochs=-1", "run"),
    ("bpr_patience_zero", ["model=bpr", "trainer.patience=0"], "trainer.patience=0", "run"),
    ("bpr_warmup", ["model=bpr", "trainer.warmup_ratio=0.2"], "trainer.warmup_ratio=0.2", "run"),
    ("bpr_fp16", ["model=bpr", "trainer.mixed_precision=fp16"], "cannot be honoured by RecBole BPR", "run"),
    ("grad_accum_zero", ["model=bpr", "trainer.grad_accum=0"], "trainer.grad_accum=0", "run"),
    ("mixed_precision_unknown", ["model=bpr", "trainer.mixed_precision=fp8"], "trainer.mixed_precision='fp8'", "run"),
    ("valid_metric_unknown", ["model=bpr", "trainer.valid_metric=nosuch"], "trainer.valid_metric='nosuch'", "run"),
    ("text_tower_lr_zero", ["model=text_tower", "trainer.lr=0"], "trainer.lr=0", "run"),
    ("trainer_unknown_key", ["model=text_tower", "+trainer.momentum=0.9"], "momentum: not a setting of TrainerConfig", "run"),
    # models and strategies
    ("recbole_without_name", ["model=recbole"], "model.name must be set", "run"),
    ("recbole_unknown_name", ["model=recbole", "model.name=NoSuch"], "Unknown RecBole model 'NoSuch'", "run"),
    ("model_unknown_key", ["+model.foo=1"], "foo: not a setting of RandomRecommender", "run"),
    ("text_model_without_template", ["model=text_tower", *atomic("tiny")], "set dataset.item_template", "run"),
    ("user_text_without_template", [*TEXT, "model.module.user_text=true"], "needs user text", "run"),
    ("text_tower_dim_zero", [*TEXT, "model.module.dim=0"], "model.module.dim must be >= 1", "run"),
    ("text_tower_loss_unknown", [*TEXT, "model.module.loss=nosuch"], "'nosuch' is unknown", "run"),
    ("encoder_missing", [*TEXT, "encoder.name_or_path={data}/no_model"], "Could not load encoder", "run"),
    ("encoder_pooling_unknown", [*TEXT, "encoder.pooling=nosuch"], "encoder.pooling='nosuch' is unknown", "run"),
    ("encoder_max_length_zero", [*TEXT, "encoder.max_length=0"], "encoder.max_length must be >= 2", "run"),
    ("fusion_combine_unknown", [*TEXT, "model=fusion", "model.module.combine=nosuch"], "combine='nosuch' is unknown", "run"),
    ("llm_ranker_not_causal", [*TEXT, "model=llm_ranker", "encoder=minilm"], "model=llm_ranker needs a causal language model", "run"),
    ("lm_head_unknown", [*TEXT, "model=lm_classifier", "model.module.head=nosuch"], "head='nosuch' is unknown", "run"),
    ("lora_unknown_modules", [*TEXT, "strategy=lora", "strategy.config.target_modules=[nosuch]"], "cannot be applied", "run"),
    ("lora_rank_zero", [*TEXT, "strategy=lora", "strategy.config.r=0"], "`r` should be a positive integer", "run"),
    ("prefix_without_task_type", [*TEXT, "strategy=prefix", "strategy.config.task_type=null"], "needs a task type", "run"),
    ("peft_config_unknown", [*TEXT, "strategy=lora", "strategy.config._target_=peft.NoSuchConfig"], "peft.NoSuchConfig", "run"),
    ("bottleneck_size_zero", [*TEXT, "strategy=bottleneck", "strategy.size=0"], "strategy.size=0 is not allowed", "run"),
    ("bottleneck_nonlinearity_unknown", [*TEXT, "strategy=bottleneck", "strategy.nonlinearity=nosuch"],
     "strategy.nonlinearity='nosuch' is unknown; choose one of relu, gelu, silu, tanh", "run"),
    ("bottleneck_per_layer_unknown", [*TEXT, "strategy=bottleneck", "strategy.per_layer=nosuch"],
     "strategy.per_layer='nosuch' is unknown; choose one of both, ffn", "run"),
    ("bottleneck_unknown_targets", [*TEXT, "strategy=bottleneck", "strategy.targets.ffn=nosuch"], "matches no module", "run"),
    # divergence: a finite loss does not make a run ok
    ("text_tower_diverges", [*TEXT, "trainer.lr=1e30"], "Training diverged", "run"),
    ("fusion_diverges", [*TEXT, "model=fusion", "trainer.max_epochs=2", "trainer.lr=1e30"], "Training diverged", "run"),
    ("bpr_diverges", ["model=bpr", *atomic("tiny", "trainer.max_epochs=2", "trainer.lr=1e30")], "diverged", "run"),
    # few-shot and cold-user scenarios: K, the label threshold and the support size against what the data holds
    ("tallrec_shots_too_many", ["scenario=tallrec", "scenario.shots=8001"], "scenario.shots=8001 asks for more training samples than there are: 8000", "run"),
    ("tallrec_too_little_data", ["scenario=tallrec", *atomic("tiny")], "scenario=tallrec found 0 samples", "run"),
    ("cold_user_shots_too_many", ["scenario=cold_user", "scenario.shots=1000", *atomic("tiny")], "scenario.shots=1000 asks for more training samples than there are: 320", "run"),
    ("cold_user_threshold_one_class", ["scenario=cold_user", "scenario.label_threshold=6", *atomic("tiny")], "scenario.label_threshold=6 labels every valid query pair 0: ratings run from 1 to 5", "run"),
    ("cold_user_support_too_large", ["scenario=cold_user", "scenario.support=10", *atomic("tiny")], "scenario.support=10 leaves no query interaction", "run"),
    ("tallrec_like_above_one_class", ["scenario=tallrec", "scenario.like_above=5"], "scenario.like_above=5 labels every", "run"),
    ("user_rate_refuses_training", ["model=user_rate", "scenario=tallrec", "trainer.max_epochs=3"], "trainer.max_epochs=3 has no effect on model=user_rate", "run"),
    ("item_rate_refuses_training", ["model=item_rate", "trainer.lr=0.1"], "trainer.lr=0.1 has no effect on model=item_rate", "run"),
    ("item_rate_prior_negative", ["model=item_rate", "model.prior_weight=-1"], "model.prior_weight=-1 is not allowed: it must be a number >= 0", "run"),
    ("pair_classifier_reader_unknown", ["model=pair_classifier", "model.module.reader=nosuch"], "reader='nosuch'", "run"),
    ("pair_classifier_text_without_encoder", ["model=pair_classifier", "model.module.inputs=text"], "needs model.module.encoder", "run"),
    ("pair_classifier_one_class", ["model=id_fm", "scenario=cold_user", "scenario.label_threshold=null", "model.module.threshold=0"],
     "needs liked and disliked training pairs", "run"),
    # tail=reweight
    ("reweight_negatives_under_softmax", [*TEXT, "tail=reweight", "tail.method=negatives", "model.module.loss=softmax"],
     "tail.method=negatives cannot be honoured by model TextTower with model.module.loss=softmax", "run"),
    # tail=augment
    ("augment_model_without_text", ["model=bpr", "tail=augment"], "tail=augment extends item texts, but model BPR reads no item text", "run"),
    ("augment_method_unknown", [*AUGMENT, "tail.method=paraphrase"], "tail.method='paraphrase' is unknown for tail=augment", "run"),
    ("augment_keywords_zero", [*AUGMENT, "tail.keywords=0"], "tail.keywords=0 is not allowed", "run"),
    ("augment_neighbours_zero", [*AUGMENT, "tail.neighbours=0"], "tail.neighbours=0 is not allowed", "run"),
    ("augment_max_new_tokens_zero", [*GENERATE, "tail.max_new_tokens=0"], "tail.max_new_tokens=0 is not allowed", "run"),
    ("augment_generate_without_generator", [*AUGMENT, "tail.method=generate", "tail.generator=null"], "tail.method=generate needs tail.generator", "run"),
    ("augment_generator_missing", [*AUGMENT, "tail.method=generate", "tail.generator={data}/no_model"],
     "point tail.generator at a local folder holding config.json", "run"),
    ("augment_prompt_unknown_field", [*GENERATE, "tail.prompt='Describe {plot}:'"],
     "tail.prompt names field 'plot', which the item features lack; available fields: item_id, title", "run"),
    # sequential: leave_one_out, UniSRec's files, text_seq
    ("leave_one_out_max_history_zero", [*atomic("tiny"), "scenario=leave_one_out", "scenario.max_history=0"],
     "scenario.max_history=0 is not allowed", "run"),
    ("unisrec_files_missing", ["dataset=unisrec", "dataset.path={data}/tiny", "dataset.name=Scientific"],
     "Set dataset.path to the folder holding UniSRec's Scientific.* files", "run"),
    ("text_seq_without_item_text", ["model=text_seq", *atomic("tiny"), "scenario=leave_one_out", "model.hidden_size=16"],
     "This model reads item text, but the dataset has none", "run"),
    ("text_seq_id_with_lora", ["model=text_seq", "model.item=id", "strategy=lora"], "model.item=id reads no text", "run"),
    ("text_seq_unknown_item", ["model=text_seq", "model.item=title"], "model.item='title' is unknown", "run"),
    ("sasrec_reads_more_than_the_scenario", ["model=sasrec", *atomic("tiny"), "scenario=leave_one_out", "scenario.max_history=5",
                                            "+model.params.MAX_ITEM_LIST_LENGTH=10"], "reads more of each sequence than the scenario allows", "run"),
]


MARKS = {"device_cuda_without_gpu": pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")}
PARAMS = [pytest.param(*case, id=case[0], marks=MARKS.get(case[0], ())) for case in CASES]


@pytest.fixture
def app(monkeypatch, capfd, tmp_path, data, cache_dir):
    """Run ``recexp`` with these overrides in this process; returns (exit code, stderr, run dir)."""
    from recexp.__main__ import main

    monkeypatch.setenv("RECEXP_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("RECEXP_LAUNCHER", "")  # main() marks this process as a launcher; restored afterwards

    def call(*overrides: str) -> tuple[int, str, Path]:
        run_dir = tmp_path / "run"
        argv = [o.replace("{data}", str(data)) for o in (*BASE, *overrides)]
        monkeypatch.setattr(sys, "argv", ["recexp", *argv, f"hydra.run.dir={run_dir}"])
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code
        return code, capfd.readouterr().err, run_dir

    return call


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name, overrides, message, where", PARAMS)
def test_bad_input_is_one_clear_error(app, name, overrides, message, where):
    code, stderr, run_dir = app(*overrides)
    assert code not in (0, None), f"{name}: exit code {code}"
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if message in line]
    assert lines, f"{name}: {message!r} not in stderr:\n{stderr}"
    if where == "run":
        assert lines[0].startswith("error: ") and len([line for line in stderr.splitlines() if line.startswith("error: ")]) == 1
        record = json.loads((run_dir / "results.json").read_text())
        assert record["status"] == "failed" and message in record["error"], record["error"]
    else:
        assert not (run_dir / "results.json").exists()


def test_the_catalogue_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("model, setting", [("bpr", "trainer.batch_size=0"), ("text_tower", "trainer.lr=0")])
def test_impossible_trainer_settings_stop_the_run_before_any_work(app, model, setting, cache_dir):
    before = set(cache_dir.rglob("*"))
    code, _, run_dir = app(f"model={model}", setting)
    record = json.loads((run_dir / "results.json").read_text())
    assert code == 1 and record["status"] == "failed" and record["split"] == {}  # no data was read, nothing trained
    assert not (run_dir / "recbole").exists() and set(cache_dir.rglob("*")) == before


LM_REGRESSION = (*TEXT, "model=lm_classifier", "model.module.head=regression", "model.module.samples_per_epoch=64",
                 "model.module.rerank=4", "encoder.max_length=48")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("overrides, metric", [
    (("model=pop", "evaluator.metrics=[ndcg,auc]"), "auc"),  # the command, with the fix its error names
    ((*LM_REGRESSION, "evaluator.metrics=[ndcg,rmse]"), "rmse"),
])
def test_the_fix_a_refusal_names_computes_the_metric(app, overrides, metric):
    code, stderr, run_dir = app(*overrides, "scenario.label_threshold=4")
    record = json.loads((run_dir / "results.json").read_text())
    assert code == 0 and record["status"] == "ok", stderr
    assert all(metric in record["metrics"][stage] and "ndcg@10" in record["metrics"][stage] for stage in ("valid", "test"))
    assert record["not_computed"] == {}


@pytest.mark.usefixtures("one_thread")
def test_a_metric_some_segments_cannot_compute_is_recorded_and_compared_as_not_computed(app, tmp_path):
    """scenario.head_fraction=0.99 puts every trained item in the head: the tail holds no positive and no labelled
    pair, so the run goes on and records tail/ndcg@10 and tail/auc as not computed, and compare shows them n/c."""
    from recexp.compare import Options, compare

    runs = tmp_path / "runs"
    runs.mkdir()
    for name, fraction in (("all_head", 0.99), ("usual", 0.2)):
        code, stderr, run_dir = app(*atomic("tiny", "scenario.label_threshold=4", f"scenario.head_fraction={fraction}",
                                            "evaluator.metrics=[ndcg,auc]", "evaluator.ks=[10]"))
        assert code == 0, stderr
        run_dir.rename(runs / name)
    record = json.loads((runs / "all_head" / "results.json").read_text())
    no_target, no_pair = "no ranking target falls in this segment", "no labelled pair falls in this segment"
    assert record["status"] == "ok" and "tail" not in record["segments"] and "auc" in record["segments"]["head"]
    assert record["not_computed"] == {stage: {"tail": {"ndcg@10": no_target, "auc": no_pair}, "tail_full": {"ndcg@10": no_target}}
                                      for stage in ("valid", "test")}
    assert json.loads((runs / "usual" / "results.json").read_text())["not_computed"] == {}

    out = tmp_path / "out"
    result = compare([runs], out, Options(wandb=False, metrics=["ndcg@10", "auc"], segments=["all", "tail"]))
    row = next(r.label for r in result.rows if "0.99" in r.label)
    markdown = (out / "table.md").read_text()
    line = next(text for text in markdown.splitlines() if text.startswith(f"| {row} "))
    assert line.count(" n/c ") == 2
    assert f"n/c: not computed, as the runs record it; {row}: tail/ndcg@10 ({no_target}); {row}: tail/auc ({no_pair})." in markdown
    table = pd.read_csv(out / "table.csv").set_index("row")
    assert table.loc[row, "tail/ndcg@10"] == "n/c" and table.loc[row, "tail/auc"] == "n/c"
    assert table.loc[row, "not computed"] == f"tail/ndcg@10: {no_target}; tail/auc: {no_pair}"
    assert float(table.drop(index=row)["tail/ndcg@10"].iloc[0]) >= 0
    latex = (out / "table.tex").read_text()
    assert latex.count(" & n/c") == 2 and "not computed, as the runs record it" in latex


def test_a_component_that_calls_sys_exit_fails_the_run_with_one_line(app, monkeypatch):
    from recexp.models.random_scores import RandomRecommender

    monkeypatch.setattr(RandomRecommender, "fit", lambda self, split, ctx: sys.exit(0))  # even a "success" code
    code, stderr, run_dir = app()
    record = json.loads((run_dir / "results.json").read_text())
    assert code == 1 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error: ")] == [
        "error: a component called sys.exit(0) before the run ended (traceback.txt in the run dir)"]
    assert record["status"] == "failed" and record["error"] == "SystemExit: 0" and record["finished_at"]
    assert "sys.exit(0)" in (run_dir / "traceback.txt").read_text()


def test_under_hydra_full_error_a_components_sys_exit_still_fails_the_process(app, monkeypatch):
    """HYDRA_FULL_ERROR=1 shows the traceback, so the process must end on an error, not the component's exit code."""
    from recexp.models.random_scores import RandomRecommender

    monkeypatch.setattr(RandomRecommender, "fit", lambda self, split, ctx: sys.exit(0))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(RuntimeError, match=r"a component called sys.exit\(0\)") as raised:
        app()
    assert isinstance(raised.value.__cause__, SystemExit)


def test_a_preempted_job_exits_as_its_signal_handler_says_and_stays_running(app, monkeypatch, tmp_path):
    """submitit's USR1 handler requeues a pre-empted Slurm job and calls sys.exit(-1): that exit is the job's end,
    not a failed run, so it passes through and the record stays ``running`` for the requeued job to rerun."""
    import os
    import signal

    from recexp.models.random_scores import RandomRecommender

    def requeue_and_exit(signum, frame):
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR1, requeue_and_exit)
    monkeypatch.setattr(RandomRecommender, "fit", lambda self, split, ctx: os.kill(os.getpid(), signal.SIGUSR1))
    try:
        code, stderr, run_dir = app()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    record = json.loads((run_dir / "results.json").read_text())
    assert code == -1 and "error: " not in stderr and record["status"] == "running"
    assert not (run_dir / "traceback.txt").exists()


def test_a_run_folder_held_by_a_live_process_is_left_alone(app, tmp_path):
    from recexp.locks import LOCK, _lock

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text('{"status": "running"}')
    holder = _lock(tmp_path / "run" / LOCK)
    try:
        code, stderr, run_dir = app()
    finally:
        holder.close()
    assert code == 1 and "cannot start: another process" in stderr and "Traceback" not in stderr
    assert (run_dir / "results.json").read_text() == '{"status": "running"}'


def test_a_failed_wandb_run_records_its_error(app):
    code, _, run_dir = app("logger=wandb", "scenario.ratios=[0.5,0.5]")
    assert code == 1
    _, summary, _ = history_and_summary(run_dir)
    assert json.loads(summary["status"]) == "failed" and "scenario.ratios must be three" in json.loads(summary["error"])


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset.item_template={title}"], "'dataset.item_template=\"{title}\"'"),  # as bash passes "{title}"
        (["seed=abc"], "seed='abc' is not allowed"),
        (["model=nosuchmodel"], "Could not find 'model/nosuchmodel'"),
    ],
)
def test_bad_input_through_the_command_line(tmp_path, overrides, message):
    env = {**os.environ, "RECEXP_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "recexp", *BASE, f"hydra.run.dir={tmp_path / 'run'}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("check, message", [
    (lambda: check_int("k", True, 1), "k=True is not allowed: it must be an integer >= 1."),
    (lambda: check_int("k", 2.0, 1), "k=2.0 is not allowed: it must be an integer >= 1."),
    (lambda: check_int("seed", 2**32, 0, below=2**32), "seed=4294967296 is not allowed: it must be an integer in [0, 4294967296)."),
    (lambda: check_number("x", False), "x=False is not allowed: it must be a finite number."),
    (lambda: check_number("x", float("inf"), low=0), "x=inf is not allowed: it must be a finite number >= 0."),
    (lambda: check_number("x", 0, above=0), "x=0 is not allowed: it must be a finite number > 0."),
    (lambda: check_number("x", 1, low=0, below=1), "x=1 is not allowed: it must be a number in [0, 1)."),
    (lambda: check_number("x", "a", rule="a rating"), "x='a' is not allowed: it must be a rating."),
])
def test_typed_setting_checks_name_key_value_and_rule(check, message):
    with pytest.raises(ConfigError) as error:
        check()
    assert str(error.value) == message

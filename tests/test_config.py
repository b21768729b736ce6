"""Every config composes, and every ``_target_`` accepts the keys its config gives it (nothing is built)."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir
from hydra._internal.utils import _locate
from omegaconf import OmegaConf

GROUPS = ["dataset", "scenario", "model", "task", "encoder", "strategy", "tail", "trainer", "evaluator", "logger"]
TEXT_MODELS = {  # model -> where its resolved config holds the encoder
    "text_tower": "module", "fusion": "module", "lm_classifier": "module", "text_head": "module", "fusion_head": "module",
    "llm_ranker": "module",
    "text_zero_shot": None, "text_seq": None,
}
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ARMS = sorted(p.stem for p in (CONF / "arm").glob("*.yaml"))
# Arguments the spine passes at build time rather than through config.
RUNTIME_KWARGS = {"model": {"trainer"}, "logger": {"run_config", "group"}}


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def check_binds(node, where: str) -> None:
    """Recursively check that each ``_target_`` takes exactly the keys given (plus runtime kwargs)."""
    if isinstance(node, dict):
        if "_target_" in node:
            target = _locate(node["_target_"])
            kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
            signature = inspect.signature(target)
            try:
                signature.bind_partial(**kwargs)
            except TypeError as err:
                pytest.fail(f"{where}: {node['_target_']} does not accept {sorted(kwargs)}: {err}")
        for key, value in node.items():
            check_binds(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_binds(value, f"{where}[{i}]")


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS)
def test_option_composes_and_binds(group, option):
    cfg = compose_with(f"{group}={option}")
    node = OmegaConf.to_container(cfg[group], resolve=False)
    check_binds(node, f"{group}={option}")
    if group in RUNTIME_KWARGS and "_target_" in node:
        params = inspect.signature(_locate(node["_target_"])).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert takes_any or RUNTIME_KWARGS[group] <= set(params), f"{group}={option} cannot take {RUNTIME_KWARGS[group]}"


def test_text_models_are_the_models_with_an_encoder():
    with_encoder = set()
    for path in (CONF / "model").glob("*.yaml"):
        node = OmegaConf.to_container(compose_with(f"model={path.stem}").model, resolve=True)
        if (node.get("module") or {}).get("encoder") or node.get("encoder"):
            with_encoder.add(path.stem)
    assert with_encoder == set(TEXT_MODELS)


@pytest.mark.parametrize("model, holder", TEXT_MODELS.items())
def test_every_text_model_reads_the_encoder_group(model, holder):
    cfg = compose_with(f"model={model}", "encoder.max_length=32", "encoder.pooling=cls", "encoder.dtype=auto", "device=cpu")
    node = cfg.model[holder] if holder else cfg.model
    assert node.encoder == cfg.encoder and node.encoder.max_length == 32 and node.encoder.dtype == "auto"
    assert node.encoder.run_device == "cpu"  # what dtype=auto reads: the run's device


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    cfg = compose_with(f"experiment={experiment}")
    check_binds(OmegaConf.to_container(cfg, resolve=False), f"experiment={experiment}")


@pytest.mark.parametrize("arm", ARMS)
def test_arm_composes_inside_each_paper_preset(arm):
    for preset in ("paper_cpu", "paper_full"):
        cfg = compose_with(f"experiment={preset}", f"+arm={arm}")
        check_binds(OmegaConf.to_container(cfg, resolve=False), f"+arm={arm}")
        assert cfg.trainer.max_epochs is None or cfg.trainer.max_epochs >= 1


PRESET_ARMS = [("continual_ml100k", "continual_arm", p.stem) for p in sorted((CONF / "continual_arm").glob("*.yaml"))] + \
              [("longtail_ml100k", "longtail_arm", p.stem) for p in sorted((CONF / "longtail_arm").glob("*.yaml"))]
TAIL_PARTS = {"rerank": "recexp.tail.Rerank", "reweight": "recexp.tail.Reweight", "augment": "recexp.augment.Augment",
              "generate": "recexp.augment.Augment"}  # an arm name part -> its tail strategy


def swept_arms(preset: str, group: str) -> dict[str, list[str]]:
    """experiment file -> the arms its sweep runs, for ``preset`` and its companions (longtail_ml100k_tradeoff)."""
    return {path.stem: OmegaConf.load(path).hydra.sweeper.params[f"+{group}"].split(",")
            for path in sorted((CONF / "experiment").glob(f"{preset}*.yaml"))}


@pytest.mark.parametrize("preset, group, arm", PRESET_ARMS)
def test_every_arm_of_the_continual_and_longtail_presets_composes(preset, group, arm):
    cfg = compose_with(f"experiment={preset}", f"+{group}={arm}")
    check_binds(OmegaConf.to_container(cfg, resolve=False), f"+{group}={arm}")
    swept = swept_arms(preset, group)
    assert sum(arm in arms for arms in swept.values()) == 1  # every arm file is swept by exactly one preset
    if group == "continual_arm":
        assert cfg.task["update"] in arm and cfg.scenario._target_.endswith("TimeBlocksScenario")
        return
    tails = [TAIL_PARTS[part] for part in arm.split("_") if part in TAIL_PARTS]
    assert (cfg.tail._target_ if cfg.get("tail") is not None else None) == (tails[0] if tails else None)
    strength = re.search(r"_(lam|alpha)(\d+(?:p\d+)?)$", arm)  # trade-off points: bpr_rerank_lam0p1 is lam 0.1
    if strength:
        assert cfg.tail[strength[1]] == float(strength[2].replace("p", "."))
        assert strength[0] in arm and arm.replace(strength[0], "") in swept[preset]  # a point of a main arm's line


def test_experiment_longtail_tradeoff_shares_its_presets_scenario():
    main, points = (compose_with(f"experiment={p}", "+longtail_arm=bpr") for p in ("longtail_ml100k", "longtail_ml100k_tradeoff"))
    assert OmegaConf.to_container(main.scenario) == OmegaConf.to_container(points.scenario)
    assert set(swept_arms("longtail_ml100k", "longtail_arm")) == {"longtail_ml100k", "longtail_ml100k_tradeoff"}


def test_every_yaml_starts_with_a_command_comment():
    for path in CONF.rglob("*.yaml"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        comments = [line for line in lines[:2] if line.startswith("#")]
        assert any("recexp" in line for line in comments), f"{path.relative_to(CONF)} lacks a command comment"


def test_conf_groups_mirror_packages():
    root = Path(__file__).resolve().parent.parent / "recexp"
    for group in ("scenario", "model", "task"):
        assert (root / f"{group}s").is_dir()


def test_cold_user_preset_sweeps_fewshot_arms_that_score_without_a_cross_encoder():
    arms = OmegaConf.load(CONF / "experiment" / "cold_user_ml100k.yaml").hydra.sweeper.params["+fewshot_arm"].split(",")
    assert set(arms) <= {p.stem for p in (CONF / "fewshot_arm").glob("*.yaml")}
    for arm in arms:
        cfg = compose_with("experiment=cold_user_ml100k", f"+fewshot_arm={arm}")
        check_binds(OmegaConf.to_container(cfg, resolve=False), f"+fewshot_arm={arm}")
        assert cfg.scenario._target_.endswith("ColdUserScenario") and cfg.trainer.valid_metric == "gauc"
        assert "lm_classifier" not in arm


def test_each_make_targets_preset_has_its_own_wandb_group():
    """make continual, longtail, cold-user and fewshot all sweep into a folder named runs: the folder-name default
    would put them in one W&B group."""
    presets = {"continual_ml100k": "+continual_arm=bpr_fine_tune", "longtail_ml100k": "+longtail_arm=bpr",
               "longtail_ml100k_tradeoff": "+longtail_arm=bpr_reweight_alpha0", "cold_user_ml100k": "+fewshot_arm=user_rate",
               "fewshot_tallrec": "+fewshot_arm=user_rate", "quickstart": "+arm=pop"}
    groups = {preset: compose_with(f"experiment={preset}", arm).logger.group for preset, arm in presets.items()}
    assert groups["longtail_ml100k_tradeoff"] == groups["longtail_ml100k"] == "longtail_ml100k"  # make longtail: one group
    del groups["longtail_ml100k_tradeoff"]
    assert None not in groups.values() and len(set(groups.values())) == len(groups)

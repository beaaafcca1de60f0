"""Every shipped YAML composes and validates; bad keys and values fail with a message naming them."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

from ct_train.compose import register_configs, to_typed
from ct_train.config import Config
from ct_train.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "hydra_conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _compose(overrides):
    register_configs()
    with initialize_config_module(config_module="ct_train.hydra_conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_shipped_yaml_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("model", "hf"):
        overrides.append("model.path=/some/model")
    if (group == "data" and option == "jsonl") or group == "experiment":
        overrides.append("data.path=x.jsonl")
    if (group, option) == ("curriculum", "beyond_iid"):  # without a measured matrix: every sample, one stage
        overrides += ["curriculum.mix=all", "curriculum.order=none"]
    cfg = to_typed(_compose(overrides))
    assert isinstance(cfg, Config)
    if group == "experiment":
        return  # its values: test_phased_ift_experiment_is_the_published_recipe
    section = getattr(cfg, group)
    assert getattr(section, "name", option) == option


def test_phased_ift_experiment_is_the_published_recipe():
    with pytest.raises(ConfigError, match="data=jsonl needs data.path"):
        to_typed(_compose(["experiment=phased_ift_llama2_7b"]))
    cfg = to_typed(_compose(["experiment=phased_ift_llama2_7b", "data.path=a.jsonl"]))
    tr = cfg.trainer
    assert (tr.lr, tr.lr_schedule, tr.warmup_ratio, tr.weight_decay, list(tr.adam_betas), tr.grad_clip) == (
        5e-6,
        "cosine",
        0.1,
        0.1,
        [0.9, 0.95],
        1.0,
    )
    assert (cfg.model.name, cfg.model.dtype, cfg.deepspeed.zero_stage, tr.max_steps) == ("llama2_7b", "bf16", 3, -1)
    assert (cfg.curriculum.name, list(cfg.curriculum.thresholds), cfg.curriculum.lr_schedule) == (
        "phased",
        [1.5, 3.5],
        "rewarm",
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trainer.max_steps=-1"], "trainer.max_steps=-1 needs a curriculum that sets the run's length"),
        (["curriculum=phased", "curriculum.thresholds=[3.5,1.5]"], "curriculum.thresholds=.* must increase"),
        (["curriculum=phased", "curriculum.thresholds=[1.5]"], "must give phases - 1 = 2 cut points"),
        (["curriculum=phased", "curriculum.order=hardest"], "curriculum.order='hardest' is not valid"),
        (["curriculum=tapir", "curriculum.rounds.1.alpha=1.5"], r"curriculum.rounds.1.alpha=1.5 must be in \[0, 1\]"),
        (["curriculum=tapir", "curriculum.rounds.0.steps=5"], "set steps for every round or for none"),
        (["mode=score", "scoring.output=x.csv"], "must end in .jsonl or .parquet"),
        (["data.judge_fields=[a]"], "data.judge_fields must name two different fields"),
        (["trainer.epochs=0"], r"trainer.epochs=0.0 must be > 0"),
        (["trainer.seed=-1"], r"trainer.seed=-1 must be in 0 \.\. 4294967295"),  # (a traceback after the model, before)
        (["model.compile=true", "deepspeed.gather_per_block=false"], "model.compile=true under ZeRO-3 needs"),
    ],
)
def test_staged_curricula_and_scoring_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        to_typed(_compose(overrides))


def test_tapir_rounds_compose_from_the_command_line():
    cfg = to_typed(
        _compose(
            [
                "curriculum=tapir",
                "curriculum.rounds=[{steps: 4, alpha: 0.2}, {steps: 6, data: b.jsonl}]",
                "trainer.max_steps=-1",
            ]
        )
    )
    assert [(r.steps, r.alpha, r.data) for r in cfg.curriculum.rounds] == [(4, 0.2, None), (6, None, "b.jsonl")]
    assert cfg.curriculum.alphas() == [0.2, 0.7]  # round 2 takes alpha_end (the ramp's last value)
    assert cfg.curriculum.needs().data_parts == {"round2": ["b.jsonl"]}


def test_defaults_are_the_tiny_cpu_run():
    cfg = to_typed(_compose([]))
    assert (cfg.model.name, cfg.data.name, cfg.curriculum.name, cfg.deepspeed.zero_stage) == (
        "tiny",
        "skills",
        "iid",
        3,
    )
    # One directory per run (issue 18): the default ends in a hash of the training-relevant config,
    # the same for the same command, another for another lr or data, the same for a longer run.
    assert re.fullmatch(r"outputs/tiny-skills-iid-[0-9a-f]{8}", cfg.trainer.output_dir), cfg.trainer.output_dir
    assert to_typed(_compose([])).trainer.output_dir == cfg.trainer.output_dir
    assert to_typed(_compose(["trainer.lr=0.01"])).trainer.output_dir != cfg.trainer.output_dir
    assert to_typed(_compose(["data.skills.seed=7"])).trainer.output_dir != cfg.trainer.output_dir
    assert to_typed(_compose(["trainer.max_steps=7"])).trainer.output_dir == cfg.trainer.output_dir


def test_keys_newer_than_a_run_keep_its_default_output_dir():
    """The same command finds the directory an earlier version made: these are the hashes before
    data.packing, data.group_by_length and model.lora existed (commit d1c71fd); a key added since
    is left out of the hash while at its default (run.NEWER_KEYS). Set, it makes another run.
    data.packing (a layout, operational since its default turned on) is never in the hash."""
    assert to_typed(_compose([])).trainer.output_dir == "outputs/tiny-skills-iid-d647c721"
    jsonl = ["model=hf", "model.path=/m", "data=jsonl", "data.path=/d.jsonl"]
    assert to_typed(_compose(jsonl)).trainer.output_dir == "outputs/hf-jsonl-iid-115a11a4"
    for key in ("data.group_by_length=true", "model.lora.enabled=true", "model.lora.r=8"):
        assert to_typed(_compose([key])).trainer.output_dir != "outputs/tiny-skills-iid-d647c721", key
    for key in ("data.packing=true", "data.packing=false"):
        assert to_typed(_compose([key])).trainer.output_dir == "outputs/tiny-skills-iid-d647c721", key


def test_unknown_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="max_stepz"):
        _compose(["trainer.max_stepz=3"])


def test_wrong_type_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="max_steps"):
        _compose(["trainer.max_steps=many"])


@pytest.mark.parametrize(
    "override,needle",
    [
        (
            "trainer.lr_schedule=wavy",
            "trainer.lr_schedule='wavy' is not valid; expected one of: cosine, linear, constant",
        ),
        ("data.truncation=chop", "data.truncation='chop'"),
        ("logger.mode=loud", "logger.mode='loud'"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage=4"),
        ("curriculum.name=magic", "curriculum.name='magic'"),
        (
            "trainer.global_batch_size=30 trainer.micro_batch_size=8",
            "trainer.global_batch_size=30 is not divisible by trainer.micro_batch_size=8",
        ),
        ("model.attn_implementation=fast", "model.attn_implementation='fast'"),
        (
            "curriculum=it2acl curriculum.signal=psg",
            "curriculum.signal='psg' is not valid; expected one of: lp, pg, spg, loss",
        ),
        ("curriculum=it2acl curriculum.phase2=sometimes", "curriculum.phase2='sometimes'"),
        ("curriculum=it2acl curriculum.reward_quantiles=[80,20]", "curriculum.reward_quantiles=[80.0, 20.0]"),
        ("curriculum=odm curriculum.alpha=1.5", "curriculum.alpha=1.5 must be in [0, 1)"),
        ("curriculum=mixture curriculum.weights={add:-2}", "curriculum.weights.add=-2 must be a number >= 0"),
        ("curriculum.name=odm", "choose the strategy with curriculum=odm"),
    ],
)
def test_bad_value_names_key_and_choices(override, needle):
    with pytest.raises(ConfigError) as err:
        to_typed(_compose(override.split()))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_model_path_for_hf_model():
    with pytest.raises(ConfigError, match=r"set model.path=DIR"):
        to_typed(_compose(["model=hf"]))


def test_jsonl_without_path_is_rejected():
    with pytest.raises(ConfigError, match="data=jsonl needs data.path"):
        to_typed(_compose(["data=jsonl"]))


def test_grad_accum_steps_from_world_size():
    cfg = to_typed(_compose(["trainer.global_batch_size=32", "trainer.micro_batch_size=4"]))
    assert cfg.trainer.grad_accum_steps(1) == 8
    assert cfg.trainer.grad_accum_steps(2) == 4
    with pytest.raises(ConfigError, match="ranks x trainer.micro_batch_size = 3 x 4 = 12"):
        cfg.trainer.grad_accum_steps(3)


def test_a_key_of_another_strategy_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="eta"):
        _compose(["curriculum=odm", "curriculum.eta=0.1"])


def test_strategy_keys_are_typed_and_reach_the_dataclass():
    from ct_train.curriculum.it2acl import IT2ACLConfig

    cfg = to_typed(_compose(["curriculum=it2acl", "curriculum.eta=0.25", "curriculum.phase2=pacing"]))
    assert isinstance(cfg.curriculum, IT2ACLConfig) and (cfg.curriculum.eta, cfg.curriculum.phase2) == (0.25, "pacing")
    with pytest.raises(ConfigCompositionException, match="eta"):
        _compose(["curriculum=it2acl", "curriculum.eta=fast"])


def test_a_saved_run_config_loads_back_with_its_curriculum_schema(tmp_path):
    from omegaconf import OmegaConf

    from ct_train.compose import load_config

    composed = _compose(["curriculum=it2acl", "curriculum.signal=loss"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(composed, resolve=True))
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.curriculum.name == "it2acl" and cfg.curriculum.signal == "loss"


def test_lr_default_follows_where_the_weights_come_from():
    """Pretrained weights (model.path) take 2e-5 (TRL's SFT default; 3e-3 diverged SmolLM2-135M), a
    model built at random init keeps 3e-3; the user's trainer.lr and an experiment's own win."""
    assert to_typed(_compose([])).trainer.lr == 3e-3
    assert to_typed(_compose(["model=hf", "model.path=/m"])).trainer.lr == 2e-5
    assert to_typed(_compose(["model=llama3_8b", "model.path=/m"])).trainer.lr == 2e-5
    assert to_typed(_compose(["model=llama3_8b"])).trainer.lr == 3e-3  # (random init: throughput runs)
    assert to_typed(_compose(["model=hf", "model.path=/m", "trainer.lr=1e-4"])).trainer.lr == 1e-4
    # LoRA on pretrained weights: 10x (TRL's PEFT guide); on a random-init base the scratch rate
    assert to_typed(_compose(["model=hf", "model.path=/m", "model.lora.enabled=true"])).trainer.lr == 2e-4
    assert to_typed(_compose(["model.lora.enabled=true"])).trainer.lr == 3e-3
    lora_lr = ["model=hf", "model.path=/m", "model.lora.enabled=true", "trainer.lr=5e-5"]
    assert to_typed(_compose(lora_lr)).trainer.lr == 5e-5
    assert to_typed(_compose(["experiment=phased_ift_llama2_7b", "data.path=a", "model.path=/m"])).trainer.lr == 5e-6


def test_the_readme_multi_gpu_example_composes_for_8_ranks():
    """README's `deepspeed --num_gpus 8 ... model=llama3_8b` line: its batch split must divide on 8 ranks."""
    readme = (CONF.parent / "README.md").read_text()
    line = re.search(r"deepspeed --num_gpus 8 --no_local_rank --module ct_train (.+?)\n(?!\s)", readme, re.S)
    args = [a for a in line.group(1).replace("\\\n", " ").split() if "=" in a]
    cfg = to_typed(_compose(args))
    assert cfg.trainer.grad_accum_steps(8) >= 1 and cfg.trainer.lr == 2e-5
    assert cfg.trainer.keep_last_checkpoints > 0  # 8B checkpoints are ~100 GB each with optimizer state

"""From Hydra's composed config to a validated `Config`: schema registration, `to_typed`,
`load_config`, and every check of a name against a registry (curricula, data formats, templates,
scorers, bench strategies).

config.py holds the dataclasses and their field checks and imports nothing of ours but `errors`;
the registries live with the code they name (a strategy registers itself where it is defined), so
the checks that need them live here, above both (DESIGN.md: the compose floor).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ct_train import io
from ct_train.config import Config, check_choice
from ct_train.curriculum import CURRICULA
from ct_train.data.formats import FORMATS
from ct_train.data.templates import TEMPLATES
from ct_train.errors import ConfigError
from ct_train.scorers import SCORERS


def run_hash(*, _root_: Any) -> str:
    """`${ct_run_hash:}`: 8 hex digits of the composed run's training-relevant config (everything but
    run.OPERATIONAL_KEYS), for the default trainer.output_dir: two different experiments never share
    a directory, and the same command finds its own again. (The data's own fingerprint is checked
    when a run resumes: the same files with other content are refused there.)"""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from ct_train.run import NEWER_KEYS, OPERATIONAL_KEYS, _covered, schema_defaults

    flat = {}

    def walk(node: Any, prefix: str) -> None:
        for key in node.keys():
            name = f"{prefix}{key}"
            if _covered(name, OPERATIONAL_KEYS):
                continue  # (trainer.output_dir among them: resolving it here would recurse)
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                walk(child, name + ".")
            else:
                value = OmegaConf.select(_root_, name)
                flat[name] = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value

    walk(_root_, "")
    defaults = schema_defaults()
    for key in [k for k in flat if _covered(k, NEWER_KEYS)]:  # at their default: what older code did
        if key in defaults and flat[key] == defaults[key]:
            del flat[key]
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:8]


# trainer.lr's default depends on where the weights come from. Pretrained weights (model.path set)
# take TRL's SFT default: the from-scratch tiny model's 3e-3 made SmolLM2-135M diverge within six
# steps (loss 1.95 -> 4.68) and its answers degrade. Random-init models (no path) keep 3e-3, which
# the skill-suite benchmark was tuned with.
# LoRA on pretrained weights takes 10x that (TRL's PEFT guide: 2e-4): at 2e-5 SmolLM2's adapters
# barely moved the held-out loss in 12 steps (docs/benchmarks.md).
PRETRAINED_LR = 2.0e-5
LORA_LR = 2.0e-4
SCRATCH_LR = 3.0e-3


def default_lr(model_path: Any, lora: Any = False) -> float:
    """`${ct_default_lr:${model.path},${model.lora.enabled}}`, trainer.lr's default (a user's
    trainer.lr=... replaces it)."""
    if not model_path:
        return SCRATCH_LR
    return LORA_LR if lora in (True, "true", "True") else PRETRAINED_LR


def register_configs() -> None:
    """Register the schema so `hydra_conf/config.yaml` can list `ct_train_schema` first, and the
    resolvers: `ct_run_hash` (the default output dir) and `ct_default_lr` (trainer.lr's default)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("ct_run_hash"):
        OmegaConf.register_new_resolver("ct_run_hash", run_hash)
    if not OmegaConf.has_resolver("ct_default_lr"):
        OmegaConf.register_new_resolver("ct_default_lr", default_lr)

    store = ConfigStore.instance()
    store.store(name="ct_train_schema", node=Config)
    # One schema per strategy, named `<name>_schema` in the curriculum group; its YAML lists it first.
    for name, spec in CURRICULA.items():
        store.store(group="curriculum", name=f"{name}_schema", node=spec.config_cls)


def check_names(cfg: Config) -> None:
    """Every config value that names a registered thing; ConfigError naming the key otherwise."""
    check_choice("data.format", cfg.data.format, ("auto",) + tuple(FORMATS))
    check_choice("data.template", cfg.data.template, ("auto", "chat") + tuple(TEMPLATES))
    check_choice("curriculum.name", cfg.curriculum.name, tuple(CURRICULA))
    if type(cfg.curriculum) is not CURRICULA[cfg.curriculum.name].config_cls:
        raise ConfigError(
            f"curriculum.name={cfg.curriculum.name} does not match the selected curriculum group; "
            f"choose the strategy with curriculum={cfg.curriculum.name}"
        )
    check_choice("scoring.name", cfg.scoring.name, tuple(SCORERS))
    # Every bench strategy is a registered curriculum (bench.strategies adds overrides and set-up
    # steps to some of them), IID first: the reference the report measures against.
    strategies = ("iid",) + tuple(n for n in CURRICULA if n != "iid")
    for name in cfg.bench.strategies:
        check_choice("bench.strategies", name, strategies)
    for name in cfg.bench.overrides or {}:
        check_choice("bench.overrides", name, strategies)


def to_typed(cfg: Any) -> Config:
    """Turn a composed DictConfig into a validated `Config` (ConfigError on a missing or bad value)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required (set {missing[0]}=...)")
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    check_names(typed)
    typed.validate()
    # A hub id names its snapshot in the local cache (config.yaml and the run's identity keep the id).
    if typed.model.path:
        typed.model.path = io.local_model_dir(typed.model.path, "model.path")
    if typed.model.tokenizer and typed.model.tokenizer != "byte":
        typed.model.tokenizer = io.local_model_dir(typed.model.tokenizer, "model.tokenizer")
    return typed


def load_config(path: str) -> Config:
    """A run's saved `config.yaml` (resolved) as a validated `Config`, with its curriculum's schema."""
    from omegaconf import OmegaConf

    saved = OmegaConf.load(path)
    name = OmegaConf.select(saved, "curriculum.name", default="iid")
    if name not in CURRICULA:
        raise ConfigError(f"{path}: curriculum.name={name!r} is not a known curriculum ({', '.join(CURRICULA)})")
    base = OmegaConf.structured(Config)
    base.curriculum = OmegaConf.structured(CURRICULA[name].config_cls)
    return to_typed(OmegaConf.merge(base, saved))

"""The ds_config ct_train hands DeepSpeed: the fast paths it picks, and that the user's overrides win."""

import pytest
import torch

from ct_train.config import Config
from ct_train.engine import build_ds_config
from ct_train.modeling import block_class_names


def _ds(world_size=1, **deepspeed):
    cfg = Config()
    for k, v in deepspeed.items():
        setattr(cfg.deepspeed, k, v)
    return build_ds_config(cfg.deepspeed, cfg.trainer, torch.float32, world_size)


def test_one_rank_skips_the_reduce_scatter_and_more_ranks_keep_it():
    assert _ds(1)["zero_optimization"]["reduce_scatter"] is False
    assert "reduce_scatter" not in _ds(2)["zero_optimization"]  # DeepSpeed's default: reduce-scatter


def test_one_rank_zero2_reduces_in_small_buckets():
    assert _ds(1, zero_stage=2)["zero_optimization"]["reduce_bucket_size"] == 5_000_000
    assert "reduce_bucket_size" not in _ds(2, zero_stage=2)["zero_optimization"]  # 5e8: fewer collectives
    assert "reduce_bucket_size" not in _ds(1)["zero_optimization"]  # ZeRO-3


def test_one_rank_zero3_uses_torchs_linear_unless_parameters_are_offloaded():
    assert _ds(1)["zero_optimization"]["memory_efficient_linear"] is False
    # more ranks, or parameters in CPU memory: DeepSpeed's default (the gathered weight not kept)
    assert "memory_efficient_linear" not in _ds(2)["zero_optimization"]
    assert "memory_efficient_linear" not in _ds(1, offload_param=True)["zero_optimization"]
    assert "memory_efficient_linear" not in _ds(1, zero_stage=2)["zero_optimization"]


def test_adamw_is_torch_fused_unless_the_optimizer_is_offloaded():
    params = _ds()["optimizer"]["params"]
    assert params["torch_adam"] is True and params["fused"] is True
    offloaded = _ds(offload_optimizer=True)["optimizer"]["params"]
    assert offloaded["torch_adam"] is False and "fused" not in offloaded  # DeepSpeedCPUAdam


def test_deepspeed_overrides_win_over_the_fast_paths():
    overrides = {"optimizer": {"params": {"fused": False}}, "zero_optimization": {"reduce_scatter": True}}
    ds = _ds(overrides=overrides)
    assert ds["optimizer"]["params"]["fused"] is False and ds["zero_optimization"]["reduce_scatter"] is True


@pytest.mark.parametrize("lora", [False, True])
def test_block_classes_are_the_models_repeated_layers(lora):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from ct_train.config import LoraConfig
    from ct_train.modeling import apply_lora

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    llama = LlamaForCausalLM(LlamaConfig(**small))
    if lora:
        llama = apply_lora(llama, LoraConfig(enabled=True))
    assert block_class_names(llama) == ["LlamaDecoderLayer"]
    assert block_class_names(Qwen2ForCausalLM(Qwen2Config(**small))) == ["Qwen2DecoderLayer"]

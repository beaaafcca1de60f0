"""The model: a Hugging Face causal LM (from a local directory or built from a config) plus the
per-sample loss head that the trainer and evaluation call.

`SampleLossModel.forward` runs the transformer body and then `losses.per_sample_loss` on the final
hidden states with the lm_head weight, so the [tokens x vocab] logits are never materialised. Under
ZeRO-3 that weight belongs to `lm_head`, whose own forward is never called; the engine registers it as
an external parameter of this wrapper so ZeRO gathers it for our forward and backward.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ct_train.config import ModelConfig
from ct_train.errors import ConfigError
from ct_train.losses import per_sample_loss


def flash_attn_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attn(name: str) -> str:
    """`auto` -> flash_attention_2 when flash-attn imports on a GPU, else sdpa."""
    if name == "auto":
        return "flash_attention_2" if flash_attn_available() else "sdpa"
    if name == "flash_attention_2" and not flash_attn_available():
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 needs a GPU and the flash-attn "
            "package (pip install -e .[gpu]); use sdpa"
        )
    return name


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` -> bf16 on GPUs that support it, else fp32 (CPU, older GPUs)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def max_positions(cfg: ModelConfig) -> Optional[int]:
    """The model's `max_position_embeddings` (its config.json, or model.architecture), read without
    loading weights; None when it has none."""
    if not cfg.path:
        return cfg.architecture.get("max_position_embeddings")
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(cfg.path, local_files_only=True), "max_position_embeddings", None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path={cfg.path}: no loadable config.json ({str(e).splitlines()[0]})") from None


def build_hf_model(cfg: ModelConfig, tokenizer: Any, dtype: torch.dtype) -> Any:
    """The causal LM. Under ZeRO-3 transformers builds it inside `zero.Init` (HfDeepSpeedConfig alive)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    attn = resolve_attn(cfg.attn_implementation)
    if cfg.path:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.path, dtype=dtype, attn_implementation=attn, local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"model.path={cfg.path}: not a loadable Hugging Face causal LM ({str(e).splitlines()[0]})"
            ) from None
    else:
        arch: Dict[str, Any] = dict(cfg.architecture)
        model_type = arch.pop("model_type")
        try:
            hf_config = AutoConfig.for_model(model_type, **arch)
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"model.architecture: {e}") from None
        if hf_config.vocab_size < len(tokenizer):
            raise ConfigError(
                f"model.architecture.vocab_size={hf_config.vocab_size} is smaller than the "
                f"tokenizer's {len(tokenizer)} tokens"
            )
        hf_config.pad_token_id = tokenizer.pad_token_id
        hf_config.bos_token_id = tokenizer.bos_token_id
        hf_config.eos_token_id = tokenizer.eos_token_id
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attn)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


class SampleLossModel(nn.Module):
    """Wraps a causal LM; forward returns per-sample mean response losses and argmax-correct counts."""

    def __init__(
        self, lm: nn.Module, chunk_tokens: int = 4096, loss_backend: str = "auto", loss_grad_mode: str = "recompute"
    ) -> None:
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens
        self.loss_backend = loss_backend
        self.loss_grad_mode = loss_grad_mode

    def output_weight(self) -> nn.Parameter:
        return self.lm.get_output_embeddings().weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        objective_weights: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`objective_weights` (B,): d(objective)/d(per-sample loss), for loss_grad_mode="forward"."""
        body = self.lm.get_decoder()
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        forward_mode = self.loss_grad_mode == "forward" and objective_weights is not None
        return per_sample_loss(
            hidden,
            self.output_weight(),
            labels,
            self.chunk_tokens,
            self.loss_backend,
            grad_mode="forward" if forward_mode else "recompute",
            upstream_grad=objective_weights if forward_mode else None,
        )

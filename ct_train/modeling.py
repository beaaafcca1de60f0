"""The model: a Hugging Face causal LM (from a local directory or built from a config) plus the
per-sample loss head that the trainer and evaluation call.

`SampleLossModel.forward` runs the transformer body and then `losses.per_sample_loss` on the final
hidden states with the lm_head weight, so the [tokens x vocab] logits are never materialised. Under
ZeRO-3 that weight belongs to `lm_head`, whose own forward is never called; the engine registers it as
an external parameter of this wrapper so ZeRO gathers it for our forward and backward.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ct_train.config import LoraConfig, ModelConfig
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
    """`auto` -> flash_attention_2 when flash-attn imports on a GPU; else flex_attention on a GPU
    (PyTorch's own FlexAttention: packed rows get a document block mask whose empty blocks are skipped,
    where sdpa with a dense (R, 1, T, T) mask has no flash kernel); else sdpa (CPU)."""
    if name == "auto":
        if flash_attn_available():
            return "flash_attention_2"
        return "flex_attention" if torch.cuda.is_available() else "sdpa"
    if name == "flash_attention_2" and not flash_attn_available():
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 needs a GPU and the flash-attn "
            "package (pip install -e .[gpu]); use sdpa"
        )
    if name == "flex_attention" and not torch.cuda.is_available():
        raise ConfigError(
            "model.attn_implementation=flex_attention needs a GPU (FlexAttention has no backward on CPU); use sdpa"
        )
    return name


def document_block_mask(sample_index: torch.Tensor) -> Any:
    """FlexAttention's mask for packed rows (R, T): causal inside each sample, never across samples,
    padding (-1) attending to padding: the pairs of `SampleLossModel.packed_attention`'s dense mask,
    kept as (128 x 128) blocks, so the kernel skips the blocks between samples. Compiled on CUDA (as
    transformers builds its own block masks); on CPU the mask function is evaluated densely."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_sample_causal(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (sample_index[b, q] == sample_index[b, kv]) & (q >= kv)

    rows, t = sample_index.shape
    return create_block_mask(
        same_sample_causal, rows, None, t, t, device=sample_index.device, _compile=sample_index.is_cuda
    )


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


def check_gpu_options(cfg: ModelConfig) -> None:
    """Before any data work: the options that need CUDA and a package of the `gpu` extra."""
    resolve_attn(cfg.attn_implementation)  # (flash_attention_2 / flex_attention without a GPU)
    check_4bit(cfg)
    if not cfg.liger_kernel:
        return
    if not torch.cuda.is_available():
        raise ConfigError("model.liger_kernel=true needs a CUDA GPU (Liger's Triton kernels); on CPU leave it false")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        raise ConfigError("model.liger_kernel=true needs the liger-kernel package (pip install -e .[gpu])") from None


def apply_liger(model: Any) -> None:
    """Liger's RMSNorm, RoPE and SwiGLU patched into this model instance (its losses left alone: the
    lm_head forward is never called here). Model types Liger does not cover are refused by name."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(
            f"model.liger_kernel=true: Liger has no kernels for model type {model_type!r} "
            f"(it has {sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)})"
        )
    _apply_liger_kernel_to_instance(
        model=model, rms_norm=True, rope=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )


def check_4bit(cfg: ModelConfig) -> None:
    """QLoRA (model.lora.load_in_4bit) needs CUDA and bitsandbytes."""
    if not cfg.lora.load_in_4bit:
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            "model.lora.load_in_4bit=true needs a CUDA GPU (bitsandbytes' 4-bit kernels); on CPU use "
            "model.lora.enabled=true without it"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "model.lora.load_in_4bit=true needs the bitsandbytes package (pip install -e .[gpu])"
        ) from None


def _quantization(cfg: ModelConfig, dtype: torch.dtype) -> Dict[str, Any]:
    """from_pretrained's arguments for a 4-bit base (QLoRA's NF4 with double quantisation), each rank's
    copy on its own GPU; the storage dtype is the compute dtype, so DeepSpeed's cast of the module to
    it leaves the packed weights alone. Empty without load_in_4bit."""
    if not cfg.lora.load_in_4bit:
        return {}
    from transformers import BitsAndBytesConfig

    return dict(
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        ),
        device_map={"": torch.cuda.current_device()},
    )


def build_hf_model(cfg: ModelConfig, tokenizer: Any, dtype: torch.dtype) -> Any:
    """The causal LM. Under ZeRO-3 transformers builds it inside `zero.Init` (HfDeepSpeedConfig alive)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    attn = resolve_attn(cfg.attn_implementation)
    if cfg.path:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.path, dtype=dtype, attn_implementation=attn, local_files_only=True, **_quantization(cfg, dtype)
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
    if cfg.lora.load_in_4bit:  # peft's QLoRA preparation: norms in fp32, inputs that ask for grad
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:  # frozen embeddings: checkpointed blocks need an input that asks for grad
            model.enable_input_require_grads()
    model.config.use_cache = False
    if cfg.liger_kernel:
        apply_liger(model)
    return apply_lora(model, cfg.lora) if cfg.lora.enabled else model


def apply_lora(model: Any, lora: LoraConfig) -> Any:
    """`model` wrapped by peft with LoRA adapters on `lora.target_modules`; everything else frozen
    (lm_head included: the fused loss then computes no weight gradient for it). Called after the
    base is built (under ZeRO-3 inside zero.Init, so the base is partitioned; the adapters are made
    here, outside it, from the same torch seed on every rank, and deepspeed.initialize partitions them)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise ConfigError(
            f"model.lora.target_modules: {missing} name no module of this model; its linear layers are "
            f"named {_linear_names(model)}"
        )
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def block_class_names(model: nn.Module) -> List[str]:
    """The class names of the model's repeated transformer blocks (`LlamaDecoderLayer`, ...): what
    transformers lists as the model's `_no_split_modules`, found among its modules."""
    declared = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
    return sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in declared})


def compile_blocks(model: nn.Module) -> int:
    """torch.compile every transformer block's forward in place (`model.compile`); returns how many.

    The block module's own hooks (ZeRO-3's gather per block) run around the compiled function, not
    inside it. Shapes are dynamic from the start (rows and lengths change every step). Only forwards
    with gradients take the compiled path: the no-grad passes (evaluation, the probe) and generation
    stay eager, as generation's KV cache differs per layer and would recompile every block."""
    names = set(block_class_names(model))
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for m in blocks:
        m.forward = _compiled_when_training(m.forward)
    return len(blocks)


def _compiled_when_training(forward: Callable) -> Callable:
    compiled = torch.compile(forward, dynamic=True)

    def block_forward(*args: Any, **kwargs: Any) -> Any:
        return (compiled if torch.is_grad_enabled() else forward)(*args, **kwargs)

    return block_forward


def _linear_names(model: nn.Module) -> List[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def flatten_packed(*rows: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """(R, T) packed tensors as one (1, N) row of their real tokens (`rows[-1]` is the sample index,
    -1 on padding), in order: the layout flash-attn's varlen path reads from the position ids."""
    keep = rows[-1] >= 0
    return tuple(t[keep][None] for t in rows)


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
        position_ids: Optional[torch.Tensor] = None,
        sample_index: Optional[torch.Tensor] = None,
        num_samples: Optional[int] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`objective_weights` (B,): d(objective)/d(per-sample loss), for loss_grad_mode="forward".
        `position_ids`, `sample_index` (R, T), `num_samples` B: packed rows (data.batching)."""
        body = self.lm.get_decoder()
        if sample_index is not None and self.lm.config._attn_implementation == "flash_attention_2":
            # flash-attn's varlen kernels: transformers finds the samples from the position ids'
            # restarts, but only in a single row, so the rows become one, without their padding.
            flat = flatten_packed(input_ids, position_ids, labels, sample_index)
            input_ids, position_ids, labels, sample_index = flat
            attention_mask = None
        elif sample_index is not None and self.lm.config._attn_implementation == "flex_attention":
            attention_mask = document_block_mask(sample_index)  # transformers passes a BlockMask through
        elif sample_index is not None:
            attention_mask = self.packed_attention(sample_index)
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        forward_mode = self.loss_grad_mode == "forward" and objective_weights is not None
        return per_sample_loss(
            hidden,
            self.output_weight(),
            labels,
            self.chunk_tokens,
            self.loss_backend,
            grad_mode="forward" if forward_mode else "recompute",
            upstream_grad=objective_weights if forward_mode else None,
            sample_index=sample_index,
            num_samples=num_samples,
        )

    def packed_attention(self, sample_index: torch.Tensor) -> torch.Tensor:
        """Attention for packed rows (sdpa, eager) that never crosses samples: a block-diagonal causal
        (R, 1, T, T) mask, which transformers uses as given: boolean for sdpa, additive for eager.
        Padding (-1) attends to padding, so no query row is empty."""
        t = sample_index.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=sample_index.device).tril()
        allowed = (sample_index[:, :, None] == sample_index[:, None, :]) & causal
        allowed = allowed[:, None]
        if self.lm.config._attn_implementation == "sdpa":
            return allowed
        dtype = self.output_weight().dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

"""The one DeepSpeed adapter: ds_config from the typed config, model under zero.Init, step, save/load,
and the Hugging Face export. It knows nothing about curricula.

Everything DeepSpeed-specific is here so that the trainer reads as the algorithm. DeepSpeed's own
conventions stay visible where users expect them: the ds_config it builds is logged, and
`deepspeed.overrides` is merged last into it with DeepSpeed's own keys.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import datetime
import math
import os
import shutil
import subprocess
import sys
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from ct_train import distributed as dist
from ct_train import io
from ct_train.config import Config, DeepSpeedConfig, TrainerConfig
from ct_train.errors import CheckpointError
from ct_train.losses import objective
from ct_train.modeling import SampleLossModel, block_class_names, build_hf_model, compile_blocks, resolve_dtype


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _one_rank_zero(ds: DeepSpeedConfig) -> Dict[str, Any]:
    """ZeRO settings for a world of one rank: nothing to reduce, and each partition is the whole
    tensor, so DeepSpeed's multi-rank machinery is skipped where its own config allows."""
    # DeepSpeed's default reduce-scatter still copies every gradient into a padded flat buffer and
    # through gloo (1.2 s of a 135M-parameter step here); its all-reduce path is a no-op over the
    # contiguous gradient buffer for one rank.
    zero: Dict[str, Any] = {"reduce_scatter": False}
    if ds.zero_stage in (1, 2):
        # ZeRO-1/2 still flatten each bucket of gradients before the (no-op) all-reduce: one bucket
        # of the whole model is a fresh 538 MB buffer every micro-step for SmolLM2, paid in page
        # faults; 20 MB buckets stay in the allocator's reused heap (the reduce's share of a step
        # fell from 10.4% to 5.1%, sampled). ZeRO-3's bucket is allocated once.
        zero["reduce_bucket_size"] = 5_000_000
    if ds.zero_stage == 3 and not ds.offload_param:
        # ZeRO-3's memory-efficient linear (a Python autograd function that does not keep the
        # gathered weight for backward) saves memory only when a rank holds a part of each weight;
        # with one rank it held the same peak memory (6.60 vs 6.52 GB RSS, SmolLM2, micro-batches
        # of 4 x 256) and forward + backward took 15% longer than with torch's own linear (84 vs
        # 73 s over 6 steps, sampled).
        zero["memory_efficient_linear"] = False
    return zero


def build_ds_config(ds: DeepSpeedConfig, tr: TrainerConfig, dtype: torch.dtype, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config dict for this run."""
    on_gpu = torch.cuda.is_available()
    zero: Dict[str, Any] = {"stage": ds.zero_stage, "contiguous_gradients": True, "overlap_comm": on_gpu}
    if world_size == 1:
        zero.update(_one_rank_zero(ds))
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    zero_allow_untested = False
    if tr.optimizer == "adamw":
        # torch's AdamW unless offloading (then DeepSpeedCPUAdam): nothing to compile at start. Its
        # fused kernel (CPU and CUDA): one pass over each flat fp32 partition instead of a dozen
        # elementwise ops, each a pass over the memory (one 135M-element tensor here: 0.63 s -> 0.07 s).
        params = {
            "lr": tr.lr,
            "betas": list(tr.adam_betas),
            "eps": tr.adam_eps,
            "weight_decay": tr.weight_decay,
            "torch_adam": not ds.offload_optimizer,
        }
        if not ds.offload_optimizer:
            params["fused"] = True
        optimizer = {"type": "AdamW", "params": params}
    else:
        optimizer = {"type": "SGD", "params": {"lr": tr.lr, "weight_decay": tr.weight_decay}}
        zero_allow_untested = True  # torch.optim.SGD under ZeRO: plain elementwise update, safe
    config = {
        "train_batch_size": tr.global_batch_size,
        "train_micro_batch_size_per_gpu": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.grad_accum_steps(world_size),
        "gradient_clipping": tr.grad_clip,
        "zero_optimization": zero,
        "optimizer": optimizer,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16, "loss_scale": 0},
        "steps_per_print": 10**9,  # the trainer logs; keep DeepSpeed's own step prints quiet
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": zero_allow_untested,
    }
    return _merge(config, dict(ds.overrides))


def lr_lambda(tr: TrainerConfig, total_steps: int, restarts: Sequence[int] = ()):
    """Linear warmup, then cosine/linear decay to `min_lr_ratio`, or constant.

    `restarts`: steps where the schedule starts over (a curriculum stage that re-warms): each segment
    between them gets its own warmup and decay. The warmup is `trainer.warmup_ratio` of the segment
    when set, else `trainer.warmup_steps`.
    """
    starts = sorted({0, *(s for s in restarts if 0 < s < total_steps)})
    ends = starts[1:] + [max(total_steps, 1)]

    def fn(step: int) -> float:
        k = bisect.bisect_right(starts, step) - 1
        start, length = starts[k], ends[k] - starts[k]
        local = step - start
        warmup = round(tr.warmup_ratio * length) if tr.warmup_ratio > 0 else tr.warmup_steps
        if warmup and local < warmup:
            return (local + 1) / warmup
        if tr.lr_schedule == "constant":
            return 1.0
        progress = min(max(local - warmup, 0) / max(length - warmup, 1), 1.0)
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if tr.lr_schedule == "cosine" else 1 - progress
        return tr.min_lr_ratio + (1 - tr.min_lr_ratio) * decay

    return fn


# torch builds DeepSpeed's C++ ops (the CPU shm collective) on first use, under a lock file it waits
# on forever; a start killed during the build leaves the file behind. A normal build takes seconds.
BUILD_LOCK_WAIT_S = 300
BUILD_LOCK_QUIET_S = 10  # a lock held this long is named (a normal start holds it well under a second)


def extension_locks() -> list:
    """The lock files in torch's extension build directories (none while nothing is being built)."""
    import glob

    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return sorted(glob.glob(os.path.join(root, "lock")) + glob.glob(os.path.join(root, "*", "lock"))
                  + glob.glob(os.path.join(root, "*", "*", "lock")))  # fmt: skip


def wait_for_extension_locks(wait_s: float = BUILD_LOCK_WAIT_S, poll_s: float = 1.0) -> None:
    """Name a build lock that is there, wait for it at most `wait_s`, then refuse in one line (torch
    itself would wait forever, saying nothing)."""
    import time

    # Ranks starting together see each other's brief lock on every start: nothing is said for a while.
    quiet_until = time.monotonic() + min(BUILD_LOCK_QUIET_S, wait_s)
    while (locks := extension_locks()) and time.monotonic() < quiet_until:
        time.sleep(min(poll_s, 0.05))
    if not locks:
        return
    print(
        f"ct-train: waiting up to {wait_s:.0f} s for torch's extension build lock {locks[0]} (another start on "
        "this machine is building a DeepSpeed op, or a killed start left the file)",
        file=sys.stderr,
        flush=True,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        locks = extension_locks()
        if not locks:
            return
    from ct_train.errors import UserError

    raise UserError(
        f"torch's extension build lock {locks[0]} has been there for {wait_s:.0f} s: if no other ct-train or "
        "DeepSpeed start is running on this machine, a killed start left it; delete that file and start again"
    )


def unlink_shm_buffer_name() -> None:
    """DeepSpeed's CPU all-reduce (all ranks on one node: LOCAL_SIZE = world size) maps one 66 MB
    buffer per rank, `/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`, and only a
    rank that exits cleanly removes its name: a killed rank left it behind for good. Once every rank
    has mapped every buffer (DeepSpeed's init opens them all; the barrier), each rank removes its
    own name at once; the mappings live on until the process ends, and nothing is left to leak."""
    if os.environ.get("LOCAL_SIZE") != str(dist.world_size()):
        return
    dist.barrier()
    name = "deepspeed_allreduce_buffer_{}_{}_{}_{}".format(
        os.getuid(), os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), dist.rank()
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join("/dev/shm", name))


class Engine:
    """A DeepSpeed engine around `SampleLossModel`."""

    def __init__(self, cfg: Config, tokenizer: Any, load_universal: bool = False, inference: bool = False) -> None:
        """`load_universal`: the checkpoint to resume is a DeepSpeed universal checkpoint (written by
        another number of ranks and converted); DeepSpeed must know before `initialize`.
        `inference`: forward passes only (scoring): no optimizer, so no optimizer state is allocated."""
        import deepspeed
        from deepspeed.utils import z3_leaf_module
        from transformers.integrations import HfDeepSpeedConfig

        wait_for_extension_locks()  # (DeepSpeed's init below may build an op under torch's lock)
        # Our process group exists already (distributed.init); this makes deepspeed.comm adopt it before
        # anything below asks DeepSpeed for the world size.
        deepspeed.init_distributed(
            dist_backend=dist.backend(), timeout=datetime.timedelta(seconds=cfg.trainer.dist_timeout_s)
        )
        unlink_shm_buffer_name()
        self.cfg = cfg
        self.dtype = resolve_dtype(cfg.model.dtype)
        self.world_size = dist.world_size()
        self.grad_accum_steps = cfg.trainer.grad_accum_steps(self.world_size)
        self.ds_config = build_ds_config(cfg.deepspeed, cfg.trainer, self.dtype, self.world_size)
        if load_universal:
            self.ds_config["checkpoint"] = {**self.ds_config.get("checkpoint", {}), "load_universal": True}
        self.zero3 = self.ds_config["zero_optimization"]["stage"] == 3
        # Alive while the model is built: transformers then constructs it inside zero.Init (each rank
        # materialises only its partition) and loads checkpoints shard by shard.
        self._hf_ds_config = HfDeepSpeedConfig(self.ds_config) if self.zero3 else None
        torch.manual_seed(cfg.trainer.seed)  # identical initial weights on every rank
        model = SampleLossModel(
            build_hf_model(cfg.model, tokenizer, self.dtype),
            loss_backend=cfg.model.loss_backend,
            loss_grad_mode=cfg.model.loss_grad_mode,
        )
        if self.zero3:
            # lm_head's forward never runs (we project in the loss): gather its weight for ours.
            deepspeed.zero.register_external_parameter(model, model.output_weight())
            if cfg.deepspeed.gather_per_block:
                self._gather_per_block(model)
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:  # frozen (LoRA's base): no optimizer state, no gradient partition
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.trainer.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if inference:
            self.ds_config.pop("optimizer")
            self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(model=model, config=self.ds_config)
            self.ds.eval()
        else:
            # The schedule is looked up through `self._lr_fn`, so `set_lr_schedule` can replace it once
            # the curriculum has said where its stages start (LambdaLR keeps the function it was given).
            self._lr_fn = lr_lambda(cfg.trainer, cfg.trainer.max_steps)
            self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model,
                model_parameters=groups,
                config=self.ds_config,
                lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self._lr_fn(step)),
            )
        self.device = self.ds.device
        self.compiled_blocks = compile_blocks(model) if cfg.model.compile else 0
        # What DeepSpeed did mark (its config may name classes the model lacks): for the start line.
        self.gathered_blocks = sorted(type(m).__name__ for m in model.modules() if z3_leaf_module(m))

    def _gather_per_block(self, model: SampleLossModel) -> None:
        """ZeRO-3 gathers and releases parameters around every module call, a fixed cost per call
        (~10 modules in a Llama block, 7 more per block with LoRA). DeepSpeed's leaf modules gather a
        whole transformer block in one call and put no hooks inside it: a block's parameters live at
        a time instead of one layer's, at a fraction of the calls. The user's own `leaf_module`
        override wins."""
        from deepspeed.runtime.zero.leaf_module_config import DEFAULT_LEAF_MODULE_CLASSES

        zero = self.ds_config["zero_optimization"]
        if "leaf_module" not in zero:
            zero["leaf_module"] = {"classes": [*DEFAULT_LEAF_MODULE_CLASSES, *block_class_names(model)]}
        if any(not p.requires_grad for p in model.parameters()):
            # A block is gathered again for backward by its module backward hook, which fires only
            # if the block's input asks for a gradient: with frozen embeddings (LoRA) it would not,
            # and the block's backward would find its weights released.
            model.lm.enable_input_require_grads()

    @property
    def module(self) -> SampleLossModel:
        return self.ds.module

    @property
    def zero_stage(self) -> int:
        return int(self.ds_config["zero_optimization"]["stage"])

    def describe_zero(self) -> str:
        """`ZeRO-3 (gathered per block: 30 x LlamaDecoderLayer)`, for the start line."""
        blocks = sorted(set(self.gathered_blocks))
        per_block = ", ".join(f"{self.gathered_blocks.count(b)} x {b}" for b in blocks)
        compiled = f", {self.compiled_blocks} blocks compiled" if self.compiled_blocks else ""
        return f"ZeRO-{self.zero_stage}" + (f" (gathered per block: {per_block})" if per_block else "") + compiled

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Forwards without dropout inside, the previous mode restored after (held-out passes)."""
        was_training = self.ds.training
        self.ds.train(False)
        try:
            yield
        finally:
            self.ds.train(was_training)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, pad_id: int,
                 eos_id: Optional[int]) -> torch.Tensor:  # fmt: skip
        """Greedy continuations (B, T + new) of left-padded prompts, through the HF model's own
        `generate`. Every rank calls it; under ZeRO-3 on several ranks `synced_gpus` keeps them
        decoding in step (each forward gathers parameters collectively), as the HF Trainer does."""
        lm = self.module.lm
        with self.eval_mode():
            return lm.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                synced_gpus=self.zero3 and self.world_size > 1,
            )

    def accumulate(
        self,
        batches: Sequence[Any],
        weights_of: Callable[[Any], torch.Tensor],
        perturb: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
    ) -> Iterator[Tuple[Any, torch.Tensor]]:
        """Forward and backward of one optimizer step's micro-batches, yielding (batch, per-sample
        losses) after each backward. `weights_of(batch)`: the objective's per-sample weights
        (`losses.objective_weights`). The caller takes the boundary step with `step()` once it has
        seen the losses (a non-finite signal can still stop the run before the update). `perturb`:
        the fault-drill hook (drills.FaultDrills), applied to the losses before the objective."""
        for i, batch in enumerate(batches):
            weights = weights_of(batch)
            per_sample, _ = self.forward(batch, weights)
            if perturb is not None:
                per_sample = perturb(i, per_sample)
            self.backward(objective(per_sample, weights))
            if i < len(batches) - 1:
                self.ds.step()  # not the boundary yet: DeepSpeed only counts the micro-step
            yield batch, per_sample

    def full_grads(self, params: Sequence[torch.nn.Parameter]) -> Iterator[torch.Tensor]:
        """Each parameter's full gradient, one at a time (after backward, before the step). Under
        ZeRO-3 each is gathered from the partitions (a collective: every rank iterates the same list)."""
        from deepspeed.utils import safe_get_full_grad

        for p in params:
            yield safe_get_full_grad(p)

    def num_parameters(self, trainable: bool = False) -> int:
        return self.full_numel(p for p in self.module.parameters() if p.requires_grad or not trainable)

    @staticmethod
    def full_numel(params: Any) -> int:
        """Values in `params` at full size: under ZeRO-3 each parameter is a partition (ds_numel)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in params)

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def forward(
        self, batch: Any, objective_weights: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample losses (B,) and argmax-correct token counts (B,) for a MicroBatch. Training passes
        the objective's weights (`losses.objective_weights`), which model.loss_grad_mode=forward uses."""
        if batch.sample_index is None:
            return self.ds(batch.input_ids, batch.attention_mask, batch.labels, objective_weights)
        return self.ds(
            batch.input_ids,
            batch.attention_mask,
            batch.labels,
            objective_weights,
            position_ids=batch.position_ids,
            sample_index=batch.sample_index,
            num_samples=batch.num_samples,
        )

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> Optional[float]:
        """Optimizer step at the accumulation boundary (DeepSpeed counts micro-steps itself)."""
        self.ds.step()

    def skipped_steps(self) -> int:
        """Optimizer steps DeepSpeed discarded (a non-finite gradient norm, or an fp16 overflow)."""
        return int(self.ds.skipped_steps)

    def grad_norm(self) -> Optional[float]:
        norm = self.ds.get_global_grad_norm()
        if norm is None:
            return None
        return float(norm.item() if torch.is_tensor(norm) else norm)

    def set_lr_schedule(self, total_steps: int, restarts: Sequence[int] = ()) -> None:
        """The run's LR schedule once its length and stage starts are known (before the first step or
        after loading a checkpoint: the scheduler's step count is kept, the factor recomputed, and
        the base LR is trainer.lr, whatever the checkpoint's was)."""
        self._lr_fn = lr_lambda(self.cfg.trainer, total_steps, restarts)
        self.scheduler.base_lrs = [self.cfg.trainer.lr] * len(self.scheduler.base_lrs)
        factor = self._lr_fn(self.scheduler.last_epoch)
        for group, base in zip(self.scheduler.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        self.scheduler._last_lr = [g["lr"] for g in self.scheduler.optimizer.param_groups]

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, checkpoint_dir: str, tag: str) -> None:
        """A collective: every rank writes its ZeRO partition under checkpoint_dir/tag. With LoRA the
        frozen base is left out (it is model.path's, loaded when the model is built): a 135M base was
        538 MB of every checkpoint next to a 20 MB adapter."""
        lora = self.cfg.model.lora.enabled
        self.ds.save_checkpoint(checkpoint_dir, tag=tag, save_latest=False, exclude_frozen_parameters=lora)

    def load(self, checkpoint_dir: str, tag: str) -> None:
        path, _ = self.ds.load_checkpoint(
            checkpoint_dir,
            tag=tag,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            load_module_strict=not self.cfg.model.lora.enabled,  # (LoRA: the frozen base is not in it)
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {checkpoint_dir}/{tag}")

    def export_hf(self, out_dir: str, tokenizer: Any, after_weights: Callable[[], None] = lambda: None) -> None:
        """A Hugging Face model directory (safetensors + config + tokenizer), written by rank 0.

        Under ZeRO-3 the full weights are gathered to rank 0 (a collective: every rank calls this).
        It is written as `<out_dir>.partial` and renamed to `out_dir` when whole, so a process killed
        half-way leaves no `out_dir` that looks complete (`after_weights`: the drills' kill point).
        """
        if self.zero3:
            state = self.ds._zero3_consolidated_16bit_state_dict()  # the HF Trainer's route, too
        else:
            state = self.module.state_dict() if dist.is_main() else None
        if dist.is_main():
            state = {k[len("lm.") :]: v for k, v in state.items() if k.startswith("lm.")}
            with io.atomic_dir(out_dir) as tmp:
                if self.cfg.model.lora.enabled:
                    self._export_lora(tmp, out_dir, state, tokenizer)
                else:
                    self.module.lm.save_pretrained(tmp, state_dict=state, safe_serialization=True)
                after_weights()
                tokenizer.save_pretrained(tmp)
        dist.barrier()

    def _export_lora(self, out_dir: str, final_dir: str, state: Dict[str, Any], tokenizer: Any) -> None:
        """final/ as a PEFT adapter (adapter_config.json + adapter_model.safetensors; peft keeps only
        the adapter tensors of `state`). A base from random init (no model.path) is written beside it
        in base/, which the adapter then names; merged/ (model.lora.merge_on_export) is the base with
        the adapters folded in by peft's merge_and_unload, a plain Hugging Face model. Written into
        `out_dir`, which becomes `final_dir` once whole (the adapter names the base there)."""
        from peft import PeftModel
        from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

        lm = self.module.lm
        base_state = _base_state(state)
        if self.cfg.model.path is None:
            base_dir = os.path.join(out_dir, "base")
            lm.get_base_model().save_pretrained(base_dir, state_dict=base_state, safe_serialization=True)
            tokenizer.save_pretrained(base_dir)
            lm.peft_config["default"].base_model_name_or_path = os.path.abspath(os.path.join(final_dir, "base"))
        lm.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        if not self.cfg.model.lora.merge_on_export:
            return
        # A plain CPU copy of the base to merge into: built outside zero.Init (transformers would
        # partition it while the run's DeepSpeed config is registered).
        unset_hf_deepspeed_config()
        try:
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_config(lm.get_base_model().config, dtype=self.dtype)
        finally:
            if self._hf_ds_config is not None:
                set_hf_deepspeed_config(self._hf_ds_config)
        missing, unexpected = base.load_state_dict(base_state, strict=False)
        base.tie_weights()  # a tied lm_head is not in the gathered state: it is the embedding
        tied = {"lm_head.weight"} if getattr(base.config, "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"merging LoRA: base weights missing {sorted(set(missing) - tied)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")  # fmt: skip
        merged = PeftModel.from_pretrained(base, out_dir).merge_and_unload()
        merged.save_pretrained(os.path.join(out_dir, "merged"), safe_serialization=True)
        tokenizer.save_pretrained(os.path.join(out_dir, "merged"))


def _base_state(state: Dict[str, Any]) -> Dict[str, Any]:
    """The base model's own tensors in a peft model's state dict, under the base's key names:
    `base_model.model.` dropped, `.base_layer` unwrapped, the adapters left out."""
    out = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[key] = value
    return out


def to_universal(ckpt_dir: str, tag: str, output_dir: str, key: str) -> str:
    """DeepSpeed's universal checkpoint of (ckpt_dir, tag), for loading on another number of ranks.

    ZeRO partitions are per rank, so DeepSpeed refuses to load them on a different world size; its
    `ds_to_universal` converter re-slices them per parameter. Rank 0 converts once into
    `<output_dir>/universal/<key>/<tag>`, reused when already there; returns its parent (DeepSpeed loads
    by directory and tag). `key` names the source's content (checkpoint.content_key): a cache keyed by
    the tag alone once loaded another run's weights whose step-N checkpoint had been converted first.
    """
    root = os.path.join(output_dir, "universal", key)
    done = os.path.join(root, tag, "universal_done")

    def convert() -> None:
        if os.path.exists(done):
            return
        tmp = os.path.join(root, tag + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
               os.path.join(ckpt_dir, tag), "--output_folder", tmp, "--num_extract_workers", "1",
               "--num_merge_workers", "1"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CheckpointError(
                f"cannot convert {os.path.join(ckpt_dir, tag)} for a different number of ranks "
                f"(deepspeed ds_to_universal: {tail[0][:300]})"
            )
        shutil.rmtree(os.path.join(root, tag), ignore_errors=True)
        os.replace(tmp, os.path.join(root, tag))
        open(done, "w").close()

    dist.on_main(convert, "convert the checkpoint to the universal format")
    return root


# The non-tensor types DeepSpeed 0.19 pickles into its checkpoint files (ZeRO-1/2/3 on CPU, measured:
# an optimizer state holds its stage enum, loss scaler and, under ZeRO-1/2, fragment addresses).
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def check_checkpoint_files(path: str, extra_globals: Sequence[str] = ()) -> None:
    """Refuse a checkpoint whose DeepSpeed files would run code when loaded. DeepSpeed loads them with
    torch.load(weights_only=False), which executes any pickled callable; here each file is first
    unpickled with torch's weights-only loader (tensors, containers and primitives) plus the types
    DeepSpeed itself writes (DEEPSPEED_GLOBALS, and `trainer.checkpoint_globals`), memory-mapped so
    the tensors are not read. CheckpointError naming the file and the foreign type otherwise."""
    import importlib
    import re

    allowed = []
    for dotted in (*DEEPSPEED_GLOBALS, *extra_globals):
        module, _, name = dotted.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # not in this DeepSpeed version: it cannot be in its files either
    for name in sorted(os.listdir(path)):
        if not name.endswith(".pt") or name.startswith("rng_rank"):  # (rng_rank*.pt: an old RNG file, never read)
            continue
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(os.path.join(path, name), weights_only=True, mmap=True, map_location="cpu")
        except Exception as e:  # an UnpicklingError names the global; anything else: not a torch file
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f"it holds {found.group(1)}" if found else f"it does not load ({str(e).splitlines()[0][:120]})"
            raise CheckpointError(
                f"refusing checkpoint {path}: {name}: {what}, which a checkpoint of ours never holds (code run on "
                "load?); if that type is DeepSpeed's own, add it to trainer.checkpoint_globals"
            ) from None

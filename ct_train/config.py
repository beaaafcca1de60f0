"""Typed configuration: the schema Hydra composes into and the checks that run before training.

Every field here is a Hydra key (`trainer.max_steps=...`). The dataclasses are registered in Hydra's
ConfigStore as `ct_train_schema` (`ct_train.compose`), which `hydra_conf/config.yaml` lists first in
its defaults, so the YAML groups merge into typed nodes in struct mode: an unknown key or a wrong type
fails at start with Hydra's own message. Choices and cross-field rules are checked by `validate()` (run
by `compose.to_typed`, before any work) and raise `ConfigError` naming the key and what it accepts.

Ground floor (DESIGN.md): pure dataclasses that import only `errors`. Names checked against a
registry (curricula, formats, templates, scorers, strategies) are checked in `ct_train.compose`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ct_train.errors import ConfigError


def check_choice(key: str, value: Any, options: tuple) -> None:
    """ConfigError naming the key when `value` is not one of `options`."""
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not valid; expected one of: {', '.join(map(str, options))}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def check_cluster_weights(key: str, weights: Any) -> None:
    """A `cluster -> weight >= 0` mapping (or None); ConfigError naming the key otherwise."""
    if weights is not None and not isinstance(weights, dict):
        raise ConfigError(f"{key} must map cluster names to weights, got {weights!r}")
    for cluster, w in (weights or {}).items():
        if not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"{key}.{cluster}={w!r} must be a number >= 0")


def as_path_list(key: str, value: Any) -> List[str]:
    """A data path setting (one string or a list of strings) as a list; ConfigError otherwise."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{key} must be a path or a list of paths, got {value!r}")


LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    """LoRA adapters through `peft` (model.lora.enabled=true): only the adapters train and have
    optimizer state; the base weights, lm_head included, stay frozen."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Module names peft wraps; the default suits Llama-style models (Llama, Mistral, Qwen, SmolLM2).
    target_modules: List[str] = field(default_factory=lambda: list(LLAMA_LORA_TARGETS))
    # final/ then also holds merged/: the adapters folded into the base, a plain HF model.
    merge_on_export: bool = False
    # QLoRA: the frozen base loaded in 4 bits (bitsandbytes NF4, double quantisation, computing in
    # model.dtype), the adapters in model.dtype. CUDA only; with ZeRO-2 (or 0/1), not ZeRO-3.
    load_in_4bit: bool = False

    def validate(self) -> None:
        _positive("model.lora.r", self.r)
        _positive("model.lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout={self.dropout!r} must be in [0, 1)")
        if self.enabled and not self.target_modules:
            raise ConfigError("model.lora.target_modules is empty: name the modules to adapt (e.g. [q_proj, v_proj])")


@dataclass
class ModelConfig:
    """Which causal LM to train.

    With `path` the weights, config and tokenizer come from that local Hugging Face directory;
    without it the model is built from `architecture` (a transformers config, `model_type` first)
    with random weights, and the tokenizer is the built-in byte-level one.
    """

    name: str = "tiny"
    path: Optional[str] = None
    architecture: Dict[str, Any] = field(default_factory=dict)
    tokenizer: Optional[str] = None
    attn_implementation: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    loss_backend: str = "auto"  # fused cross-entropy: auto (Triton on CUDA, else torch), triton, torch
    # Its gradients: recompute the logits in backward, or finish them in forward for the objective's
    # weights (known before the forward pass): no recompute, but dX and dW are held until backward.
    loss_grad_mode: str = "recompute"
    # Liger-Kernel's fused RMSNorm, RoPE and SwiGLU in the decoder (TRL's / axolotl's use_liger_kernel;
    # CUDA only). Its cross-entropy is not used: the loss is ours (losses.per_sample_loss).
    liger_kernel: bool = False
    # torch.compile each transformer block's forward (TRL's torch_compile, torchtune's compile). Under
    # ZeRO-3 it needs deepspeed.gather_per_block=true: the gathers then happen around the block, outside
    # the compiled graph, instead of as hooks inside it (one graph break per layer).
    compile: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        self.lora.validate()
        check_choice("model.loss_backend", self.loss_backend, ("auto", "triton", "torch"))
        check_choice("model.loss_grad_mode", self.loss_grad_mode, ("recompute", "forward"))
        check_choice(
            "model.attn_implementation",
            self.attn_implementation,
            ("auto", "flash_attention_2", "flex_attention", "sdpa", "eager"),
        )
        check_choice("model.dtype", self.dtype, ("auto", "bf16", "fp16", "fp32"))
        if self.path is None and not self.architecture:
            raise ConfigError("model: set model.path=DIR (a local Hugging Face checkpoint) or model.architecture")
        if self.lora.load_in_4bit:
            if not self.lora.enabled:
                raise ConfigError("model.lora.load_in_4bit=true is QLoRA: set model.lora.enabled=true too")
            if self.path is None:
                raise ConfigError("model.lora.load_in_4bit=true quantises pretrained weights: set model.path")
            if self.lora.merge_on_export:
                raise ConfigError(
                    "model.lora.merge_on_export=true needs the full-precision base, not the 4-bit one: merge "
                    "final/ into model.path's weights afterwards (peft's merge_and_unload)"
                )
        if self.path is None and "model_type" not in self.architecture:
            raise ConfigError("model.architecture.model_type is required when model.path is not set (e.g. llama)")


@dataclass
class SkillsConfig:
    """The bundled skill suite (`data=skills`): a deterministic generator, see `ct_train.data.skills`."""

    clusters: List[str] = field(default_factory=list)  # empty: the default ten (skills.DEFAULT_SUITE)
    levels: int = 3
    train_per_level: int = 300
    eval_per_level: int = 16
    seed: int = 1234
    # cluster -> training samples per level (unequal cluster sizes; `data=bench`); `Any` so it merges
    sizes: Any = None

    def validate(self) -> None:
        if self.sizes is not None and (
            not isinstance(self.sizes, dict) or any(not isinstance(v, int) or v < 1 for v in self.sizes.values())
        ):
            raise ConfigError(f"data.skills.sizes must map cluster names to sample counts >= 1, got {self.sizes!r}")
        _positive("data.skills.levels", self.levels)
        _positive("data.skills.train_per_level", self.train_per_level)
        _positive("data.skills.eval_per_level", self.eval_per_level)


# The fields `data.columns` may map: every format's (data/formats.py) and the cluster/difficulty fields.
COLUMN_NAMES = (
    "instruction", "input", "output", "prompt", "response", "completion", "messages", "conversations",
    "system", "data", "instances", "id", "cluster", "task", "category", "difficulty", "score",
)  # fmt: skip


@dataclass
class DataConfig:
    """Where the instruction data comes from and how it becomes token ids and labels."""

    name: str = "skills"
    path: Any = None  # a file, a directory, or a list of them
    # cluster -> path(s): many datasets grouped into named clusters. `Any`, not Dict: Hydra then accepts
    # `data.sources={qa: [a.jsonl], math: b.jsonl}` (a typed dict node in struct mode rejects new keys).
    sources: Any = None
    eval_path: Any = None  # held-out files; without them a split of the training data
    format: str = "auto"
    # Our field name -> the file's (axolotl's and LLaMA-Factory's column mapping), applied to every file
    # before its format is detected: `data.columns={instruction: question, output: answer}`. `Any`, not
    # Dict, for the same reason as `sources`.
    columns: Any = None
    cluster_field: Optional[str] = None
    difficulty_field: Optional[str] = None
    # [teacher_field, student_field]: a record's difficulty is their difference (TAPIR's Model Fitting
    # Difficulty from judge scores of the teacher's and the student's responses); overrides the field.
    judge_fields: Optional[List[str]] = None
    template: str = "auto"
    max_seq_len: int = 512
    truncation: str = "truncate"
    on_bad_record: str = "skip"
    eval_fraction: float = 0.02
    eval_max_per_cluster: int = 64
    exact_match: bool = False  # report eval/<cluster>/exact_match (greedy decoding == reference)
    # Each cluster becomes one cluster per difficulty level, `<cluster>/L<level>` (e.g. add/L1): for
    # curricula over (task, level) categories such as beyond_iid's interaction matrix.
    split_by_difficulty: bool = False
    num_proc: int = 1
    # Pack each micro-batch's samples into rows as long as its longest sample (positions restart per
    # sample, attention stays inside a sample, one loss per sample): the same samples, micro-batches
    # and per-sample losses as padded rows (up to float order), without the padding's compute. On by
    # default: up to 1.6x the padded tokens/s, ~1.0x on short samples of even length (docs/benchmarks.md).
    # Training and probe passes only.
    packing: bool = True
    # Micro-batches of similar lengths inside each rank's share of a step (HF's group_by_length):
    # the step's samples and the stream do not change, the padding does.
    group_by_length: bool = False
    skills: SkillsConfig = field(default_factory=SkillsConfig)

    def validate(self) -> None:
        # bench, bench_v2, bench_v1: the curriculum benchmark's suites (skill generators, ct_train.data.bench_suite)
        check_choice("data.name", self.name, ("skills", "bench", "bench_v2", "bench_v1", "jsonl"))
        check_choice("data.truncation", self.truncation, ("truncate", "drop"))
        check_choice("data.on_bad_record", self.on_bad_record, ("skip", "error"))
        _positive("data.max_seq_len", self.max_seq_len)
        _positive("data.num_proc", self.num_proc)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction={self.eval_fraction!r} must be in [0, 1)")
        as_path_list("data.path", self.path)
        as_path_list("data.eval_path", self.eval_path)
        if self.judge_fields is not None and (len(self.judge_fields) != 2 or len(set(self.judge_fields)) != 2):
            raise ConfigError(
                f"data.judge_fields must name two different fields [teacher_score, student_score], "
                f"got {list(self.judge_fields)!r}"
            )
        if self.name == "jsonl" and not self.path and not self.sources:
            raise ConfigError("data=jsonl needs data.path=FILE_OR_DIR (or data.sources={cluster: path})")
        if self.path and self.sources:
            raise ConfigError("set either data.path or data.sources, not both")
        if self.columns is not None and (
            not isinstance(self.columns, dict) or not all(isinstance(v, str) and v for v in self.columns.values())
        ):
            raise ConfigError(f"data.columns must map field names to the file's field names, got {self.columns!r}")
        unknown = sorted(set(self.columns or {}) - set(COLUMN_NAMES))
        if unknown:
            raise ConfigError(f"data.columns: {unknown} name no field ct_train reads; choose from {list(COLUMN_NAMES)}")
        if self.sources is not None and not isinstance(self.sources, dict):
            raise ConfigError(f"data.sources must map cluster names to paths, got {self.sources!r}")
        for cluster, paths in (self.sources or {}).items():
            if not as_path_list(f"data.sources.{cluster}", paths):
                raise ConfigError(f"data.sources.{cluster} names no file; give a path or a list of paths")


@dataclass
class CurriculumConfig:
    """Which curriculum decides what the next global batch draws from (`ct_train.curriculum`).

    This base node is `curriculum=iid`. Each strategy extends it with its own keys in its own
    module (e.g. `ct_train.curriculum.it2acl.IT2ACLConfig`), registered as the Hydra schema of its
    YAML in hydra_conf/curriculum/, so `curriculum=it2acl curriculum.eta=0.1` is typed and a key of
    another strategy fails at start.
    """

    name: str = "iid"

    def validate(self) -> None:
        """A strategy's own field checks (its name is checked against the registry in compose.py)."""

    def needs(self) -> Needs:
        """What this curriculum needs from the run (see `Needs`); the base (IID) needs nothing."""
        return Needs()


@dataclass(frozen=True)
class Needs:
    """What a curriculum needs from the run, declared by its config so the trainer knows before the
    data or the model loads (DESIGN.md, "Curriculum": a declared `needs`, not probed attributes)."""

    signal: str = "loss"  # loss | pg | spg | lp: the extra forwards each step runs for the signal
    difficulty: str = "none"  # none | data | initial_loss | auto (the data's, else the initial loss)
    difficulty_key: str = "curriculum.difficulty"  # the key a user sets to change `difficulty`
    data_parts: Dict[str, List[str]] = field(default_factory=dict)  # part name -> files (TAPIR rounds)
    probe_per_cluster: int = 0  # held-out probe samples per cluster (signal=lp)
    probe_every_steps: int = 0  # steps between probe passes (signal=lp)
    probe_backoff: float = 1.0  # from the run's second half, probes are this many times further apart
    # a probe pass at a multiple of this step also scores the probe's prompt-swapped twins (0: never)
    probe_twin_every_steps: int = 0
    sets_length: bool = False  # its stages fix the run's length (trainer.max_steps may be -1)
    loss_weights: Optional[Dict[str, float]] = None  # cluster -> weight of its losses in the objective
    inputs: Dict[str, str] = field(default_factory=dict)  # config key -> JSON file the caller loads
    chooses_clusters: bool = False  # it learns which cluster to train on (a bandit): one cluster leaves no choice

    def probe_due(self, steps_done: int, total_steps: int) -> bool:
        """Whether the held-out probe (signal=lp) runs after the step that completes `steps_done`."""
        return probe_due(steps_done, self.probe_every_steps, self.probe_backoff, total_steps)

    def twins_due(self, steps_done: int, total_steps: int) -> bool:
        """Whether that probe pass also scores the prompt-swapped twins (`data.prompt_swap`)."""
        every = self.probe_twin_every_steps
        return every > 0 and steps_done % every == 0 and self.probe_due(steps_done, total_steps)


def probe_due(steps_done: int, every: int, backoff: float, total_steps: int) -> bool:
    """Every `every` steps; from the second half of a run of `total_steps` (when known), every
    round(every x backoff). A function of the step alone, so every rank, and a resumed run, agree."""
    if every <= 0:
        return False
    half = total_steps // 2
    if backoff <= 1.0 or total_steps <= 0 or steps_done <= half:
        return steps_done % every == 0
    return (steps_done - half) % max(1, round(every * backoff)) == 0


@dataclass
class DeepSpeedConfig:
    """The ZeRO setup; `overrides` is merged last into the generated ds_config (DeepSpeed's own keys)."""

    name: str = "zero3"
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_param: bool = False
    # ZeRO-3: gather each transformer block's parameters in one call (DeepSpeed leaf modules) instead
    # of module by module. What is computed is the same; only how often ZeRO gathers.
    gather_per_block: bool = True
    overrides: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_choice("deepspeed.zero_stage", self.zero_stage, (0, 1, 2, 3))
        if self.offload_param and self.zero_stage != 3:
            raise ConfigError("deepspeed.offload_param=true needs deepspeed.zero_stage=3")


PRETRAINED_KEEP_LAST = 2  # trainer.keep_last_checkpoints=null with model.path set


@dataclass
class TrainerConfig:
    """The loop: how long, how big, how fast, where the outputs go."""

    max_steps: int = 200  # -1: as many as the curriculum's stages take (phased, tapir)
    # Passes over the training data (TRL's num_train_epochs); set, it fixes max_steps from the data's
    # size: ceil(epochs x training samples / global_batch_size). null: max_steps.
    epochs: Optional[float] = None
    global_batch_size: int = 32
    micro_batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 10
    warmup_ratio: float = 0.0  # > 0: warmup is this share of the run (of each stage when the LR re-warms)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    loss_normalization: str = "token"
    output_dir: str = "outputs/run"
    save_every_steps: int = 0
    # How many of the newest checkpoints rotation keeps (0: all). null: 2 with pretrained weights
    # (model.path: a checkpoint with optimizer state is ~16 bytes a parameter, 1.6 GB at 135M, ~100 GB
    # at 7B), all for a model built at random init (small, and the tests read every one).
    keep_last_checkpoints: Optional[int] = None
    eval_every_steps: int = 0
    # At each eval, greedy generations for the first N held-out samples of every cluster (TRL's
    # completions callback): generations.jsonl and a W&B table `eval/generations`; 0: none. Capped at
    # eval_generation_tokens new tokens; the prompt is the sample's up to its first response.
    eval_generations: int = 1
    eval_generation_tokens: int = 64
    # Stop once this many held-out evals in a row have not lowered eval/loss by more than
    # early_stopping_threshold (TRL/HF's EarlyStoppingCallback); 0: off. The run then ends as at
    # max_steps (final eval, checkpoint, export of the last model, not the best one).
    early_stopping_patience: int = 0
    early_stopping_threshold: float = 0.0
    log_every_steps: int = 1
    resume: str = "auto"
    # Keys a resume=auto may find changed (e.g. [trainer.lr]); any other difference from the run in
    # the output dir is refused (run identity, run.py). A prefix allows a section: [curriculum].
    resume_allow: List[str] = field(default_factory=list)
    # More types DeepSpeed's checkpoint files may hold (module.Name), beyond those ct_train knows;
    # any other pickled global makes a resume refuse the checkpoint (engine.check_checkpoint_files).
    checkpoint_globals: List[str] = field(default_factory=list)
    seed: int = 42
    log_samples: bool = False
    export_final: bool = True
    save_final: bool = True  # false: no checkpoint at the end (short probe runs that only report)
    dist_timeout_s: int = 600
    on_nonfinite: str = "stop"  # stop | skip (discard that step's update and go on)
    max_skipped_steps: int = 10  # with skip: stop once this many steps were skipped

    def validate(self) -> None:
        if self.max_steps != -1:
            _positive("trainer.max_steps", self.max_steps)
        if self.epochs is not None:
            if not self.epochs > 0:
                raise ConfigError(
                    f"trainer.epochs={self.epochs!r} must be > 0 (or null: trainer.max_steps sets the length)"
                )
            if self.max_steps == -1:
                raise ConfigError(
                    "trainer.epochs and trainer.max_steps=-1 both set the run's length: keep one (epochs, or "
                    "-1 for the curriculum's stages)"
                )
        if not 0 <= self.seed < 2**32:  # numpy's generators take 0 .. 2**32 - 1
            raise ConfigError(f"trainer.seed={self.seed} must be in 0 .. {2**32 - 1}")
        _positive("trainer.global_batch_size", self.global_batch_size)
        _positive("trainer.micro_batch_size", self.micro_batch_size)
        _positive("trainer.lr", self.lr, allow_zero=True)
        _positive("trainer.warmup_steps", self.warmup_steps, allow_zero=True)
        _positive("trainer.save_every_steps", self.save_every_steps, allow_zero=True)
        _positive("trainer.eval_every_steps", self.eval_every_steps, allow_zero=True)
        _positive("trainer.eval_generations", self.eval_generations, allow_zero=True)
        _positive("trainer.eval_generation_tokens", self.eval_generation_tokens)
        _positive("trainer.early_stopping_patience", self.early_stopping_patience, allow_zero=True)
        _positive("trainer.early_stopping_threshold", self.early_stopping_threshold, allow_zero=True)
        if self.early_stopping_patience and not self.eval_every_steps:
            raise ConfigError(
                f"trainer.early_stopping_patience={self.early_stopping_patience} counts held-out evals: set "
                "trainer.eval_every_steps too"
            )
        if self.keep_last_checkpoints is not None:
            _positive("trainer.keep_last_checkpoints", self.keep_last_checkpoints, allow_zero=True)
        _positive("trainer.log_every_steps", self.log_every_steps)
        _positive("trainer.grad_clip", self.grad_clip, allow_zero=True)
        _positive("trainer.dist_timeout_s", self.dist_timeout_s)
        check_choice("trainer.optimizer", self.optimizer, ("adamw", "sgd"))
        check_choice("trainer.lr_schedule", self.lr_schedule, ("cosine", "linear", "constant"))
        check_choice("trainer.loss_normalization", self.loss_normalization, ("token", "sample"))
        check_choice("trainer.on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        _positive("trainer.max_skipped_steps", self.max_skipped_steps, allow_zero=True)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"trainer.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"trainer.min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")
        if len(self.adam_betas) != 2:
            raise ConfigError(f"trainer.adam_betas must be two numbers, got {list(self.adam_betas)!r}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"trainer.global_batch_size={self.global_batch_size} is not divisible by "
                f"trainer.micro_batch_size={self.micro_batch_size}"
            )
        if not all(isinstance(k, str) and k for k in self.resume_allow):
            raise ConfigError(
                f"trainer.resume_allow={list(self.resume_allow)!r} must list config keys, e.g. [trainer.lr]"
            )
        if self.resume not in ("auto", "never") and not self.resume.strip():
            raise ConfigError("trainer.resume must be auto, never, or a checkpoint directory")

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-batches per rank per optimizer step; ConfigError when the split does not divide."""
        per_step = world_size * self.micro_batch_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"trainer.global_batch_size={self.global_batch_size} is not divisible by ranks x "
                f"trainer.micro_batch_size = {world_size} x {self.micro_batch_size} = {per_step}"
            )
        return self.global_batch_size // per_step


@dataclass
class ScoringConfig:
    """`mode=score` (`ct-train-score`): write the data with a per-sample `difficulty` (ct_train.scoring).

    field: the data's own difficulty (data.difficulty_field, else `difficulty`/`score`); length:
    response tokens; loss: the reference model's per-sample loss; ifd: loss(response | prompt) /
    loss(response alone); judge_gap: teacher_field minus student_field (TAPIR's Model Fitting
    Difficulty from judge scores in the data).
    """

    name: str = "loss"
    output: Optional[str] = None  # .jsonl or .parquet; default outputs/scores/<data>.<scorer>.jsonl
    cache_dir: str = "outputs/scores/cache"  # scores by (scorer, model fingerprint, data fingerprint)
    teacher_field: str = "teacher_score"
    student_field: str = "student_score"
    histogram: bool = True  # <output>.hist.png: the score distribution per cluster

    def validate(self) -> None:
        if self.output is not None and not self.output.endswith((".jsonl", ".parquet")):
            raise ConfigError(f"scoring.output={self.output!r} must end in .jsonl or .parquet")
        if self.teacher_field == self.student_field:
            raise ConfigError("scoring.teacher_field and scoring.student_field must differ")


@dataclass
class InteractionConfig:
    """`mode=interaction`: measure how training on one category changes the held-out loss of each
    other (ct_train.interaction). Categories are the data's clusters (with data.split_by_difficulty,
    one per cluster and level). Writes <trainer.output_dir>/interaction.json and interaction.png.

    probe: K+1 short runs from the same starting model through the trainer: the base mix, and for
    each category k the same batches plus `extra` x global_batch_size samples of k; E[j][k] = loss
    of j after probe k minus after the base run. gradient: cosine (or dot) similarity of per-category
    mean gradients over the parameters matching `params`; E[j][k] = -similarity. both: both, and how
    well they agree (Spearman's rank correlation of the off-diagonal entries).
    """

    method: str = "probe"  # probe | gradient | both
    warmup_steps: int = 0  # base-mix steps before the probes fork (0: the starting model itself)
    probe_steps: int = 20
    extra: float = 0.5  # samples of the probed category added to every batch, as a share of the batch
    base_weights: Any = None  # cluster -> weight of the base mix; None: proportional to size (IID)
    seeds: int = 1  # repeat the probes with this many seeds and average (and report the spread)
    params: List[str] = field(default_factory=lambda: ["*"])  # fnmatch patterns over parameter names
    grad_samples: int = 64  # samples per category for its mean gradient
    sketch_dim: int = 65536  # count-sketch buckets for the gradients (0: exact vectors)
    similarity: str = "cosine"  # cosine | dot

    def validate(self) -> None:
        check_choice("interaction.method", self.method, ("probe", "gradient", "both"))
        check_choice("interaction.similarity", self.similarity, ("cosine", "dot"))
        _positive("interaction.warmup_steps", self.warmup_steps, allow_zero=True)
        _positive("interaction.probe_steps", self.probe_steps)
        _positive("interaction.seeds", self.seeds)
        _positive("interaction.grad_samples", self.grad_samples)
        _positive("interaction.sketch_dim", self.sketch_dim, allow_zero=True)
        if self.extra <= 0:
            raise ConfigError(f"interaction.extra={self.extra!r} must be > 0")
        check_cluster_weights("interaction.base_weights", self.base_weights)
        if not self.params or not all(isinstance(p, str) and p for p in self.params):
            raise ConfigError(f"interaction.params={list(self.params)!r} must list parameter-name patterns")


@dataclass
class BenchConfig:
    """`ct-train-bench` (= `ct-train mode=bench`): every strategy x `seeds` at the same budget (the
    run's trainer.max_steps x global_batch_size samples), through the trainer; a report of which wins
    (ct_train.bench). Writes report.md, results.csv and plots into trainer.output_dir."""

    strategies: List[str] = field(default_factory=list)  # empty: every registered strategy
    seeds: int = 3  # trainer.seed, trainer.seed + 1, ...
    # strategy -> extra Hydra overrides of its runs, e.g. {it2acl: ["curriculum.signal=loss"]}; `Any`,
    # not Dict: a typed dict node in struct mode would reject `bench.overrides={it2acl: [...]}`.
    overrides: Any = None
    quick: bool = False  # a reduced grid that checks the pipeline in ~2 minutes on 2 CPU cores (--quick)

    def validate(self) -> None:
        _positive("bench.seeds", self.seeds)
        if self.overrides is not None and not isinstance(self.overrides, dict):
            raise ConfigError(f"bench.overrides={self.overrides!r} must map strategy names to lists of overrides")
        for name, extra in (self.overrides or {}).items():
            if not isinstance(extra, list) or not all(isinstance(o, str) and "=" in o for o in extra):
                raise ConfigError(
                    f"bench.overrides.{name}={extra!r} must be a list of Hydra overrides, e.g. "
                    '["curriculum.signal=loss"] (quoted: they contain "=")'
                )


@dataclass
class LoggerConfig:
    """metrics.jsonl is always written; `name=wandb` adds W&B on rank 0, `name=tensorboard` TensorBoard's
    event files (<output_dir>/tensorboard)."""

    name: str = "none"
    mode: str = "offline"
    project: str = "ct_train"
    entity: Optional[str] = None
    run_name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    progress_bar: bool = True

    def validate(self) -> None:
        check_choice("logger.name", self.name, ("none", "wandb", "tensorboard"))
        check_choice("logger.mode", self.mode, ("online", "offline", "disabled"))


@dataclass
class Config:
    """The whole run. `mode` selects what the CLI does: train, score (write a scored dataset), or
    interaction (measure the category interaction matrix)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    interaction: InteractionConfig = field(default_factory=InteractionConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    mode: str = "train"  # train | score (ct-train-score) | interaction (ct_train.interaction) | bench (ct-train-bench)

    def keep_last_checkpoints(self) -> int:
        """trainer.keep_last_checkpoints, its null resolved by whether the weights are pretrained."""
        if self.trainer.keep_last_checkpoints is not None:
            return self.trainer.keep_last_checkpoints
        return PRETRAINED_KEEP_LAST if self.model.path else 0

    def validate(self) -> None:
        """Every section's checks; raises ConfigError naming the first bad key."""
        check_choice("mode", self.mode, ("train", "score", "interaction", "bench"))
        if self.model.lora.load_in_4bit and self.deepspeed.zero_stage == 3:
            raise ConfigError(
                "model.lora.load_in_4bit=true needs deepspeed=zero2: ZeRO-3 would partition the 4-bit base "
                "weights, which bitsandbytes keeps whole (the adapters are small; ZeRO-2 shards their optimizer)"
            )
        if self.model.compile and self.deepspeed.zero_stage == 3 and not self.deepspeed.gather_per_block:
            raise ConfigError(
                "model.compile=true under ZeRO-3 needs deepspeed.gather_per_block=true: otherwise ZeRO's "
                "per-layer gather hooks run inside every compiled block and break its graph"
            )
        if self.trainer.max_steps == -1 and self.mode == "train" and not self.curriculum.needs().sets_length:
            raise ConfigError(
                "trainer.max_steps=-1 needs a curriculum that sets the run's length (curriculum=phased with "
                "curriculum.phase_steps or curriculum.phase_epochs, or curriculum=tapir with steps in every round)"
            )
        for section in (
            self.model,
            self.data,
            self.data.skills,
            self.curriculum,
            self.deepspeed,
            self.trainer,
            self.logger,
            self.scoring,
            self.interaction,
            self.bench,
        ):
            section.validate()

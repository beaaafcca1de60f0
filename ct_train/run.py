"""What a training run is made of, built once by `setup` and used by the trainer's loop.

`Run` holds the parts (engine, data, curriculum, samplers, logger, state); `StageSchedule` knows
where a staged curriculum's stages start and end and builds a stage's pools when it starts;
`Checkpointer` decides what to resume from, checks it, saves and rotates; the reliability drills
reach the step and the save through one hook (`drills.FaultDrills`). The trainer (`trainer.py`) reads as the
algorithm because everything here is set up before its loop starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import yaml

from ct_train import checkpoint, io
from ct_train import distributed as dist
from ct_train.config import Config, Needs
from ct_train.curriculum import DataIndex, build_curriculum
from ct_train.curriculum.base import Curriculum, Staged, stage_at
from ct_train.data import PreparedData, TokenizedSplit, group_by_length, load_tokenizer, prepare_data
from ct_train.data.prepare import data_fingerprint
from ct_train.data.prompt_swap import with_twins
from ct_train.drills import FaultDrills
from ct_train.engine import Engine, check_checkpoint_files, to_universal
from ct_train.errors import ConfigError, DataError
from ct_train.evaluation import evaluate, generations, sample_losses
from ct_train.logging import RunLogger, check_wandb_login
from ct_train.modeling import check_gpu_options, max_positions
from ct_train.sampler import CurriculumSampler
from ct_train.signals import ClusterLossAccumulator

PROBE_SEED = 7919  # offsets the SPG probe stream's seed from the training stream's
INITIAL_LOSS_FILE = "initial_loss_difficulty.npy"
STAGE_SCORES_DIR = "stage_scores"  # per-stage scores of the model at the stage's start (TAPIR rounds)


@dataclass
class TrainState:
    """What the trainer itself must carry across a resume (the engine saves the rest)."""

    step: int = 0
    tokens: int = 0
    initial_eval: Dict[str, float] = field(default_factory=dict)
    last_eval: Dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0  # steps whose update was discarded for a non-finite loss (on_nonfinite=skip)
    best_eval_loss: Optional[float] = None  # trainer.early_stopping_patience: the lowest eval/loss so far
    evals_without_improvement: int = 0
    stopped_early: bool = False  # the run ended by early stopping (a resume does not train on)


# Keys that do not change what a run computes: where it writes, how often it logs or saves, how it
# reacts to faults, and how long it runs (raising trainer.max_steps continues the same run).
OPERATIONAL_KEYS = (
    "mode", "logger", "scoring", "interaction", "bench", "data.num_proc",
    "trainer.output_dir", "trainer.resume", "trainer.resume_allow", "trainer.max_steps", "trainer.epochs",
    "trainer.early_stopping_patience", "trainer.early_stopping_threshold",
    "trainer.save_every_steps", "trainer.keep_last_checkpoints", "trainer.eval_every_steps",
    "trainer.eval_generations", "trainer.eval_generation_tokens",
    "trainer.log_every_steps", "trainer.log_samples", "trainer.export_final", "trainer.save_final",
    "trainer.dist_timeout_s", "trainer.on_nonfinite", "trainer.max_skipped_steps", "trainer.checkpoint_globals",
    "deepspeed.gather_per_block",
    # Layout only: packed rows hold the same samples in the same micro-batches as padded ones and give
    # the same per-sample losses and gradients up to float order (tests/test_packing.py), so a run
    # may resume with packing switched either way. (Its default went from off to on: runs made
    # before then keep their output directory and resume.)
    "data.packing",
    # Compiled blocks compute the same as eager ones up to float order (tests/distributed/test_compile_run.py).
    "model.compile",
)  # fmt: skip


# Keys added to the schema after runs were first identified (issue 20). At their default they
# compute what the older code did: left out of the default output dir's hash (compose.run_hash), so
# the same command keeps finding, and resuming, the directory an earlier version made. (A resume
# check leaves out any key a checkpoint lacks while it is at its default: identity_differences.)
NEWER_KEYS = (
    "data.group_by_length",
    "model.lora",
    "data.columns",
    "curriculum.lp_min_rate",
    "curriculum.forget",
    "curriculum.reward_noise_floor",
    "model.liger_kernel",
)
# Keys added after runs were first identified whose default has since moved: a checkpoint that lacks
# one ran with this value, not with today's default (curriculum.probe_backoff: 1 until 2026-12-05;
# curriculum.learnability_every_steps: 0, no prompt-information weighting, until 2026-12-06).
LEGACY_VALUES: Dict[str, Any] = {"curriculum.probe_backoff": 1.0, "curriculum.learnability_every_steps": 0}


def schema_defaults() -> Dict[str, Any]:
    """Every key of the typed schema at its default, flattened (`model.lora.r`: 16, ...)."""
    return _flatten(dataclasses.asdict(Config()))


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _covered(key: str, names) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def run_identity(resolved: Dict[str, Any], data: PreparedData) -> Dict[str, Any]:
    """What makes a run this run (DESIGN.md, "Run identity and resume"): its training-relevant config
    (flattened, resolved) and the fingerprint of its tokenised data (train, eval and probe splits)."""
    config = {k: v for k, v in _flatten(resolved).items() if not _covered(k, OPERATIONAL_KEYS)}
    splits = [data.train, data.eval, data.probe]
    fingerprint = "-".join(data_fingerprint(s.dataset) if s is not None else "none" for s in splits)
    return {"config": config, "data": fingerprint}


def steps_for_epochs(epochs: float, n_train: int, global_batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over `n_train` samples (the last, partial batch counts)."""
    return max(1, math.ceil(epochs * n_train / global_batch_size - 1e-9))


def check_same_data_on_ranks(fingerprint: str) -> None:
    """Every rank reads the data itself: one gather of the tokenised fingerprints, and a refusal naming
    the ranks that differ from rank 0 (a file written to while the job started, node-local copies)."""
    prints = dist.all_gather_object(fingerprint)
    differ = [r for r, f in enumerate(prints) if f != prints[0]]
    if differ:
        raise DataError(
            f"rank(s) {differ} of {len(prints)} tokenised different data from rank 0 (data fingerprint "
            f"{prints[differ[0]][:12]}... vs {prints[0][:12]}...): every rank reads data.path itself, so the "
            "files changed while the job started or the nodes' copies differ; give every rank the same files"
        )


def identity_differences(saved: Dict[str, Any], current: Dict[str, Any], allowed=()) -> List[str]:
    """What differs between a checkpoint's run and this one, as `key old -> new` (or "the data
    changed"), leaving out the keys in `allowed` (trainer.resume_allow)."""
    old, new = saved.get("config", {}), current["config"]
    # A key added to the schema after the checkpoint was written, left at its default, computes what
    # the older code did (data.group_by_length, model.lora.*): no difference. A key that has become
    # operational since (data.packing) is still in older checkpoints' identity: not a difference.
    # A key in LEGACY_VALUES ran at its legacy value there.
    defaults = schema_defaults()
    old = {**{k: v for k, v in LEGACY_VALUES.items() if k in new}, **old}
    keys = sorted(
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k)
        and not _covered(k, allowed)
        and not _covered(k, OPERATIONAL_KEYS)
        and not (k not in old and k in defaults and new[k] == defaults[k])
    )
    out = [f"{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys]
    if saved.get("data") != current["data"] and not _covered("data", allowed):
        out.append("the data changed (its tokenised fingerprint differs)")
    return out


class Checkpointer:
    """Which checkpoint to resume from, loading it, saving and rotating (DeepSpeed's files through
    the engine, the trainer's state as JSON: checkpoint.py)."""

    def __init__(self, cfg: Config, output_dir: str) -> None:
        self.output_dir, self.cfg = output_dir, cfg
        self.identity: Optional[Dict[str, Any]] = None
        self.last_saved = -1  # the step of this attempt's last save
        self.warned_foreign: Set[str] = set()  # step directories rotation left alone, named once
        # Checked before the model loads; a damaged newest checkpoint is set aside (rank 0 reads the files).
        self.resume_from, self.notes = dist.on_main(lambda: checkpoint.pick_resume(cfg.trainer.resume, output_dir))
        own = os.path.abspath(checkpoint.checkpoints_dir(output_dir))
        from_own = self.resume_from and os.path.abspath(self.resume_from[0]) == own
        self.resumed_tag = self.resume_from[1] if from_own else None
        # A checkpoint written by another number of ranks is converted to DeepSpeed's universal format
        # (ZeRO partitions are per rank); the sampler and curriculum states do not depend on the ranks.
        self.weights_dir = None
        if self.resume_from is not None and checkpoint.saved_world_size(*self.resume_from) not in (
            dist.world_size(),
            0,
        ):
            key = dist.on_main(lambda: checkpoint.content_key(*self.resume_from), "hash the checkpoint")
            self.weights_dir = to_universal(*self.resume_from, output_dir, key)

    def check_identity(self, identity: Dict[str, Any]) -> None:
        """Before the model loads: resume=auto continues only the same run (any difference but the
        allowed keys is refused in one line); a checkpoint named explicitly may start a different
        run from its weights (its differences are logged)."""
        self.identity = identity
        if self.resume_from is None:
            return
        with open(os.path.join(*self.resume_from, checkpoint.STATE_FILE)) as f:
            saved = json.load(f).get("identity")
        if saved is None:
            self.notes.append(f"warning: {self.resume_from[1]} records no run identity (written before it existed)")
            return
        differs = identity_differences(saved, identity, self.cfg.trainer.resume_allow)
        if not differs:
            return
        shown = "; ".join(differs[:6]) + (f"; and {len(differs) - 6} more" if len(differs) > 6 else "")
        if self.cfg.trainer.resume != "auto":
            self.notes.append(f"warning: {self.resume_from[1]} was trained by a different run: {shown}")
            return
        raise ConfigError(
            f"trainer.output_dir={self.output_dir} holds another run ({self.resume_from[1]}): {shown}; use another "
            "trainer.output_dir, or allow the change with trainer.resume_allow=[KEY,...]"
        )

    def load_weights(self, engine: Engine, clusters: List[str]) -> Optional[Dict[str, Any]]:
        """Restore the engine from the checkpoint to resume (if any); returns its saved state."""
        if self.resume_from is None:
            return None
        if self.resumed_tag is not None:  # an older checkpoint of this dir: what came after it is set aside
            moved = dist.on_main(lambda: checkpoint.set_aside_newer(self.resume_from[0], self.resumed_tag))
            self.notes += [f"warning: {tag} is newer than the checkpoint resumed from: moved to {tag}.abandoned"
                           for tag in moved]  # fmt: skip
        # DeepSpeed unpickles its files with weights_only=False: check they hold no foreign code first.
        check_checkpoint_files(os.path.join(*self.resume_from), self.cfg.trainer.checkpoint_globals)
        saved = checkpoint.load(engine, *self.resume_from, weights_dir=self.weights_dir)
        if saved["clusters"] != clusters:
            raise ConfigError(
                f"cannot resume from {self.resume_from[1]}: its clusters {saved['clusters']} differ from "
                f"the data's {clusters} (did data.* change?)"
            )
        return saved

    def restore(self, saved: Dict[str, Any], sampler, curriculum, probe_sampler) -> None:
        """The sampler's and curriculum's states, which are positions in the checkpoint's data: with
        other data (a resume from a named checkpoint) they start afresh over this data instead."""
        before = (saved.get("identity") or {}).get("data")
        if before is not None and self.identity is not None and before != self.identity["data"]:
            self.notes.append(
                f"warning: the data differ from {self.resume_from[1]}'s: the sampler and curriculum start afresh "
                "over this data (the weights, optimizer and step are the checkpoint's)"
            )
            return
        try:
            sampler.load_state_dict(saved["sampler"])
            curriculum.load_state_dict(saved["curriculum"])
            if probe_sampler is not None:
                probe_sampler.load_state_dict(saved["probe_sampler"])
        except (ValueError, KeyError) as e:
            raise ConfigError(f"cannot resume from {self.resume_from[1]}: {e} (did curriculum.* change?)") from None

    def resumed_line(self, step: int, saved: Dict[str, Any]) -> str:
        where = os.path.join(*self.resume_from)
        via = (
            f" (written by {saved['world_size']} ranks; loaded through {self.weights_dir})" if self.weights_dir else ""
        )
        return f"resumed from {where} at step {step}{via}"

    def save(self, run: Run) -> None:
        """A complete checkpoint of the run at its current step (a collective), then rotation. The
        first save of an attempt prints the checkpoint's size (and warns when the disk is too small)."""
        first, self.last_saved = self.last_saved < 0, run.state.step
        checkpoint.save(
            run.engine,
            self.output_dir,
            run.state.step,
            {
                "clusters": run.data.clusters,
                "sampler": run.sampler.state_dict(),
                "probe_sampler": run.probe_sampler.state_dict() if run.probe_sampler else None,
                "curriculum": run.curriculum.state_dict(),
                "trainer": run.state.__dict__,
                "world_size": dist.world_size(),
                "identity": self.identity,
            },
            run.drills,
        )
        if not dist.is_main():
            return
        keep = self.cfg.keep_last_checkpoints()
        if first:  # how big they are, and whether the disk holds those to come
            step, every, end = run.state.step, self.cfg.trainer.save_every_steps, run.schedule.max_steps
            periodic = len(range(step - step % every + every, end, every)) if every else 0
            saves_left = periodic + (1 if self.cfg.trainer.save_final and step < end else 0)
            ckpt_dir = checkpoint.checkpoints_dir(self.output_dir)
            for line in checkpoint.size_note(ckpt_dir, checkpoint.tag_for(step), keep, saves_left):
                run.log.write(line)
        stage_tags = [checkpoint.tag_for(s.end) for s in run.schedule.stages]  # a stage's last is kept
        rotation = checkpoint.rotate(self.output_dir, keep, [self.resumed_tag, *stage_tags])
        for tag in sorted(set(rotation.foreign) - self.warned_foreign):  # once per directory and run
            self.warned_foreign.add(tag)
            run.log.write(
                f"warning: {checkpoint.checkpoints_dir(self.output_dir)}/{tag} holds files no save writes and "
                "no complete checkpoint; rotation leaves it alone"
            )

    def has(self, step: int) -> bool:
        tag_dir = os.path.join(checkpoint.checkpoints_dir(self.output_dir), checkpoint.tag_for(step))
        return os.path.exists(os.path.join(tag_dir, checkpoint.STATE_FILE))

    def describe_latest(self) -> str:
        """Which checkpoint a restart resumes from, for the message that stops a run."""
        return checkpoint.describe_latest(self.output_dir)


class StageSchedule:
    """The stages of a staged curriculum (phased, tapir, beyond_iid; none for the others): the run's
    length when the curriculum sets it, where the LR re-warms, which stage a step is in, and each
    stage's start, where a curriculum whose pools depend on the model (TAPIR) builds them."""

    def __init__(
        self, curriculum: Curriculum, max_steps: int, score: Callable[[np.ndarray], np.ndarray], dirs: List[str]
    ) -> None:
        """`score(indices)`: the current model's per-sample losses (a collective); `dirs`: where stage
        scores are cached, the output dir first (then the resumed checkpoint's run)."""
        self.curriculum = curriculum if isinstance(curriculum, Staged) else None
        self.score, self.dirs = score, dirs
        self.stages = list(self.curriculum.stages) if self.curriculum is not None else []
        # With trainer.max_steps=-1 the stages fix the run's length.
        self.max_steps = self.stages[-1].end if self.stages and max_steps == -1 else max_steps
        self.restarts = [s.start for s in self.stages if s.rewarm]
        self.ends = {s.end: k for k, s in enumerate(self.stages)}
        self.current = -1
        self.note: Optional[str] = None  # a warning from the last stage start, for the log

    def at(self, step: int) -> int:
        return stage_at(self.stages, step) if self.stages else 0

    def name(self, k: int) -> str:
        return self.stages[k].name

    def ending(self, step: int) -> Optional[int]:
        """The stage that ends after `step` steps, unless the run ends there (it evaluates anyway)."""
        return self.ends.get(step) if step < self.max_steps else None

    def begin(self, k: int, step: int) -> Optional[dict]:
        """Start stage k at `step`: a curriculum that builds the stage's pools from the current model
        scores its candidates (`self.score`), cached under the output dir so a resumed run reads the
        stage's starting model's scores back (its own model is no longer that one). Returns what
        the curriculum says about the stage, None when its pools were fixed from the start."""
        self.current = k
        idx = self.curriculum.stage_candidates(k)
        scores = None
        if idx is not None:
            name = f"{STAGE_SCORES_DIR}/{self.stages[k].name}.npy"
            cached = [os.path.join(d, name) for d in self.dirs if os.path.exists(os.path.join(d, name))]
            resumed_inside = step > self.stages[k].start
            if resumed_inside and cached:
                scores = np.load(cached[0])
            if scores is None or len(scores) != len(idx):
                if resumed_inside:
                    self.note = f"warning: no cached scores for {self.stages[k].name}; scored with the resumed model"
                scores = self.score(idx)
                dist.on_main(lambda: io.save_npy(os.path.join(self.dirs[0], name), scores))
        return self.curriculum.begin_stage(k, scores)

    def rewarm_warning(self, warmup_steps: int, warmup_ratio: float) -> Optional[str]:
        shortest = min((s.end - s.start for s in self.stages if s.rewarm), default=None)
        if shortest is None or warmup_ratio or warmup_steps < shortest:
            return None
        return (
            f"warning: trainer.warmup_steps={warmup_steps} is not shorter than a stage ({shortest} steps): "
            "the LR re-warms in every stage and never leaves warmup there; set trainer.warmup_ratio instead"
        )


@dataclass
class Run:
    """Everything the loop touches, built by `setup`."""

    cfg: Config
    output_dir: str
    tokenizer: Any
    data: PreparedData
    engine: Engine
    needs: Needs
    curriculum: Curriculum
    schedule: StageSchedule
    sampler: CurriculumSampler
    probe_sampler: Optional[CurriculumSampler]  # SPG's fresh batches
    checkpointer: Checkpointer
    log: RunLogger
    state: TrainState
    loss_weights: Optional[np.ndarray]  # (C,) per-cluster weights of the losses in the objective
    probe_every: int  # steps between held-out probe passes (signal=lp), 0 for none
    accumulators: Dict[str, ClusterLossAccumulator]
    drills: FaultDrills
    # the probe followed by its prompt-swapped twins, and the probe indices they pair with
    # (`Needs.probe_twin_every_steps`)
    probe_twins: Optional[Tuple[TokenizedSplit, np.ndarray]] = None
    stop_signal: int = 0  # a stop signal some rank received, agreed on at the last step (0: none)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def packing(self) -> bool:
        """Training micro-batches are packed rows (data.packing), not padded ones."""
        return self.cfg.data.packing

    def micro_batches(self, global_batch: np.ndarray) -> List[np.ndarray]:
        """This rank's micro-batches of a global batch (the sampler's slice), grouped by length when
        data.group_by_length is set."""
        micro = dist.rank_micro_batches(global_batch, dist.rank(), dist.world_size(), self.cfg.trainer.micro_batch_size)
        return group_by_length(micro, self.data.train.lengths) if self.cfg.data.group_by_length else micro

    def evaluate(self) -> Dict[str, float]:
        """Held-out metrics (returned, for the caller to log), and the eval's greedy generations
        (written here: generations.jsonl, W&B's eval/generations table)."""
        if self.data.eval is None:
            return {}
        trainer = self.cfg.trainer
        metrics = evaluate(
            self.engine,
            self.data.eval,
            self.data.clusters,
            trainer.micro_batch_size,
            self.pad_id,
            self.cfg.data.exact_match,
        )
        if trainer.eval_generations:
            rows = generations(
                self.engine,
                self.data.eval,
                self.data.clusters,
                trainer.eval_generations,
                trainer.eval_generation_tokens,
                self.tokenizer,
            )
            self.log.log_generations(self.state.step, rows)
        return metrics


def prepare_output_dir(cfg: Config, resolved: Dict[str, Any]) -> str:
    """Create and check the output dir on rank 0 before anything heavy; every rank gets the path."""

    def check() -> str:
        global _LOCK
        out = io.prepare_output_dir(cfg.trainer.output_dir)
        lock = io.DirLock(out)  # a second job on this directory is refused here, naming the holder
        if cfg.trainer.resume == "never" and checkpoint.complete_tags(checkpoint.checkpoints_dir(out)):
            lock.release()
            raise ConfigError(
                f"trainer.output_dir={out} already holds checkpoints and trainer.resume=never; "
                "use trainer.resume=auto to continue, or another trainer.output_dir"
            )
        _LOCK = lock
        return out

    return dist.on_main(check)


_LOCK: Optional[io.DirLock] = None  # rank 0's lock on the output dir of the run in progress


def release_output_dir() -> None:
    """End of a run (also a failed one): the next job may use the directory."""
    global _LOCK
    if _LOCK is not None:
        _LOCK.release()
        _LOCK = None


def write_config(output_dir: str, resolved: Dict[str, Any]) -> None:
    """config.yaml of this attempt, written once the resume checks passed (rank 0). An earlier
    attempt's different config.yaml is kept as config.<k>.yaml: nothing of an earlier run is lost."""
    path = os.path.join(output_dir, "config.yaml")
    text = yaml.safe_dump(resolved, sort_keys=False)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
        k = 1
        while os.path.exists(os.path.join(output_dir, f"config.{k}.yaml")):
            k += 1
        os.replace(path, os.path.join(output_dir, f"config.{k}.yaml"))
    io.write_atomic(path, text)


def needs_model_difficulty(needs: Needs, split) -> bool:
    """Whether the curriculum's difficulty is the initial model's loss (initial_loss, or auto with
    samples lacking one): then the curriculum can only be built once the model is."""
    return needs.difficulty == "initial_loss" or (needs.difficulty == "auto" and bool(np.isnan(split.difficulty).any()))


def check_difficulty(cfg: Config, needs: Needs, split) -> None:
    """Before the model loads: a curriculum that needs the data's difficulty gets one for every sample."""
    missing = np.flatnonzero(np.isnan(split.difficulty))
    if needs.difficulty == "data" and len(missing):
        key = needs.difficulty_key
        raise DataError(
            f"curriculum={cfg.curriculum.name} needs a difficulty for every training sample ({key}=data) but "
            f"{len(missing)} of {len(split)} have none, first {split.describe(missing[0])}; set "
            f"data.difficulty_field, score the data with ct-train-score, or use {key}=initial_loss"
        )


def initial_loss_difficulty(
    cfg: Config, engine: Engine, split, pad_id: int, output_dir: str, identity: Dict[str, Any]
) -> np.ndarray:
    """The initial model's per-sample loss as the difficulty (`needs_model_difficulty`).

    Cached in the output dir: a resumed run must see the bands of the first start, not the loss of
    the resumed model. The cache is keyed by what the scores depend on (the tokenised data, the
    model's config, the seed of its initial weights), so another model or data recomputes them."""
    config = identity["config"]
    key = json.dumps(
        [identity["data"], {k: v for k, v in config.items() if k.startswith("model.")}, config.get("trainer.seed")],
        sort_keys=True,
        default=str,
    )
    path = os.path.join(output_dir, INITIAL_LOSS_FILE)
    if os.path.exists(path):
        cached = np.load(path)
        saved_key = open(path + ".key").read() if os.path.exists(path + ".key") else None
        if len(cached) == len(split) and saved_key in (key, None):  # (None: a cache from before keys)
            return cached
    losses = sample_losses(engine, split, cfg.trainer.micro_batch_size, pad_id)

    def write() -> None:
        io.save_npy(path, losses)
        io.write_atomic(path + ".key", key)

    dist.on_main(write)
    return losses


def _build_curriculum(cfg: Config, needs: Needs, data: PreparedData, difficulty: np.ndarray) -> tuple:
    """The curriculum over the training split, and the warnings it raised (logged once the log is open)."""
    split, trainer = data.train, cfg.trainer
    index = DataIndex(data.clusters, split.cluster_ids, difficulty, split.part_ids, split.parts)
    inputs = io.read_inputs(needs.inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curriculum = build_curriculum(
            cfg.curriculum,
            index,
            seed=trainer.seed,
            total_steps=trainer.max_steps,
            global_batch_size=trainer.global_batch_size,
            inputs=inputs,
        )
    return curriculum, [str(w.message) for w in caught]


def data_warnings(cfg: Config, needs: Needs, data: PreparedData, positions: Optional[int]) -> List[str]:
    """What in this data and model setting a user would want to know before a long run (`positions`:
    the model's max_position_embeddings)."""
    out = []
    note = data.skipped_note()
    if note:
        out.append(note)
    if not data.eval or len(data.eval) == 0:
        out.append("no held-out samples (data.eval_fraction / data.eval_path give none): eval/* metrics are not logged")
    counts = np.bincount(data.train.cluster_ids, minlength=len(data.clusters))
    single = [c for c, n in zip(data.clusters, counts) if n == 1]
    if single:
        shown = ", ".join(single[:5]) + (", ..." if len(single) > 5 else "")
        out.append(f"{len(single)} of {len(data.clusters)} clusters have one training sample ({shown})")
    if needs.chooses_clusters and int((counts > 0).sum()) == 1:
        out.append(
            f"curriculum={cfg.curriculum.name} chooses among clusters, but the data has one ({data.clusters[0]}): "
            "it trains like iid; name clusters with data.cluster_field or data.sources"
        )
    # Many passes over small data overfit a pretrained model (TRL's default is 3 epochs): say how many.
    trainer, n_train = cfg.trainer, len(data.train)
    passes = trainer.max_steps * trainer.global_batch_size / n_train if n_train and trainer.max_steps > 0 else 0.0
    if passes > 3:
        out.append(
            f"trainer.max_steps={trainer.max_steps} x global batch {trainer.global_batch_size} = "
            f"{trainer.max_steps * trainer.global_batch_size:,} samples over {n_train:,} training samples: "
            f"about {passes:.0f} passes over the data (lower trainer.max_steps to train fewer)"
        )
    # (Only for loaded weights: a model trained from random init learns every position it is given.)
    if cfg.model.path and positions is not None and cfg.data.max_seq_len > positions:
        out.append(
            f"data.max_seq_len={cfg.data.max_seq_len} exceeds the model's max_position_embeddings={positions}: "
            "positions past it were never trained (set data.max_seq_len <= it)"
        )
    return out


def load_run_data(cfg: Config, tokenizer: Any, needs: Needs) -> PreparedData:
    """The tokenised splits (rank 0 first, then the others from its caches); with trainer.epochs, the
    run's length in passes over them, now that their size is known."""
    trainer = cfg.trainer

    def prepare() -> PreparedData:
        FaultDrills(dist.rank()).slow_start()
        return prepare_data(cfg.data, tokenizer, parts=needs.data_parts, probe_per_cluster=needs.probe_per_cluster)

    data = dist.main_first(prepare, "prepare the data")
    if trainer.epochs is not None:
        trainer.max_steps = steps_for_epochs(trainer.epochs, len(data.train), trainer.global_batch_size)
        dist.print0(
            f"ct_train: trainer.epochs={trainer.epochs:g} x {len(data.train):,} training samples / global batch "
            f"{trainer.global_batch_size} = {trainer.max_steps} steps"
        )
    return data


def setup(cfg: Config, resolved: Dict[str, Any]) -> Run:
    """Build the run, in the order the parts depend on each other (call on every rank): output dir ->
    data -> engine -> curriculum -> stages -> resumed state -> samplers -> log."""
    trainer = cfg.trainer
    dist.init(trainer.dist_timeout_s)
    dist.install_stop_handlers()  # from here a stop signal ends the start at once; in training it saves
    grad_accum_steps = trainer.grad_accum_steps(dist.world_size())  # fails here, before any data work
    check_gpu_options(cfg.model)  # (QLoRA, Liger: CUDA and their packages)
    output_dir = prepare_output_dir(cfg, resolved)
    needs = cfg.curriculum.needs()
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.path)
    data = load_run_data(cfg, tokenizer, needs)
    checkpointer = Checkpointer(cfg, output_dir)
    identity = run_identity(resolved, data)
    check_same_data_on_ranks(identity["data"])
    checkpointer.check_identity(identity)  # before the model loads
    dist.on_main(lambda: check_wandb_login(cfg.logger))
    dist.on_main(lambda: write_config(output_dir, resolved))
    # The curriculum sees cluster ids and difficulty only. Built before the model when it can be, so a
    # bad curriculum setting (an unknown cluster name, a missing difficulty) fails in seconds, not after
    # an 8B model loads; a difficulty it needs and the data lacks is the initial model's loss
    # (computed before a checkpoint is loaded, and cached).
    check_difficulty(cfg, needs, data.train)
    warned = data_warnings(cfg, needs, data, max_positions(cfg.model))
    late = needs_model_difficulty(needs, data.train)
    if not late:
        curriculum, curriculum_warnings = _build_curriculum(cfg, needs, data, data.train.difficulty)
    engine = Engine(cfg, tokenizer, load_universal=checkpointer.weights_dir is not None)
    if late:
        difficulty = initial_loss_difficulty(
            cfg, engine, data.train, tokenizer.pad_token_id, output_dir, checkpointer.identity
        )
        curriculum, curriculum_warnings = _build_curriculum(cfg, needs, data, difficulty)
    schedule = StageSchedule(
        curriculum,
        trainer.max_steps,
        score=lambda idx: sample_losses(engine, data.train, trainer.micro_batch_size, tokenizer.pad_token_id, idx),
        dirs=[output_dir] + ([os.path.dirname(checkpointer.resume_from[0])] if checkpointer.resume_from else []),
    )
    saved = checkpointer.load_weights(engine, data.clusters)
    # After the load: the schedule (it restarts where a stage re-warms) and trainer.lr are this
    # attempt's, not the checkpoint's (an lr change the user allowed takes effect).
    engine.set_lr_schedule(schedule.max_steps, schedule.restarts)
    state = TrainState(**saved["trainer"]) if saved else TrainState()
    # A stage whose pools depend on the model (a TAPIR round) is built before the samplers draw from it.
    stage_info = schedule.begin(schedule.at(state.step), state.step) if schedule.curriculum is not None else None
    pools = curriculum.pools()
    sampler = CurriculumSampler(pools, trainer.global_batch_size, trainer.seed)
    # SPG's fresh batches come from their own stream, so the training stream is the same as with PG.
    probe_sampler = None
    if needs.signal == "spg":
        probe_sampler = CurriculumSampler(pools, trainer.global_batch_size, trainer.seed + PROBE_SEED)
    if saved is not None:
        checkpointer.restore(saved, sampler, curriculum, probe_sampler)
    weights = needs.loss_weights
    run = Run(
        cfg=cfg,
        output_dir=output_dir,
        tokenizer=tokenizer,
        data=data,
        engine=engine,
        needs=needs,
        curriculum=curriculum,
        schedule=schedule,
        sampler=sampler,
        probe_sampler=probe_sampler,
        checkpointer=checkpointer,
        log=RunLogger(cfg.logger, output_dir, resolved, schedule.max_steps, state.step, trainer.log_samples),
        state=state,
        loss_weights=None if weights is None else np.array([float(weights.get(c, 1.0)) for c in data.clusters]),
        probe_every=needs.probe_every_steps if data.probe is not None else 0,
        accumulators={n: ClusterLossAccumulator(data.clusters, engine.device) for n in ("train", "probe", "after")},
        drills=FaultDrills(dist.rank()),
        probe_twins=with_twins(data.probe) if data.probe is not None and needs.probe_twin_every_steps else None,
    )
    _log_start(run, grad_accum_steps, warned + curriculum_warnings, stage_info, saved)
    return run


def _log_start(run: Run, grad_accum_steps: int, caught: List[str], stage_info: Optional[dict], saved) -> None:
    trainer, data, log, world = run.cfg.trainer, run.data, run.log, dist.world_size()
    lora = f" ({run.engine.num_parameters(trainable=True):,} trainable (LoRA))" if run.cfg.model.lora.enabled else ""
    log.write(
        f"ct_train: {world} rank(s), {run.engine.num_parameters():,} parameters{lora}, {run.engine.describe_zero()}, "
        f"{len(data.train):,} train / {len(data.eval) if data.eval else 0:,} eval samples in "
        f"{len(data.clusters)} clusters, global batch {trainer.global_batch_size} = {world} ranks x "
        f"{trainer.micro_batch_size} x {grad_accum_steps} accumulation steps, lr {trainer.lr:g}, "
        f"template {data.template}; data counts: "
        f"{ {k: v for k, v in data.stats.items() if v} }"
    )
    for message in caught:
        log.write(f"warning: {message}")
    for note in run.checkpointer.notes:
        log.write(note)
    if run.curriculum.describe():
        log.write(run.curriculum.describe())
    rewarm = run.schedule.rewarm_warning(trainer.warmup_steps, trainer.warmup_ratio)
    if rewarm:
        log.write(rewarm)
    if run.schedule.note:
        log.write(run.schedule.note)
    if stage_info:
        log.write(f"{run.schedule.name(run.schedule.at(run.state.step))}: {stage_info}")
    if saved is not None:
        log.write(run.checkpointer.resumed_line(run.state.step, saved))

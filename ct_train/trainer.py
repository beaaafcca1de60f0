"""The training loop, top to bottom: plan -> batches -> forward/backward/step -> signal -> observe ->
log -> checkpoint.

Everything a step needs that depends on the global batch (its token count, the loss denominator) is
computed from the sampler's global batch on every rank, so the only collective per step beyond
ZeRO's own is the (2 x C) per-cluster signal all-reduce.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np
import torch
import yaml

from ct_train import checkpoint
from ct_train import distributed as dist
from ct_train.config import Config
from ct_train.curriculum import DataIndex, build_curriculum
from ct_train.curriculum.base import stage_at
from ct_train.data import collate, load_tokenizer, prepare_data
from ct_train.engine import Engine
from ct_train.errors import ConfigError, DataError, TrainingStopped
from ct_train.evaluation import evaluate, probe_loss, sample_losses
from ct_train.logging import RunLogger
from ct_train.losses import objective, objective_weights
from ct_train.sampler import CurriculumSampler
from ct_train.signals import ClusterLossAccumulator, cluster_loss_metrics, measure, prediction_gain, reduce_together

PROBE_SEED = 7919  # offsets the SPG probe stream's seed from the training stream's
# The held-out probe (signal=lp) is scored in no-grad micro-batches this many times the training
# one: no activations are kept, and with a small model each forward's ZeRO-3 gathers cost more than
# its arithmetic (1x: 13% of IID's tokens/s on the first bench suite at probe_every_steps=10).
PROBE_BATCH_FACTOR = 4
INITIAL_LOSS_FILE = "initial_loss_difficulty.npy"
STAGE_SCORES_DIR = "stage_scores"  # per-stage scores of the model at the stage's start (TAPIR rounds)


def _save_npy(path: str, values: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path + ".tmp.npy", values)
    os.replace(path + ".tmp.npy", path)


def _brief(metrics: Dict[str, float]) -> str:
    keys = [k for k in ("eval/loss", "eval/exact_match") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys) or "no eval data"


@dataclass
class TrainState:
    """What the trainer itself must carry across a resume (the engine saves the rest)."""

    step: int = 0
    tokens: int = 0
    initial_eval: Dict[str, float] = field(default_factory=dict)
    last_eval: Dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0  # steps whose update was discarded for a non-finite loss (on_nonfinite=skip)


def prepare_output_dir(cfg: Config, resolved: Dict[str, Any]) -> str:
    """Create and check the output dir on rank 0 before anything heavy; every rank gets the path."""

    def check() -> str:
        out = os.path.abspath(os.path.expanduser(cfg.trainer.output_dir))
        try:
            checkpoint.make_writable_dir(out)
        except OSError as e:
            raise ConfigError(f"trainer.output_dir={cfg.trainer.output_dir} is not writable ({e.strerror})") from None
        if cfg.trainer.resume == "never" and checkpoint.complete_tags(checkpoint.checkpoints_dir(out)):
            raise ConfigError(
                f"trainer.output_dir={out} already holds checkpoints and trainer.resume=never; "
                "use trainer.resume=auto to continue, or another trainer.output_dir"
            )
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump(resolved, f, sort_keys=False)
        return out

    return dist.on_main(check)


def curriculum_difficulty(cfg: Config, engine: Engine, split, pad_id: int, output_dir: str) -> np.ndarray:
    """Per-sample difficulty for the curriculum: the data's, or the initial model's loss when the
    curriculum asks for it (`difficulty_source()`: initial_loss, or auto with samples lacking one)."""
    source = cfg.curriculum.difficulty_source()
    missing = np.flatnonzero(np.isnan(split.difficulty))
    if source == "data" and len(missing):
        key = getattr(cfg.curriculum, "DIFFICULTY_KEY", "curriculum.difficulty")
        raise DataError(
            f"curriculum={cfg.curriculum.name} needs a difficulty for every training sample ({key}=data) but "
            f"{len(missing)} of {len(split)} have none, first {split.describe(missing[0])}; set "
            f"data.difficulty_field, score the data with ct-train-score, or use {key}=initial_loss"
        )
    if not (source == "initial_loss" or (source == "auto" and len(missing))):
        return split.difficulty
    # Cached in the output dir: a resumed run must see the bands of the first start, not the loss of
    # the resumed model.
    path = os.path.join(output_dir, INITIAL_LOSS_FILE)
    if os.path.exists(path):
        cached = np.load(path)
        if len(cached) == len(split):
            return cached
    losses = sample_losses(engine, split, cfg.trainer.micro_batch_size, pad_id)
    dist.on_main(lambda: _save_npy(path, losses))
    return losses


def train(cfg: Config, resolved: Dict[str, Any], report: bool = True) -> Dict[str, Any]:
    """Run training as configured; returns the summary (final eval, paths). Call on every rank.
    `report`: print the end-of-run table (the interaction probes run many short trainings quietly)."""
    tr = cfg.trainer
    dist.init(tr.dist_timeout_s)
    world, rank = dist.world_size(), dist.rank()
    grad_accum_steps = tr.grad_accum_steps(world)  # fails here, before any data work, if it does not divide
    output_dir = prepare_output_dir(cfg, resolved)

    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.path)
    data = dist.main_first(
        lambda: prepare_data(
            cfg.data, tokenizer, parts=cfg.curriculum.data_parts(), probe_per_cluster=cfg.curriculum.probe_samples()
        )
    )
    train_split = data.train
    resume_from = checkpoint.resolve_resume(tr.resume, output_dir)
    own_checkpoints = os.path.abspath(checkpoint.checkpoints_dir(output_dir))
    resumed_tag = resume_from[1] if resume_from and os.path.abspath(resume_from[0]) == own_checkpoints else None

    # A checkpoint written by another number of ranks is converted to DeepSpeed's universal format
    # (ZeRO partitions are per rank); the sampler and curriculum states do not depend on the ranks.
    weights_dir = None
    if resume_from is not None and checkpoint.saved_world_size(*resume_from) not in (world, 0):
        weights_dir = checkpoint.to_universal(*resume_from, output_dir)
    engine = Engine(cfg, tokenizer, load_universal=weights_dir is not None)
    # The curriculum sees cluster ids and difficulty only; a difficulty it needs and the data lacks
    # is the initial model's loss (computed before a checkpoint is loaded, and cached).
    difficulty = curriculum_difficulty(cfg, engine, train_split, tokenizer.pad_token_id, output_dir)
    index = DataIndex(data.clusters, train_split.cluster_ids, difficulty, train_split.part_ids, train_split.parts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curriculum = build_curriculum(
            cfg.curriculum, index, seed=tr.seed, total_steps=tr.max_steps, global_batch_size=tr.global_batch_size
        )
    # Staged curricula (phased, tapir) fix where their stages start and end; with trainer.max_steps=-1
    # they also fix the run's length. The LR schedule restarts at every stage that re-warms.
    stages = list(getattr(curriculum, "stages", []))
    max_steps = stages[-1].end if stages and tr.max_steps == -1 else tr.max_steps
    engine.set_lr_schedule(max_steps, [s.start for s in stages if s.rewarm])
    stage_ends = {s.end: k for k, s in enumerate(stages)}
    signal_kind = getattr(curriculum, "signal", "loss")
    probe_every = getattr(curriculum, "probe_every_steps", 0) if data.probe is not None else 0

    state = TrainState()
    saved = None
    if resume_from is not None:
        saved = checkpoint.load(engine, *resume_from, weights_dir=weights_dir)
        if saved["clusters"] != data.clusters:
            raise ConfigError(
                f"cannot resume from {resume_from[1]}: its clusters {saved['clusters']} differ from "
                f"the data's {data.clusters} (did data.* change?)"
            )
        state = TrainState(**saved["trainer"])

    def begin_stage(k: int) -> Dict[str, Any]:
        """A curriculum whose stage pools depend on the model (TAPIR) builds them here, from the current
        model's per-sample losses: computed when the stage starts, cached, and read back on resume
        (the model of a resumed run is no longer the stage's starting model)."""
        idx = curriculum.stage_candidates(k)
        scores = None
        if idx is not None:
            name = f"{STAGE_SCORES_DIR}/{stages[k].name}.npy"
            search = [output_dir] + ([os.path.dirname(resume_from[0])] if resume_from else [])
            cached = [os.path.join(d, name) for d in search if os.path.exists(os.path.join(d, name))]
            if state.step > stages[k].start and cached:
                scores = np.load(cached[0])
            if scores is None or len(scores) != len(idx):
                if state.step > stages[k].start:
                    log_later.append(f"warning: no cached scores for {stages[k].name}; scored with the resumed model")
                scores = sample_losses(engine, train_split, tr.micro_batch_size, tokenizer.pad_token_id, idx)
                dist.on_main(lambda: _save_npy(os.path.join(output_dir, name), scores))
        return curriculum.begin_stage(k, scores)

    log_later: list = []
    stage_info: Dict[str, Any] = {}
    if hasattr(curriculum, "begin_stage"):
        stage_info = begin_stage(stage_at(stages, state.step))
    pools = curriculum.pools()
    sampler = CurriculumSampler(pools, tr.global_batch_size, tr.seed)
    # SPG's fresh batches come from their own stream, so the training stream is the same as with PG.
    probe_sampler = (
        CurriculumSampler(pools, tr.global_batch_size, tr.seed + PROBE_SEED) if signal_kind == "spg" else None
    )
    if saved is not None:
        try:
            sampler.load_state_dict(saved["sampler"])
            curriculum.load_state_dict(saved["curriculum"])
            if probe_sampler is not None:
                probe_sampler.load_state_dict(saved["probe_sampler"])
        except (ValueError, KeyError) as e:
            raise ConfigError(f"cannot resume from {resume_from[1]}: {e} (did curriculum.* change?)") from None
    # Per-cluster weights of the per-sample losses in the objective (TAPIR's loss_weights), or None.
    loss_weights = getattr(curriculum, "loss_weights", None)
    weights_t = None if loss_weights is None else torch.tensor(loss_weights, dtype=torch.float32, device=engine.device)
    log = RunLogger(cfg.logger, output_dir, resolved, max_steps, state.step, tr.log_samples)
    log.write(
        f"ct_train: {world} rank(s), {engine.num_parameters():,} parameters, "
        f"ZeRO-{engine.ds_config['zero_optimization']['stage']}, "
        f"{len(train_split):,} train / {len(data.eval) if data.eval else 0:,} eval samples in "
        f"{len(data.clusters)} clusters, global batch {tr.global_batch_size} = {world} ranks x "
        f"{tr.micro_batch_size} x {grad_accum_steps} accumulation steps; data counts: "
        f"{ {k: v for k, v in data.stats.items() if v} }"
    )
    for w in caught:
        log.write(f"warning: {w.message}")
    if hasattr(curriculum, "describe"):
        log.write(curriculum.describe())
    shortest = min((s.end - s.start for s in stages if s.rewarm), default=None)
    if shortest is not None and not tr.warmup_ratio and tr.warmup_steps >= shortest:
        log.write(
            f"warning: trainer.warmup_steps={tr.warmup_steps} is not shorter than a stage ({shortest} steps): "
            "the LR re-warms in every stage and never leaves warmup there; set trainer.warmup_ratio instead"
        )
    for line in log_later:
        log.write(line)
    if stage_info:
        log.write(f"{stages[stage_at(stages, state.step)].name}: {stage_info}")
    if resume_from is not None:
        log.write(
            f"resumed from {os.path.join(*resume_from)} at step {state.step}"
            + (f" (written by {saved['world_size']} ranks; loaded through {weights_dir})" if weights_dir else "")
        )

    def run_eval() -> Dict[str, float]:
        if data.eval is None:
            return {}
        return evaluate(
            engine, data.eval, data.clusters, tr.micro_batch_size, tokenizer.pad_token_id, cfg.data.exact_match
        )

    def nonfinite(step: int, local_ids: list) -> str:
        """Stop (trainer.on_nonfinite=stop, or too many skips), or describe the step to skip."""
        ids = sorted({i for ids in dist.all_gather_object(local_ids) for i in ids})
        what = f"non-finite loss at step {step} in samples {ids[:20]}{' ...' if len(ids) > 20 else ''}"
        if tr.on_nonfinite == "skip" and state.skipped_steps < tr.max_skipped_steps:
            return what
        last = checkpoint.describe_latest(output_dir)
        too_many = (
            f" ({state.skipped_steps} steps skipped already, trainer.max_skipped_steps)" if state.skipped_steps else ""
        )
        raise TrainingStopped(
            f"{what}{too_many}; the update was not applied and {last}; fix those samples or lower trainer.lr, "
            "then rerun to resume"
        )

    def save() -> None:
        stage_tags = [checkpoint.tag_for(s.end) for s in stages]  # a stage's last checkpoint is kept
        checkpoint.save(
            engine,
            output_dir,
            state.step,
            {
                "clusters": data.clusters,
                "sampler": sampler.state_dict(),
                "probe_sampler": probe_sampler.state_dict() if probe_sampler else None,
                "curriculum": curriculum.state_dict(),
                "trainer": state.__dict__,
                "world_size": world,
            },
        )
        if dist.is_main():
            checkpoint.rotate(output_dir, tr.keep_last_checkpoints, protect=[resumed_tag, *stage_tags])

    try:
        if state.step == 0 and not state.initial_eval:
            state.initial_eval = state.last_eval = run_eval()
            log.log(0, state.initial_eval)
        # Reliability drill and tests: CT_TRAIN_NAN_AT=<step> makes rank 0's first micro-batch of that
        # step non-finite (docs/reliability.md).
        nan_at = int(os.environ.get("CT_TRAIN_NAN_AT", "0") or 0)
        acc = {name: ClusterLossAccumulator(data.clusters, engine.device) for name in ("train", "probe", "after")}
        engine.train()
        while state.step < max_steps:
            k = stage_at(stages, state.step) if stages else 0
            if hasattr(curriculum, "begin_stage") and k != curriculum.current:  # a new round: new pools
                info = begin_stage(k)
                sampler.replace_pools(curriculum.pools())
                if probe_sampler is not None:
                    probe_sampler.replace_pools(curriculum.pools())
                log.write(f"{stages[k].name} starts at step {state.step}: {info}")
                log.log(
                    state.step,
                    {f"curriculum/{stages[k].name}/{key}": v for key, v in info.items() if isinstance(v, (int, float))},
                )
            t0 = time.perf_counter()
            plan = curriculum.plan(state.step)
            global_batch = sampler.global_batch(state.step, plan)
            curriculum_s = time.perf_counter() - t0  # the curriculum's own bookkeeping (logged)
            # Loss denominator of the whole global batch, the same on every rank: no collective.
            if tr.loss_normalization == "token":
                per = train_split.n_target[global_batch].astype(np.float64)
            else:
                per = (train_split.n_target[global_batch] > 0).astype(np.float64)
            if loss_weights is not None:  # a weighted mean: the weights shift emphasis, not the scale
                per = per * loss_weights[train_split.cluster_ids[global_batch]]
            denominator = float(per.sum())
            share = np.bincount(train_split.cluster_ids[global_batch], weights=per, minlength=len(data.clusters)) / max(
                denominator, 1e-12
            )
            trained_ids, step_losses = [], []
            micro_batches = sampler.rank_micro_batches(global_batch, rank, world, tr.micro_batch_size)
            for i, idx in enumerate(micro_batches):
                batch = collate(train_split, idx, tokenizer.pad_token_id).to(engine.device)
                weights = objective_weights(
                    batch.n_target,
                    tr.loss_normalization,
                    denominator,
                    grad_scale=world * grad_accum_steps,
                    sample_weights=None if loss_weights is None else weights_t[batch.cluster_ids],
                )
                per_sample, _ = engine.forward(batch, weights)
                if i == 0 and rank == 0 and nan_at == state.step + 1:  # fault drill (CT_TRAIN_NAN_AT)
                    per_sample = per_sample * float("nan")
                loss = objective(per_sample, weights)
                engine.backward(loss)
                if i < len(micro_batches) - 1:
                    engine.step()  # not the boundary yet: DeepSpeed only counts the micro-step
                acc["train"].add(batch.cluster_ids, per_sample, batch.n_target)
                trained_ids += batch.ids
                step_losses.append(per_sample.detach())  # inspected only if the step's signal is non-finite
            if probe_sampler is not None:  # SPG: a fresh batch of the plan's pools, before the update
                probe = probe_sampler.global_batch(state.step, plan)
                probe_micro = sampler.rank_micro_batches(probe, rank, world, tr.micro_batch_size)
                measure(engine, train_split, probe_micro, tokenizer.pad_token_id, acc["probe"])
            # The signal is reduced before the boundary step, so a non-finite loss stops the run
            # before the optimizer applies its gradients: the weights and checkpoints stay clean.
            stats, *probe_before = reduce_together([acc["train"]] + ([acc["probe"]] if probe_sampler else []))
            skip = None
            if not np.isfinite(stats.loss_sum).all():
                bad = ~torch.isfinite(torch.cat(step_losses)).cpu().numpy()
                skip = nonfinite(state.step + 1, [i for i, b in zip(trained_ids, bad) if b])
            skipped_before = engine.skipped_steps()
            engine.step()  # the accumulation boundary: the optimizer update
            if skip is not None:
                # DeepSpeed discards an update whose gradient norm is not finite (and does not advance
                # the LR schedule); the curriculum does not see the step's non-finite signal.
                if engine.skipped_steps() == skipped_before:
                    raise TrainingStopped(
                        f"{skip}: this DeepSpeed setup applied the update anyway; use trainer.on_nonfinite=stop"
                    )
                state.skipped_steps += 1
                state.step += 1
                log.write(f"warning: {skip}; update skipped ({state.skipped_steps} so far)")
                log.log(state.step, {"skipped_nonfinite": state.skipped_steps})
                log.log_samples(state.step, trained_ids, plan.weights)
                continue
            if signal_kind in ("pg", "spg"):  # the same samples after the update: prediction gain
                measure(
                    engine,
                    train_split,
                    probe_micro if probe_sampler else micro_batches,
                    tokenizer.pad_token_id,
                    acc["after"],
                )
                stats.gain = prediction_gain(probe_before[0] if probe_before else stats, acc["after"].reduce())
            stats.share = share
            if probe_every and (state.step + 1) % probe_every == 0:  # held-out learning progress (lp)
                stats.probe_loss = probe_loss(
                    engine,
                    data.probe,
                    len(data.clusters),
                    PROBE_BATCH_FACTOR * tr.micro_batch_size,
                    tokenizer.pad_token_id,
                )
            t1 = time.perf_counter()
            curriculum_metrics = curriculum.observe(state.step, stats)
            curriculum_s += time.perf_counter() - t1
            state.step += 1
            step_tokens = int(train_split.lengths[global_batch].sum())
            state.tokens += step_tokens
            elapsed = time.perf_counter() - t0
            log.log_samples(state.step, trained_ids, plan.weights)

            metrics: Dict[str, Any] = {}
            if state.step % tr.log_every_steps == 0 or state.step == max_steps or state.step in stage_ends:
                mean_loss = float(stats.loss_sum.sum() / max(stats.count.sum(), 1.0))
                metrics = {
                    "loss": mean_loss,
                    "lr": engine.lr(),
                    "grad_norm": engine.grad_norm(),
                    "tokens": state.tokens,
                    "tokens_per_s": step_tokens / elapsed,
                    "step_time_s": elapsed,
                    "curriculum_ms": 1e3 * curriculum_s,
                    **cluster_loss_metrics(stats),
                    **{f"curriculum/{k}": v for k, v in {**plan.info, **curriculum_metrics}.items()},
                }
                log.progress(state.step, {"loss": f"{mean_loss:.4f}", "tok/s": f"{step_tokens / elapsed:,.0f}"})
            stage_end = state.step in stage_ends and state.step < max_steps  # (the run's end evaluates anyway)
            if stage_end or (tr.eval_every_steps and state.step % tr.eval_every_steps == 0 and state.step < max_steps):
                state.last_eval = run_eval()
                metrics.update(state.last_eval)
            if stage_end:
                metrics["curriculum/stage_end"] = stage_ends[state.step] + 1
                log.write(f"{stages[stage_ends[state.step]].name} ends at step {state.step}: {_brief(state.last_eval)}")
            if metrics:
                log.log(state.step, metrics)
            if stage_end or (tr.save_every_steps and state.step % tr.save_every_steps == 0 and state.step < max_steps):
                save()

        state.last_eval = run_eval()
        log.log(state.step, {**state.last_eval, **({"curriculum/stage_end": len(stages)} if stages else {})})
        if tr.save_final and not os.path.exists(
            os.path.join(checkpoint.checkpoints_dir(output_dir), checkpoint.tag_for(state.step), checkpoint.STATE_FILE)
        ):
            save()  # (a resumed, already finished run keeps its final checkpoint untouched)
        final_dir = os.path.join(output_dir, "final")
        if tr.export_final:
            engine.export_hf(final_dir, tokenizer)
    except RuntimeError as e:
        if world == 1 or not dist.is_comm_failure(e):
            raise
        last = checkpoint.describe_latest(output_dir)
        raise TrainingStopped(
            f"lost contact with another rank during step {state.step + 1} ({str(e).splitlines()[0][:200]}); "
            f"{last}; restart the job on every node to resume"
        ) from None
    finally:
        log.close()
    summary = {
        "output_dir": output_dir,
        "final_dir": final_dir if tr.export_final else None,
        "step": state.step,
        "initial_eval": state.initial_eval,
        "final_eval": state.last_eval,
        "clusters": data.clusters,
    }
    if dist.is_main() and report:
        print(format_summary(summary), flush=True)
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    """The end-of-run table: held-out loss (and exact match) per cluster, before and after."""
    before, after = summary["initial_eval"], summary["final_eval"]
    has_em = any(k.endswith("/exact_match") for k in after)
    head = f"{'cluster':<16}{'loss before':>12}{'loss after':>12}" + (
        f"{'EM before':>11}{'EM after':>10}" if has_em else ""
    )
    lines = [head, "-" * len(head)]
    levels = sorted({k.split("/")[1] for k in after if k.startswith("eval_difficulty/")}, key=float)
    rows = [(name, f"eval/{name}") for name in summary["clusters"]] + [("ALL", "eval")]
    rows += [(f"difficulty {lv}", f"eval_difficulty/{lv}") for lv in levels]
    for name, key in rows:
        if f"{key}/loss" not in after:
            continue
        if name.startswith("difficulty") and not lines[-1].startswith("difficulty"):
            lines.append("")
        row = f"{name:<16}{before.get(f'{key}/loss', float('nan')):>12.4f}{after[f'{key}/loss']:>12.4f}"
        if has_em:
            row += f"{before.get(f'{key}/exact_match', float('nan')):>11.3f}{after[f'{key}/exact_match']:>10.3f}"
        lines.append(row)
    lines.append(
        f"\noutputs: {summary['output_dir']}  (metrics.jsonl, checkpoints/"
        + (", final/ = Hugging Face model" if summary["final_dir"] else "")
        + ")"
    )
    return "\n".join(lines)

"""The training loop, top to bottom: plan -> batches -> forward/backward -> signal -> update ->
observe -> log -> checkpoint. Its parts (engine, data, curriculum, samplers, stages, checkpoints)
are built by `run.setup` before the loop starts.

Everything a step needs that depends on the global batch (its token count, the loss denominator) is
computed from the sampler's global batch on every rank, so the only collective per step beyond
ZeRO's own is the (2 x C) per-cluster signal all-reduce.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ct_train import distributed as dist
from ct_train import io
from ct_train.checkpoint import tag_for as checkpoint_tag
from ct_train.config import Config
from ct_train.curriculum import ClusterStats, Plan
from ct_train.data import collate
from ct_train.data.templates import with_chat_template
from ct_train.errors import Preempted, TrainingStopped
from ct_train.evaluation import probe_loss, prompt_information
from ct_train.logging import METRICS_FILE
from ct_train.losses import objective_weights
from ct_train.run import Run, release_output_dir, setup
from ct_train.signals import cluster_loss_metrics, measure, prediction_gain, reduce_together

# The held-out probe (signal=lp) is scored in no-grad micro-batches this many times the training
# one: no activations are kept, and with a small model each forward's ZeRO-3 gathers cost more than
# its arithmetic (1x: 13% of IID's tokens/s on the first bench suite at probe_every_steps=10).
PROBE_BATCH_FACTOR = 4


def train(cfg: Config, resolved: Dict[str, Any], report: bool = True) -> Dict[str, Any]:
    """Run training as configured; returns the summary (final eval, paths). Call on every rank.
    `report`: print the end-of-run table (the interaction probes run many short trainings quietly)."""
    try:
        run = setup(cfg, resolved)
    except BaseException:
        release_output_dir()  # a refused or failed start leaves the directory free
        dist.restore_default_signals()
        raise
    state = run.state
    dist.training_started()  # (from here a stop signal saves at the step boundary)
    try:
        if state.step == 0 and not state.initial_eval:
            state.initial_eval = state.last_eval = run.evaluate()
            run.log.log(0, state.initial_eval)
        run.engine.train()
        while state.step < run.schedule.max_steps and not state.stopped_early:
            start_stage(run)
            step = train_step(run)
            # (a skipped step has logged itself; its scheduled eval and checkpoint still happen)
            end_step(run, log_metrics(run, step) if step is not None else {})
            if run.stop_signal and state.step < run.schedule.max_steps:
                preempt(run)
        final_dir = finish(run)
    except RuntimeError as e:
        if dist.world_size() == 1 or not dist.is_comm_failure(e):
            raise
        raise TrainingStopped(
            f"lost contact with another rank during step {state.step + 1} ({str(e).splitlines()[0][:200]}); "
            f"{run.checkpointer.describe_latest()}; restart the job on every node to resume"
        ) from None
    finally:
        run.log.close()
        release_output_dir()
        dist.restore_default_signals()
    summary = {
        "output_dir": run.output_dir,
        "final_dir": final_dir,
        "final_kind": final_kind(run.cfg),
        "step": state.step,
        "initial_eval": state.initial_eval,
        "final_eval": state.last_eval,
        "clusters": run.data.clusters,
    }
    if dist.is_main() and report:
        print(format_summary(summary), flush=True)
    return summary


@dataclass
class StepResult:
    """What one optimizer step measured, for the log."""

    stats: ClusterStats
    plan: Plan
    curriculum_metrics: Dict[str, float]
    tokens: int
    seconds: float
    curriculum_s: float  # the curriculum's own bookkeeping (plan + observe)


def train_step(run: Run) -> Optional[StepResult]:
    """One optimizer step: plan -> sample -> forward/backward -> signal -> update -> observe.
    Returns None when the update was skipped for a non-finite loss (trainer.on_nonfinite=skip)."""
    state, split = run.state, run.data.train
    t0 = time.perf_counter()
    plan = run.curriculum.plan(state.step)
    global_batch = run.sampler.global_batch(state.step, plan)
    curriculum_s = time.perf_counter() - t0
    denominator, share = loss_denominator(run, global_batch)
    micro = run.micro_batches(global_batch)
    trained_ids, step_losses = forward_backward(run, micro, denominator)
    probe_micro = None
    if run.probe_sampler is not None:  # SPG: a fresh batch of the plan's pools, before the update
        probe = run.probe_sampler.global_batch(state.step, plan)
        probe_micro = run.micro_batches(probe)
        measure(run.engine, split, probe_micro, run.pad_id, run.accumulators["probe"], run.packing)
    # The signal is reduced before the boundary step, so a non-finite loss stops the run before the
    # optimizer applies its gradients: the weights and checkpoints stay clean.
    accumulators = [run.accumulators["train"]] + ([run.accumulators["probe"]] if probe_micro is not None else [])
    # A stop signal on any rank rides in the same collective: every rank learns it at the same step.
    # ([ranks stopped, sum of their signal numbers]: the signal's name is their mean when they agree)
    received = dist.stop_requested()
    stop = [float(received > 0), float(received)]
    stats, *probe_before = reduce_together(accumulators, flags=stop)
    run.stop_signal = round(stop[1] / stop[0]) if stop[0] else 0
    skip = None
    if not np.isfinite(stats.loss_sum).all():
        bad = ~torch.isfinite(torch.cat(step_losses)).cpu().numpy()
        skip = nonfinite(run, [i for i, b in zip(trained_ids, bad) if b])
    skipped_before = run.engine.skipped_steps()
    run.engine.step()  # the accumulation boundary: the optimizer update
    if skip is not None:
        skip_update(run, skip, skipped_before, trained_ids, plan)
        return None
    if run.needs.signal in ("pg", "spg"):  # the same samples after the update: prediction gain
        measure(run.engine, split, probe_micro or micro, run.pad_id, run.accumulators["after"], run.packing)
        stats.gain = prediction_gain(probe_before[0] if probe_before else stats, run.accumulators["after"].reduce())
    stats.share = share
    if run.probe_every and run.needs.probe_due(state.step + 1, run.schedule.max_steps):
        held_out_probe(run, stats)  # held-out learning progress (lp)
    t1 = time.perf_counter()
    curriculum_metrics = run.curriculum.observe(state.step, stats)
    curriculum_s += time.perf_counter() - t1
    state.step += 1
    tokens = int(split.lengths[global_batch].sum())
    state.tokens += tokens
    seconds = time.perf_counter() - t0
    run.log.log_samples(state.step, trained_ids, plan.weights)
    return StepResult(stats, plan, curriculum_metrics, tokens, seconds, curriculum_s)


def held_out_probe(run: Run, stats: ClusterStats) -> None:
    """The held-out probe pass after the update (signal=lp): each cluster's probe loss into `stats`;
    where the curriculum asks, the prompt-swapped twins ride in the same forwards (twice the samples
    per micro-batch, the same forward count) and the prompt information comes too."""
    factor, n = PROBE_BATCH_FACTOR * run.cfg.trainer.micro_batch_size, len(run.data.clusters)
    if run.probe_twins is not None and run.needs.twins_due(run.state.step + 1, run.schedule.max_steps):
        combined, kept = run.probe_twins
        stats.probe_loss, stats.probe_info, stats.probe_info_se = prompt_information(
            run.engine, combined, len(run.data.probe), kept, n, 2 * factor, run.pad_id
        )
    else:
        stats.probe_loss = probe_loss(run.engine, run.data.probe, n, factor, run.pad_id)


def loss_denominator(run: Run, global_batch: np.ndarray) -> tuple:
    """The loss denominator of the whole global batch and each cluster's share of it: the same on
    every rank, from the global batch alone (no collective)."""
    split = run.data.train
    if run.cfg.trainer.loss_normalization == "token":
        contribution = split.n_target[global_batch].astype(np.float64)
    else:
        contribution = (split.n_target[global_batch] > 0).astype(np.float64)
    if run.loss_weights is not None:  # a weighted mean: the weights shift emphasis, not the scale
        contribution = contribution * run.loss_weights[split.cluster_ids[global_batch]]
    denominator = float(contribution.sum())
    by_cluster = np.bincount(split.cluster_ids[global_batch], weights=contribution, minlength=len(run.data.clusters))
    return denominator, by_cluster / max(denominator, 1e-12)


def forward_backward(run: Run, micro: List[np.ndarray], denominator: float) -> tuple:
    """Forward and backward of this rank's micro-batches into the accumulated gradient; the train
    accumulator gets their per-sample losses. Returns the sample ids and their losses."""
    trainer = run.cfg.trainer
    grad_scale = dist.world_size() * trainer.grad_accum_steps(dist.world_size())
    weights_t = None
    if run.loss_weights is not None:
        weights_t = torch.tensor(run.loss_weights, dtype=torch.float32, device=run.engine.device)

    def weights_of(batch) -> torch.Tensor:
        sample_weights = None if weights_t is None else weights_t[batch.cluster_ids]
        return objective_weights(batch.n_target, trainer.loss_normalization, denominator, grad_scale, sample_weights)

    batches = [collate(run.data.train, idx, run.pad_id, run.packing).to(run.engine.device) for idx in micro]
    trained_ids, step_losses = [], []
    for batch, per_sample in run.engine.accumulate(batches, weights_of, run.drills.perturb(run.state.step + 1)):
        run.accumulators["train"].add(batch.cluster_ids, per_sample, batch.n_target)
        trained_ids += batch.ids
        step_losses.append(per_sample.detach())  # inspected only if the step's signal is non-finite
    return trained_ids, step_losses


def nonfinite(run: Run, local_ids: list) -> str:
    """Stop (trainer.on_nonfinite=stop, or too many skips), or describe the step to skip."""
    trainer, state = run.cfg.trainer, run.state
    ids = sorted({i for ids in dist.all_gather_object(local_ids) for i in ids})
    what = f"non-finite loss at step {state.step + 1} in samples {ids[:20]}{' ...' if len(ids) > 20 else ''}"
    if trainer.on_nonfinite == "skip" and state.skipped_steps < trainer.max_skipped_steps:
        return what
    too_many = (
        f" ({state.skipped_steps} steps skipped already, trainer.max_skipped_steps)" if state.skipped_steps else ""
    )
    raise TrainingStopped(
        f"{what}{too_many}; the update was not applied and {run.checkpointer.describe_latest()}; fix those "
        "samples or lower trainer.lr, then rerun to resume"
    )


def skip_update(run: Run, skip: str, skipped_before: int, trained_ids: list, plan: Plan) -> None:
    """DeepSpeed discards an update whose gradient norm is not finite (and does not advance the LR
    schedule); the curriculum does not see the step's non-finite signal."""
    state = run.state
    if run.engine.skipped_steps() == skipped_before:
        raise TrainingStopped(f"{skip}: this DeepSpeed setup applied the update anyway; use trainer.on_nonfinite=stop")
    state.skipped_steps += 1
    state.step += 1
    run.log.write(f"warning: {skip}; update skipped ({state.skipped_steps} so far)")
    run.log.log(state.step, {"skipped_nonfinite": state.skipped_steps})
    run.log.log_samples(state.step, trained_ids, plan.weights)


def start_stage(run: Run) -> None:
    """A new stage of a curriculum that builds its pools when the stage starts (a TAPIR round)."""
    schedule, step = run.schedule, run.state.step
    k = schedule.at(step)
    if schedule.curriculum is None or k == schedule.current:
        return
    info = schedule.begin(k, step)
    if info is None:  # the stage's pools were fixed from the start (phased, beyond_iid)
        return
    run.sampler.replace_pools(run.curriculum.pools())
    if run.probe_sampler is not None:
        run.probe_sampler.replace_pools(run.curriculum.pools())
    run.log.write(f"{schedule.name(k)} starts at step {step}: {info}")
    run.log.log(
        step, {f"curriculum/{schedule.name(k)}/{key}": v for key, v in info.items() if isinstance(v, (int, float))}
    )


def log_metrics(run: Run, r: StepResult) -> Dict[str, Any]:
    """The step's metrics on logging steps (every trainer.log_every_steps, the last, stage ends)."""
    step, trainer = run.state.step, run.cfg.trainer
    if not (step % trainer.log_every_steps == 0 or step == run.schedule.max_steps or step in run.schedule.ends):
        return {}
    mean_loss = float(r.stats.loss_sum.sum() / max(r.stats.count.sum(), 1.0))
    run.log.progress(step, {"loss": f"{mean_loss:.4f}", "tok/s": f"{r.tokens / r.seconds:,.0f}"})
    return {
        "loss": mean_loss,
        "lr": run.engine.lr(),
        "grad_norm": run.engine.grad_norm(),
        "tokens": run.state.tokens,
        "tokens_per_s": r.tokens / r.seconds,
        "step_time_s": r.seconds,
        "curriculum_ms": 1e3 * r.curriculum_s,
        **memory_metrics(),
        **cluster_loss_metrics(r.stats),
        **{f"curriculum/{k}": v for k, v in {**r.plan.info, **r.curriculum_metrics}.items()},
    }


def memory_metrics() -> Dict[str, float]:
    """This rank's peak GPU memory since the start (what a dashboard watches for an OOM coming); none on CPU."""
    if not torch.cuda.is_available():
        return {}
    return {"memory/peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def end_step(run: Run, metrics: Dict[str, Any]) -> None:
    """Held-out eval, stage end and checkpoint where the step calls for them; then the log row."""
    state, trainer, schedule = run.state, run.cfg.trainer, run.schedule
    stage_end = schedule.ending(state.step)
    before_end = state.step < schedule.max_steps  # (the run's end evaluates and saves anyway)
    periodic = bool(trainer.eval_every_steps and state.step % trainer.eval_every_steps == 0 and before_end)
    if stage_end is not None or periodic:
        state.last_eval = run.evaluate()
        metrics.update(state.last_eval)
        if periodic:
            check_early_stopping(run)
    if stage_end is not None:
        metrics["curriculum/stage_end"] = stage_end + 1
        run.log.write(f"{schedule.name(stage_end)} ends at step {state.step}: {_brief(state.last_eval)}")
    elif periodic:  # one line per eval on the terminal; the per-cluster values go to metrics.jsonl / W&B
        start = state.initial_eval.get("eval/loss")
        since = f" (start {start:.4f})" if start is not None else ""
        run.log.write(f"eval at step {state.step}: {_brief(state.last_eval)}{since}")
    if metrics:
        run.log.log(state.step, metrics)
    if stage_end is not None or (
        trainer.save_every_steps and state.step % trainer.save_every_steps == 0 and before_end
    ):
        run.checkpointer.save(run)


def check_early_stopping(run: Run) -> None:
    """After a periodic eval: count the evals in a row that did not lower eval/loss by more than the
    threshold; at the patience the run stops (the loop ends and `finish` runs, as at max_steps)."""
    state, trainer = run.state, run.cfg.trainer
    loss = state.last_eval.get("eval/loss")
    if not trainer.early_stopping_patience or loss is None:
        return
    if state.best_eval_loss is None or loss < state.best_eval_loss - trainer.early_stopping_threshold:
        state.best_eval_loss, state.evals_without_improvement = loss, 0
        return
    state.evals_without_improvement += 1
    if state.evals_without_improvement >= trainer.early_stopping_patience:
        state.stopped_early = True
        run.log.write(
            f"early stopping at step {state.step}: eval/loss {loss:.4f} has not improved on {state.best_eval_loss:.4f} "
            f"for {state.evals_without_improvement} evals (trainer.early_stopping_patience)"
        )


def preempt(run: Run) -> None:
    """A stop signal reached a rank: save at this step boundary (unless end_step just did) and stop.
    The same command resumes from this step: nothing trained is lost."""
    if run.checkpointer.last_saved != run.state.step:  # (the same answer on every rank: no file check)
        run.checkpointer.save(run)
    # (the ranks' mean signal number: a mix, say SIGINT on one rank and SIGTERM on another, is unnamed)
    known = {int(s): s.name for s in (*dist.STOP_SIGNALS, signal.SIGINT)}
    name = known.get(run.stop_signal, "a stop signal")
    run.log.write(f"{name} received: checkpoint {checkpoint_tag(run.state.step)} saved at step {run.state.step}")
    raise Preempted(
        f"{name} at step {run.state.step}: checkpoint {checkpoint_tag(run.state.step)} saved in "
        f"{run.output_dir}; run the same command to resume"
    )


def finish(run: Run) -> Optional[str]:
    """The final eval, the last checkpoint and the Hugging Face export; returns final/'s path."""
    state, trainer, stages = run.state, run.cfg.trainer, run.schedule.stages
    state.last_eval = run.evaluate()
    run.log.log(state.step, {**state.last_eval, **({"curriculum/stage_end": len(stages)} if stages else {})})
    if trainer.save_final and not run.checkpointer.has(state.step):
        run.checkpointer.save(run)  # (a resumed, already finished run keeps its final checkpoint untouched)
    if not trainer.export_final:
        return None
    final_dir = os.path.join(run.output_dir, "final")
    # A tokenizer without a chat template gets one that renders the training prompt (inference
    # through apply_chat_template then sees the text the model was trained on).
    run.engine.export_hf(
        final_dir,
        with_chat_template(run.tokenizer, run.data.template),
        after_weights=lambda: run.drills.kill_point("during_export", state.step),
    )
    return final_dir


def final_kind(cfg: Config) -> str:
    lora = cfg.model.lora
    if not lora.enabled:
        return "Hugging Face model"
    return "PEFT LoRA adapter" + (" + merged/ Hugging Face model" if lora.merge_on_export else "")


def train_cached(cfg: Config, resolved: Dict[str, Any], key: Any, result_file: str) -> Dict[str, Any]:
    """Train `cfg` unless its output dir already holds the result of the same `key`; returns the
    result ({key, wall_s, final_eval}, with `cached` when it was kept). The benchmark's runs and the
    interaction probes use it, so a pass re-run after an interruption trains only what is missing."""
    out = os.path.abspath(os.path.expanduser(cfg.trainer.output_dir))
    path = os.path.join(out, result_file)

    def read() -> Optional[Dict[str, Any]]:
        if not os.path.exists(path):
            return None
        with open(path) as f:
            saved = json.load(f)
        return {**saved, "cached": True} if saved.get("key") == key else None

    done = dist.on_main(read)
    if done is not None:
        return done

    def clear() -> None:  # a run cut short starts over: its metrics must not hold two histories
        for name in (METRICS_FILE, result_file):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)  # stage-end checkpoints

    dist.on_main(clear)
    t0 = time.perf_counter()
    summary = train(cfg, resolved, report=False)
    result = {"key": key, "wall_s": round(time.perf_counter() - t0, 2), "final_eval": summary["final_eval"]}
    dist.on_main(lambda: io.write_json(path, result))
    return result


def _brief(metrics: Dict[str, float]) -> str:
    keys = [k for k in ("eval/loss", "eval/exact_match") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys) or "no eval data"


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
        + (f", final/ = {summary.get('final_kind', 'Hugging Face model')}" if summary["final_dir"] else "")
        + ")"
    )
    return "\n".join(lines)

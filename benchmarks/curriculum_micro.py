"""Curriculum benchmarks (figures in docs/benchmarks.md).

python benchmarks/curriculum_micro.py sampler   # 10M samples in 100 clusters: build time, index
                                              # memory, plan + sample + observe time per step
python benchmarks/curriculum_micro.py eta       # IT2ACL's Exp3.S step size on a planted,
                                              # switching best cluster (how the default was chosen)
python benchmarks/curriculum_micro.py share     # IT2ACL's bandit when a cluster's gain grows with its
                                              # share of the batch (the rich-get-richer confound)
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from ct_train.curriculum import ClusterStats, DataIndex, build_curriculum
from ct_train.curriculum.it2acl import IT2ACLConfig
from ct_train.sampler import CurriculumSampler


def bench_sampler(samples: int, clusters: int, steps: int, batch: int) -> None:
    rng = np.random.default_rng(0)
    # Very unequal cluster sizes (Zipf-like), continuous difficulty: three bands per cluster.
    sizes = 1.0 / np.arange(1, clusters + 1) ** 1.1
    cluster_ids = rng.choice(clusters, size=samples, p=sizes / sizes.sum()).astype(np.int32)
    difficulty = rng.random(samples)
    names = [f"c{i:03d}" for i in range(clusters)]

    tracemalloc.start()
    t0 = time.perf_counter()
    index = DataIndex(names, cluster_ids, difficulty)
    cur = build_curriculum(IT2ACLConfig(signal="loss", phase2="bandit"), index, seed=0, total_steps=steps)
    sampler = CurriculumSampler(cur.pools(), batch, seed=0)
    build_s = time.perf_counter() - t0
    _, build_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()  # it slows every allocation: the steps are timed without it

    times = []
    for step in range(steps):
        t = time.perf_counter()
        plan = cur.plan(step)
        global_batch = sampler.global_batch(step, plan)
        counts = np.bincount(cluster_ids[global_batch], minlength=clusters).astype(np.float64)
        cur.observe(step, ClusterStats(names, counts * rng.random(), counts))
        times.append(time.perf_counter() - t)
    ms = sorted(1e3 * x for x in times)
    print(
        f"{samples:,} samples, {clusters} clusters (largest {np.bincount(cluster_ids).max():,}, smallest "
        f"{np.bincount(cluster_ids).min():,}), {len(sampler.pools)} pools, global batch {batch}\n"
        f"build (index + curriculum + sampler): {build_s:.2f} s, peak traced memory {build_peak / 2**20:.0f} MiB "
        f"(of which the input arrays {(cluster_ids.nbytes + difficulty.nbytes) / 2**20:.0f} MiB)\n"
        f"plan + sample + observe per step over {steps} steps: median {statistics.median(ms):.3f} ms, "
        f"p99 {ms[int(0.99 * len(ms))]:.3f} ms, max {ms[-1]:.1f} ms (a pool's first pass permutes it)\n"
        f"index memory after the run: pools {sum(p.nbytes for p in sampler.pools.values()) / 2**20:.0f} MiB + "
        f"cached pass permutations {sum(c[1].nbytes for c in sampler._perm_cache.values()) / 2**20:.0f} MiB"
    )


def bench_eta(etas, arms: int, seeds: int, noise: float, draws: int) -> None:
    """Gain 1 on one planted arm (0 elsewhere, plus noise); it moves to another arm at step 150."""
    print(
        f"{arms} clusters, {draws} draw(s) per step, gain noise sd {noise}, {seeds} seeds: "
        "p(best arm) at step 150 / at step 450 (after the switch)"
    )
    for eta in etas:
        before, after = [], []
        for seed in range(seeds):
            index = DataIndex([f"c{i}" for i in range(arms)], np.repeat(np.arange(arms), 50), np.zeros(arms * 50))
            cfg = IT2ACLConfig(eta=eta, phase2="none", clusters_per_batch=draws)
            cur = build_curriculum(cfg, index, seed=seed, total_steps=0)
            rng = np.random.default_rng(seed)
            for step in range(450):
                good = 3 if step < 150 else 7
                gain, counts = np.full(arms, np.nan), np.zeros(arms)
                for pool in cur.plan(step).weights:
                    arm = index.clusters.index(pool.split("@")[0])
                    gain[arm], counts[arm] = float(arm == good) + noise * rng.normal(), 8
                cur.observe(step, ClusterStats(index.clusters, counts, counts, gain=gain))
                if step == 149:
                    before.append(cur.bandit.probs()[3])
            after.append(cur.bandit.probs()[7])
        print(
            f"eta={eta:<6} p(best) step 150: median {np.median(before):.2f} (min {min(before):.2f}); "
            f"step 450: median {np.median(after):.2f} (min {min(after):.2f})"
        )


def simulate(
    cfg: IT2ACLConfig,
    learnability,
    steps: int,
    seed: int,
    share_power: float = 1.0,
    noise: float = 0.3,
    batch: int = 32,
) -> np.ndarray:
    """The IT2ACL curriculum driven by a planted world; returns its final sampling policy.

    Arm i's learnability l_i >= 0 is how fast training on it lowers its loss; l_i < 0 marks an
    unlearnable arm whose held-out loss rises while the model fits its noise. With `signal=pg|spg|loss`
    a drawn arm's gain after a step is l_i x share_i ** share_power + noise (the self-gain of an
    update grows with the arm's share of the batch: power 1 for a first-order loss drop; the confound
    the per-share reward removes). With `signal=lp` each arm has a held-out loss that moves by
    -0.02 l_i x share_i x (L_i - 0.5) per step plus probe noise, and the probe reports it every
    `probe_every_steps`.
    """
    learn = np.asarray(learnability, dtype=np.float64)
    arms = len(learn)
    names = [f"c{i}" for i in range(arms)]
    index = DataIndex(names, np.repeat(np.arange(arms), 100), np.zeros(arms * 100))
    cur = build_curriculum(cfg, index, seed=seed, total_steps=steps, global_batch_size=batch)
    rng = np.random.default_rng(seed + 1000)
    held_out = np.full(arms, 3.0)
    for step in range(steps):
        plan = cur.plan(step)
        share = np.zeros(arms)
        for pool, w in plan.weights.items():
            share[names.index(pool.split("@")[0])] += w
        share /= share.sum()
        counts = np.round(share * batch)
        drawn = share > 0
        gain = np.where(drawn, learn * share**share_power + noise * rng.normal(size=arms), np.nan)
        if cfg.signal == "loss":  # the pool's training loss: the gain shows as a falling loss
            held_out -= np.where(learn > 0, learn * share * 0.1, -0.02 * share)
            loss = held_out + noise * 0.1 * rng.normal(size=arms)
        else:
            held_out -= np.where(learn > 0, 0.02 * learn * share * (held_out - 0.5), -0.02 * share)
            loss = held_out
        stats = ClusterStats(names, np.where(drawn, loss, 0.0) * counts, counts, gain=gain, share=share)
        if cfg.signal == "lp" and (step + 1) % cfg.probe_every_steps == 0:
            stats.probe_loss = held_out + noise * 0.1 * rng.normal(size=arms)
        cur.observe(step, stats)
    return cur.policy()


def bench_share(arms: int, seeds: int, steps: int) -> None:
    """Identical arms whose gain grows with their share: how far the policy drifts from uniform."""
    legacy = dict(eta=0.1, uniform_mix=0.0, reward_per_share=False, clusters_per_batch=8)
    print(f"{arms} identical arms, {steps} steps, {seeds} seeds: max policy / uniform (median)")
    for power in (0.5, 1.0):
        for name, kw in (("2026-11 (eta 0.1, no mix, raw gain, 8 draws)", legacy), ("defaults", {})):
            top = [
                arms * simulate(IT2ACLConfig(phase2="none", **kw), np.ones(arms), steps, s, share_power=power).max()
                for s in range(seeds)
            ]
            print(f"gain ~ share^{power}: {name:<44} {np.median(top):.2f}x uniform (max {max(top):.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/curriculum_micro.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sampler")
    s.add_argument("--samples", type=int, default=10_000_000)
    s.add_argument("--clusters", type=int, default=100)
    s.add_argument("--steps", type=int, default=2000)
    s.add_argument("--batch", type=int, default=1024)
    e = sub.add_parser("eta")
    e.add_argument("--eta", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    e.add_argument("--arms", type=int, default=10)
    e.add_argument("--seeds", type=int, default=10)
    e.add_argument("--noise", type=float, default=0.5)
    e.add_argument("--draws", type=int, default=1, help="clusters_per_batch")
    sh = sub.add_parser("share")
    sh.add_argument("--arms", type=int, default=14)
    sh.add_argument("--seeds", type=int, default=10)
    sh.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if args.what == "sampler":
        bench_sampler(args.samples, args.clusters, args.steps, args.batch)
    elif args.what == "share":
        bench_share(args.arms, args.seeds, args.steps)
    else:
        bench_eta(args.eta, args.arms, args.seeds, args.noise, args.draws)


if __name__ == "__main__":
    main()

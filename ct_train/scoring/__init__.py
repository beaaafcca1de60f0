"""`ct-train-score` / `ct-train mode=score`: score every record's difficulty and write the scored data.

    ct-train-score data=jsonl data.path=train.jsonl scoring=loss model=hf model.path=BASE_MODEL
    deepspeed --num_gpus 8 --module ct_train mode=score scoring=ifd ...   (the same, on 8 ranks)

Every record of the data is scored (no eval split, nothing dropped for length: long samples are
truncated). The output holds the normalised records plus `difficulty`, `difficulty_scorer` and
`difficulty_model` (the model fingerprint), so `data.path=<output> curriculum=phased` trains on it.
Scores are cached in `scoring.cache_dir` under a key of (scorer, its fields, model fingerprint,
fingerprint of the tokenised data): re-running with the same model and data reads them back without
building the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from ct_train import distributed as dist
from ct_train import io
from ct_train.config import Config
from ct_train.data.prepare import data_fingerprint
from ct_train.scorers import NEEDS_MODEL, SCORERS
from ct_train.scoring import output

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_fingerprint(cfg: Config, tokenizer: Any) -> str:
    """A short hash naming the reference model: a local directory by its config and weight files'
    names, sizes and modification times (hashing 15 GB of weights would cost minutes); a model
    built from `model.architecture` by that config, the seed and the vocabulary."""
    h = hashlib.sha256()
    m = cfg.model
    if m.path:
        h.update(b"path")
        for name in sorted(os.listdir(m.path)):
            full = os.path.join(m.path, name)
            if name == "config.json":
                with open(full, "rb") as f:
                    h.update(f.read())
            elif name.endswith(WEIGHT_SUFFIXES):
                st = os.stat(full)
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        h.update(json.dumps(m.architecture, sort_keys=True, default=str).encode())
        h.update(f"seed={cfg.trainer.seed}:vocab={len(tokenizer)}".encode())
    h.update(f"dtype={m.dtype}".encode())
    return h.hexdigest()[:16]


def default_output(cfg: Config) -> str:
    """outputs/scores/<data>.<scorer>.jsonl (the data's first file stem, or the skill suite)."""
    from ct_train.config import as_path_list

    paths = as_path_list("data.path", cfg.data.path) or [str(k) for k in (cfg.data.sources or {})]
    stem = os.path.basename(paths[0].rstrip("/")).split(".")[0] if paths else cfg.data.name
    return os.path.join("outputs", "scores", f"{stem}.{cfg.scoring.name}.jsonl")


def score(cfg: Config, resolved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Score the data as configured and write it (rank 0); call on every rank. Returns the summary."""
    from ct_train.data import load_tokenizer, prepare_data

    scoring = cfg.scoring
    dist.init(cfg.trainer.dist_timeout_s)
    out_path = os.path.abspath(scoring.output or default_output(cfg))

    def check_output() -> None:  # before any work: an unwritable place fails now, not after the pass
        io.prepare_output_dir(os.path.dirname(out_path), "scoring.output")
        io.prepare_output_dir(scoring.cache_dir, "scoring.cache_dir")

    dist.on_main(check_output)
    # Every record is scored: no held-out split, nothing dropped for length.
    data_cfg = dataclasses.replace(cfg.data, eval_fraction=0.0, eval_path=None, truncation="truncate")
    if scoring.name == "judge_gap":
        data_cfg = dataclasses.replace(data_cfg, judge_fields=[scoring.teacher_field, scoring.student_field])
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.path)
    data = dist.main_first(lambda: prepare_data(data_cfg, tokenizer, keep_text=True))
    model = model_fingerprint(cfg, tokenizer) if scoring.name in NEEDS_MODEL else "none"
    fields = (
        [scoring.teacher_field, scoring.student_field] if scoring.name == "judge_gap" else [cfg.data.difficulty_field]
    )
    key = hashlib.sha256(
        json.dumps([scoring.name, fields, model, data_fingerprint(data.train.dataset)]).encode()
    ).hexdigest()[:24]
    cache = os.path.join(scoring.cache_dir, f"{scoring.name}-{key}.npy")
    cached = os.path.exists(cache)
    if cached:
        scores = np.load(cache)
    else:
        engine = response_only = None
        if scoring.name in NEEDS_MODEL:
            from ct_train.engine import Engine

            engine = Engine(cfg, tokenizer, inference=True)
        if scoring.name == "ifd":
            response_only = dist.main_first(lambda: prepare_data(data_cfg, tokenizer, response_only=True))
        scores = SCORERS[scoring.name](cfg, data, engine=engine, tokenizer=tokenizer, response_only=response_only)

        dist.on_main(lambda: io.save_npy(cache, scores))
    split = data.train
    summary = {
        "output": out_path,
        "scorer": scoring.name,
        "model": model,
        "records": int(len(split)),
        "scored": int(np.isfinite(scores).sum()),
        "cached": bool(cached),
        "cache": os.path.abspath(cache),
        "seconds": round(time.perf_counter() - t0, 2),
        "world_size": dist.world_size(),
        "clusters": output.cluster_summary(scores, split.cluster_ids, data.clusters),
    }

    def write() -> None:
        output.write_records(output.records(split.dataset, scores, scoring.name, model), out_path)
        if scoring.histogram:
            output.histogram(
                os.path.splitext(out_path)[0] + ".hist.png",
                scores,
                split.cluster_ids,
                data.clusters,
                f"difficulty ({scoring.name}) per cluster: {os.path.basename(out_path)}",
            )
        output.write_meta(out_path + ".meta.json", summary)
        print(format_summary(summary), flush=True)

    dist.on_main(write)
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    lines: List[str] = [
        f"{'cluster':<24}{'n':>8}{'mean':>10}{'p10':>10}{'p50':>10}{'p90':>10}",
    ]
    lines.append("-" * len(lines[0]))
    for name, s in summary["clusters"].items():
        lines.append(f"{name[:23]:<24}{s['n']:>8}{s['mean']:>10.4g}{s['p10']:>10.4g}{s['p50']:>10.4g}{s['p90']:>10.4g}")
    how = "read from the cache" if summary["cached"] else f"computed on {summary['world_size']} rank(s)"
    lines.append(
        f"\n{summary['scored']:,} of {summary['records']:,} records scored with {summary['scorer']} ({how}, "
        f"{summary['seconds']} s) -> {summary['output']}"
    )
    return "\n".join(lines)

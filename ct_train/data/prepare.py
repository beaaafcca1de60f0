"""The data side of a run: config -> tokenised train/eval sets with cluster ids and difficulty.

Tokenisation is a `datasets.map` over file-backed datasets, so it is cached by `datasets` and a second
run (or the other ranks, which prepare after rank 0) reads the cache instead of tokenising again.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

import ct_train.data.skills as skill_suite
from ct_train import distributed as dist
from ct_train.config import DataConfig, as_path_list
from ct_train.data.loading import FileSpec, expand, load_examples
from ct_train.data.templates import field_char_limit, resolve_template, tokenize_example
from ct_train.errors import DataError

MAX_LEVELS_PER_CLUSTER = 20  # data.split_by_difficulty: more distinct values than this is not a level scale
TOKEN_COLUMNS = ["id", "cluster", "difficulty", "part", "input_ids", "labels", "n_target"]
TEXT_COLUMNS = ["prompt", "input", "response", "messages", "source"]


@dataclass
class TokenizedSplit:
    """A tokenised split: the `datasets.Dataset`, and its cluster ids as an array for the sampler."""

    dataset: Any
    cluster_ids: np.ndarray  # (num_samples,) int64 index into PreparedData.clusters
    difficulty: np.ndarray  # (num_samples,) float64, NaN where the data has none
    lengths: np.ndarray  # (num_samples,) int64 tokens per sample
    n_target: np.ndarray  # (num_samples,) int64 response tokens predicted per sample
    part_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # index into parts
    parts: List[str] = field(default_factory=lambda: [""])  # "" = data.path/sources; else a named part

    def __len__(self) -> int:
        return len(self.dataset)

    def part_indices(self, part: str) -> np.ndarray:
        """Indices of the samples that came from one part of the data ("" = data.path/sources)."""
        if part not in self.parts:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self.part_ids == self.parts.index(part))

    def describe(self, i: int) -> str:
        """Sample i named for an error message (its record id: `<file>:<line index>` for records without one)."""
        return f"record id {self.dataset[int(i)]['id']!r}"


@dataclass
class PreparedData:
    train: TokenizedSplit
    eval: Optional[TokenizedSplit]
    clusters: List[str]
    template: str
    stats: Dict[str, int] = field(default_factory=dict)
    probe: Optional[TokenizedSplit] = None  # held out of train and eval for a curriculum's signal (lp)
    skipped: Dict[str, List[str]] = field(default_factory=dict)  # reason -> skipped records (`file:record`)

    def skipped_note(self, shown: int = 3) -> Optional[str]:
        """One line: the skipped records counted by reason, the first few of each named."""
        if not self.skipped:
            return None
        total = sum(len(v) for v in self.skipped.values())
        parts = [
            f"{reason} {len(where)} ({', '.join(where[:shown])}{', ...' if len(where) > shown else ''})"
            for reason, where in sorted(self.skipped.items(), key=lambda kv: -len(kv[1]))
        ]
        return f"skipped {total} records: " + "; ".join(parts)


def _specs(cfg: DataConfig) -> Dict[str, List[FileSpec]]:
    if cfg.name in skill_suite.GENERATED:
        names = list(cfg.skills.clusters) or list(skill_suite.DEFAULT_SUITE)
        sizes = dict(cfg.skills.sizes) if cfg.skills.sizes else None
        paths = skill_suite.materialize(
            names,
            cfg.skills.levels,
            cfg.skills.train_per_level,
            cfg.skills.eval_per_level,
            cfg.skills.seed,
            sizes,
            suite=cfg.name,
        )
        return {"train": [FileSpec(paths["train"])], "eval": [FileSpec(paths["eval"])]}
    if cfg.sources:
        train = []
        for cluster, paths in cfg.sources.items():
            train += expand(f"data.sources.{cluster}", as_path_list(f"data.sources.{cluster}", paths), cluster)
    else:
        train = expand("data.path", as_path_list("data.path", cfg.path))
    evals = expand("data.eval_path", as_path_list("data.eval_path", cfg.eval_path))
    return {"train": train, "eval": evals}


def _split_eval(examples: Any, fraction: float, max_per_cluster: int) -> Dict[str, Any]:
    """Hold out up to `fraction` of each cluster (at most `max_per_cluster`), chosen by id hash.

    Hashing the id (not a seeded shuffle) keeps the split of a record fixed when files are added.
    """
    if fraction <= 0:
        return {"train": examples, "eval": None}
    keys = np.array([zlib.crc32(i.encode()) / 2**32 for i in examples["id"]])
    clusters = np.array(examples["cluster"])
    held = np.zeros(len(keys), dtype=bool)
    for c in np.unique(clusters):
        idx = np.flatnonzero(clusters == c)
        k = min(int(len(idx) * fraction), max_per_cluster)
        if k > 0 and len(idx) > k:
            held[idx[np.argsort(keys[idx], kind="stable")[:k]]] = True
    return {
        "train": examples.select(np.flatnonzero(~held)),
        "eval": examples.select(np.flatnonzero(held)) if held.any() else None,
    }


def _split_probe(examples: Any, per_cluster: int) -> Dict[str, Any]:
    """Hold `per_cluster` training records of each cluster out as the curriculum's probe split.

    Chosen by id hash from the top (the eval split of `_split_eval` takes the bottom), so it is fixed
    when files are added and disjoint from the eval split; a cluster keeps at least half its records.
    """
    keys = np.array([zlib.crc32(f"probe:{i}".encode()) for i in examples["id"]], dtype=np.int64)
    clusters = np.array(examples["cluster"])
    held = np.zeros(len(keys), dtype=bool)
    for c in np.unique(clusters):
        idx = np.flatnonzero(clusters == c)
        k = min(per_cluster, len(idx) // 2)
        if k > 0:
            held[idx[np.argsort(-keys[idx], kind="stable")[:k]]] = True
    return {"train": examples.select(np.flatnonzero(~held)), "probe": examples.select(np.flatnonzero(held))}


def _tokenize(
    examples: Any,
    template: str,
    tokenizer: Any,
    cfg: DataConfig,
    stats: Dict[str, int],
    split: str,
    response_only: bool = False,
    keep_text: bool = False,
) -> Any:
    limit = field_char_limit(tokenizer, cfg.max_seq_len)

    def fn(ex: Dict[str, Any]) -> Dict[str, Any]:
        return tokenize_example(ex, template, tokenizer, cfg.max_seq_len, response_only=response_only, char_limit=limit)

    tok = examples.map(
        fn,
        remove_columns=[] if keep_text else ["prompt", "input", "response", "messages", "source"],
        num_proc=cfg.num_proc if cfg.num_proc > 1 else None,
        desc=f"tokenise {split}",
    )
    too_long = np.asarray(tok["full_length"]) > cfg.max_seq_len
    stats[f"{split}_too_long"] = int(too_long.sum())
    if cfg.truncation == "drop" and too_long.any():
        tok = tok.select(np.flatnonzero(~too_long))
        stats[f"{split}_dropped_too_long"] = int(too_long.sum())
    else:
        stats[f"{split}_truncated"] = int(too_long.sum())
    stats[f"{split}_no_target"] = int((np.asarray(tok["n_target"]) == 0).sum())
    return tok.select_columns(TOKEN_COLUMNS + (TEXT_COLUMNS if keep_text else []))


def _load_splits(
    cfg: DataConfig, parts: Optional[Dict[str, List[str]]], probe_per_cluster: int, skipped: Dict[str, List[str]]
) -> tuple:
    """The records of each split before tokenisation: ({train, eval}, probe records or None, counts).
    `skipped` collects the records left out, by reason."""
    import datasets

    specs = _specs(cfg)
    load = dict(
        fmt=cfg.format,
        cluster_field=cfg.cluster_field,
        difficulty_field=cfg.difficulty_field,
        on_bad_record=cfg.on_bad_record,
        num_proc=cfg.num_proc,
        judge_fields=cfg.judge_fields,
        skipped=skipped,
        columns=dict(cfg.columns) if cfg.columns else None,
    )
    examples, stats = load_examples(specs["train"], **load)
    if specs["eval"]:
        eval_examples, eval_stats = load_examples(specs["eval"], **load)
        stats["eval_records"] = eval_stats["records"]
        stats["eval_skipped_bad"] = eval_stats["skipped_bad"]
        if cfg.split_by_difficulty:
            examples, eval_examples = split_by_level(examples), split_by_level(eval_examples)
        eval_examples = _cap_per_cluster(eval_examples, cfg.eval_max_per_cluster)
        split = {"train": examples, "eval": eval_examples}
    else:
        split = _split_eval(
            split_by_level(examples) if cfg.split_by_difficulty else examples,
            cfg.eval_fraction,
            cfg.eval_max_per_cluster,
        )
    probe_examples = None
    if probe_per_cluster > 0:
        held = _split_probe(split["train"], probe_per_cluster)
        split["train"], probe_examples = held["train"], held["probe"]
    for part, paths in (parts or {}).items():
        key = f"{part} data (curriculum.rounds)"  # a TAPIR round's own file
        files = [FileSpec(f.path, part=part) for f in expand(key, as_path_list(key, paths))]
        part_examples, part_stats = load_examples(files, **load)
        if cfg.split_by_difficulty:
            part_examples = split_by_level(part_examples)
        stats[f"{part}_records"] = part_stats["records"]
        split["train"] = datasets.concatenate_datasets([split["train"], part_examples])
    return split, probe_examples, stats


def prepare_data(
    cfg: DataConfig,
    tokenizer: Any,
    parts: Optional[Dict[str, List[str]]] = None,
    response_only: bool = False,
    keep_text: bool = False,
    probe_per_cluster: int = 0,
) -> PreparedData:
    """Load, normalise, split and tokenise; raises DataError/ConfigError on bad input.

    `parts`: more training files by part name (a TAPIR round's own data); their samples are tagged
    with the part (TokenizedSplit.part_ids) and never held out: the eval split comes from the main
    data only. `response_only`: tokenise the responses without their prompts (IFD scoring).
    `keep_text`: keep the records' text columns beside the tokens (scoring writes them back out).
    `probe_per_cluster`: hold that many training records per cluster out as `PreparedData.probe`
    (never trained on, not in the eval split): the held-out probe of `curriculum.signal=lp`.
    """
    import datasets

    # The other ranks repeat rank 0's work from its cache: one set of progress bars is enough.
    quiet = dist.rank() != 0 and datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        return _prepare(cfg, tokenizer, parts, response_only, keep_text, probe_per_cluster)
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _prepare(cfg: DataConfig, tokenizer: Any, parts, response_only: bool, keep_text: bool, probe_per_cluster: int):
    template = resolve_template(cfg.template, tokenizer)
    skipped: Dict[str, List[str]] = {}
    split, probe_examples, stats = _load_splits(cfg, parts, probe_per_cluster, skipped)
    train = _tokenize(split["train"], template, tokenizer, cfg, stats, "train", response_only, keep_text)
    if len(train) == 0:
        raise DataError(
            "no training sample left after tokenisation (all longer than data.max_seq_len "
            f"={cfg.max_seq_len} with data.truncation=drop?)"
        )
    if stats["train_no_target"] == len(train):
        raise DataError(
            f"no training sample keeps a response token within data.max_seq_len={cfg.max_seq_len} (the prompt and "
            "template fill it); raise data.max_seq_len"
        )
    evals = (
        _tokenize(split["eval"], template, tokenizer, cfg, stats, "eval", response_only, keep_text)
        if split["eval"] is not None
        else None
    )
    probe = _tokenize(probe_examples, template, tokenizer, cfg, stats, "probe") if probe_examples else None
    clusters = sorted(set(train["cluster"]) | (set(evals["cluster"]) if evals is not None else set()))
    stats["train_samples"] = len(train)
    stats["eval_samples"] = len(evals) if evals is not None else 0
    if probe is not None:
        stats["probe_samples"] = len(probe)
    return PreparedData(
        train=_split(train, clusters),
        eval=_split(evals, clusters) if evals is not None else None,
        clusters=clusters,
        template=template,
        stats=stats,
        probe=_split(probe, clusters) if probe is not None else None,
        skipped=skipped,
    )


def level_name(cluster: str, difficulty: float) -> str:
    """The cluster of one difficulty level under data.split_by_difficulty: `add/L1`, `qa/L3.5`."""
    return f"{cluster}/L{difficulty:g}"


def split_by_level(examples: Any) -> Any:
    """`data.split_by_difficulty`: every record's cluster becomes `<cluster>/L<difficulty>` (records
    without a difficulty keep theirs). DataError when a cluster's difficulty is not a few levels."""
    clusters, difficulty = examples["cluster"], examples["difficulty"]
    levels: Dict[str, set] = {}
    for c, d in zip(clusters, difficulty):
        if d is not None:
            levels.setdefault(c, set()).add(d)
    for c, values in levels.items():
        if len(values) > MAX_LEVELS_PER_CLUSTER:
            raise DataError(
                f"data.split_by_difficulty: cluster {c!r} has {len(values)} distinct difficulty values; it needs "
                f"discrete levels (at most {MAX_LEVELS_PER_CLUSTER} per cluster), e.g. the 1-5 judge scale"
            )
    names = [c if d is None else level_name(c, d) for c, d in zip(clusters, difficulty)]
    return examples.remove_columns("cluster").add_column("cluster", names)


def _cap_per_cluster(examples: Any, cap: int) -> Any:
    clusters = np.array(examples["cluster"])
    keep = np.concatenate([np.flatnonzero(clusters == c)[:cap] for c in np.unique(clusters)])
    return examples.select(np.sort(keep)) if len(keep) < len(clusters) else examples


def _split(ds: Any, clusters: List[str]) -> TokenizedSplit:
    index = {c: i for i, c in enumerate(clusters)}
    cluster_ids = np.array([index[c] for c in ds["cluster"]], dtype=np.int64)
    difficulty = np.array([np.nan if d is None else d for d in ds["difficulty"]], dtype=np.float64)
    lengths = np.array([len(x) for x in ds["input_ids"]], dtype=np.int64)
    n_target = np.asarray(ds["n_target"], dtype=np.int64)
    part_names, part_ids = np.unique(np.asarray(ds["part"], dtype=object).astype(str), return_inverse=True)
    return TokenizedSplit(
        dataset=ds,
        cluster_ids=cluster_ids,
        difficulty=difficulty,
        lengths=lengths,
        n_target=n_target,
        part_ids=part_ids.astype(np.int64),
        parts=[str(p) for p in part_names],
    )


def data_fingerprint(dataset: Any) -> str:
    """A hash of the tokenised data itself (ids, token ids, labels, clusters, difficulty): any change
    of file, template, tokenizer or data.max_seq_len changes it."""
    h = hashlib.sha256()
    table = dataset.with_format("arrow")
    for batch in table.iter(batch_size=8192):
        for name in ("id", "cluster", "difficulty", "input_ids", "labels"):
            col = batch.column(name)
            h.update(name.encode())
            for chunk in col.chunks if hasattr(col, "chunks") else [col]:
                h.update(str(chunk.to_pylist()).encode() if name in ("id", "cluster") else _arrow_bytes(chunk))
    return h.hexdigest()[:16]


def _arrow_bytes(chunk: Any) -> bytes:
    import pyarrow as pa

    values = chunk.flatten() if pa.types.is_list(chunk.type) else chunk
    lengths = chunk.value_lengths().to_numpy(zero_copy_only=False) if pa.types.is_list(chunk.type) else []
    return np.asarray(values.to_numpy(zero_copy_only=False)).tobytes() + np.asarray(lengths).tobytes()

"""From files to example records through `datasets`: path expansion, format detection, bad-input errors.

`datasets` does the reading (Arrow, memory-mapped, cached by file fingerprint). When it fails on a
file we scan that file ourselves to name the first malformed line, because its own message names
neither the file nor the line.
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ct_train import io
from ct_train.data.formats import BadRecord, SourceInfo, detect_format, normalize, record_format
from ct_train.errors import DataError

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".jsonl.gz", ".json.gz")


def _open(path: str, mode: str = "rb", **kw: Any) -> Any:
    """A data file, gunzipped on the fly when it ends in .gz."""
    if path.endswith(".gz"):
        return gzip.open(path, mode if "b" in mode else mode + "t", **kw)
    return open(path, mode, **kw)


def _features() -> Any:
    from datasets import Features, Value

    return Features(
        {
            "id": Value("string"),
            "prompt": Value("string"),
            "input": Value("string"),
            "response": Value("string"),
            "messages": [{"role": Value("string"), "content": Value("string")}],
            "cluster": Value("string"),
            "difficulty": Value("float64"),
            "source": Value("string"),
            "part": Value("string"),
            "_error": Value("string"),
        }
    )


@dataclass
class FileSpec:
    path: str
    cluster: Optional[str] = None  # forced by data.sources
    part: str = ""  # which part of the run's data (a TAPIR round's own file); "" = data.path/sources
    default_cluster: Optional[str] = None  # for records naming none; None: the file's name


# A hub dataset's files are named by split (`data/train-00000-of-00001.parquet`, `test.jsonl`): the
# training keys take its train files, data.eval_path its validation/test files, when it has them.
SPLIT_WORDS = {"train": ("train",), "eval": ("validation", "valid", "dev", "test", "eval")}


def _hub_files(key: str, snapshot: str, value: str) -> List[str]:
    """The data files of a hub dataset snapshot (every folder), those of the key's split if named."""
    found = []
    for d, dirs, files in os.walk(snapshot):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [os.path.join(d, f) for f in files if f.endswith(EXTENSIONS)]
    found.sort()
    if not found:
        raise DataError(f"{key}={value}: the cached dataset ({snapshot}) holds no {'/'.join(EXTENSIONS)} file")
    words = SPLIT_WORDS["eval" if key == "data.eval_path" else "train"]
    named = [f for f in found if any(w in os.path.relpath(f, snapshot).lower() for w in words)]
    return named or found


def expand(key: str, paths: List[str], cluster: Optional[str] = None) -> List[FileSpec]:
    """Files named by a config key: files as given, directories as their data files (sorted), hub
    dataset ids (`org/name`) as their files in the local Hugging Face cache."""
    out: List[FileSpec] = []
    for path in paths:
        snapshot = io.local_dataset_dir(path, key)
        if snapshot is not None:
            # records naming no cluster are the dataset's (its file names are split shards)
            name = path.split("/")[-1]
            out += [FileSpec(f, cluster, default_cluster=name) for f in _hub_files(key, snapshot, path)]
            continue
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(EXTENSIONS))
            if not found:
                raise DataError(f"{key}: directory {path} holds no {'/'.join(EXTENSIONS)} file")
            out += [FileSpec(f, cluster) for f in found]
        elif os.path.isfile(path):
            if not path.endswith(EXTENSIONS):
                raise DataError(f"{key}: {path} is not a {'/'.join(EXTENSIONS)} file")
            out.append(FileSpec(path, cluster))
        else:
            raise DataError(f"{key}: no such file or directory: {path}")
    return out


class _OutOfRange(ValueError):
    pass


def _float64(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: Python reads it as inf, pyarrow refuses it
        raise _OutOfRange(text)
    return value


def _out_of_range(where: str, e: _OutOfRange) -> str:
    return (
        f"{where}: the number {e} is out of range (pyarrow reads numbers as 64-bit floats); quote it to keep it as text"
    )


def _first_json_error(path: str) -> Optional[str]:
    """`file:line: problem` for the first malformed JSON in a .json/.jsonl file, or the first number
    pyarrow cannot hold, else None."""
    numbers = dict(parse_float=_float64)
    with _open(path, "r", encoding="utf-8", errors="strict") as f:
        if path.removesuffix(".gz").endswith(".json"):
            try:
                json.load(f, **numbers)
            except json.JSONDecodeError as e:
                return f"{path}:{e.lineno}: malformed JSON ({e.msg})"
            except _OutOfRange as e:
                return _out_of_range(path, e)
            except UnicodeDecodeError as e:
                return f"{path}: not UTF-8 text ({e.reason})"
            return None
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line, **numbers)
                except json.JSONDecodeError as e:
                    return f"{path}:{lineno}: malformed JSON ({e.msg})"
                except _OutOfRange as e:
                    return _out_of_range(f"{path}:{lineno}", e)
                if not isinstance(value, dict):
                    return f"{path}:{lineno}: expected a JSON object per line, got {type(value).__name__}"
        except UnicodeDecodeError as e:
            return f"{path}: not UTF-8 text ({e.reason})"
    return None


# Far beyond any instruction record (chat messages nest 3-4 levels); pyarrow's JSON reader crashes
# the process (a segfault, no message) on records nested ~20,000 deep, so deeper ones are refused first.
MAX_JSON_DEPTH = 200


def _depth(line: bytes) -> int:
    """Deepest bracket nesting of one JSON line, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in line.decode("utf-8", "replace"):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def check_json_text(path: str) -> None:
    """DataError naming file:line for text pyarrow would fail on inside a string (invalid UTF-8: an
    uncaught UnicodeDecodeError later) or crash on (nesting deeper than MAX_JSON_DEPTH). One pass of
    C-speed checks per line; the character scan runs only on lines with that many brackets."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with _open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
            if line.count(b"{") + line.count(b"[") > MAX_JSON_DEPTH and _depth(line) > MAX_JSON_DEPTH:
                raise DataError(
                    f"{path}:{lineno}: a record nested deeper than {MAX_JSON_DEPTH} levels; not an instruction record"
                )


def read_raw(path: str) -> Any:
    """One file as a `datasets.Dataset` of its raw records."""
    import datasets

    builder = {".parquet": "parquet", ".csv": "csv"}.get(os.path.splitext(path)[1], "json")
    if os.path.getsize(path) == 0:
        return datasets.Dataset.from_dict({})
    if builder == "json":
        check_json_text(path)
    try:
        return datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as e:  # datasets wraps arrow/json errors in several types
        problem = _first_json_error(path) if builder == "json" else None
        if problem:
            raise DataError(problem) from None
        while e.__cause__ or e.__context__:  # datasets' wrapper says only "an error occurred": the reader's own
            e = e.__cause__ or e.__context__
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: could not be read ({reason})") from None


def map_columns(raw: Any, columns: Optional[Dict[str, str]], path: str) -> Any:
    """`raw` with the file's fields renamed to ours (`data.columns`: ours -> theirs)."""
    if not columns:
        return raw
    missing = {ours: theirs for ours, theirs in columns.items() if theirs not in raw.column_names}
    if missing:
        ours, theirs = next(iter(missing.items()))
        raise DataError(f"{path}: data.columns.{ours}={theirs!r} is not one of its fields {sorted(raw.column_names)}")
    clash = [ours for ours, theirs in columns.items() if ours != theirs and ours in raw.column_names]
    if clash:
        raise DataError(
            f"{path}: data.columns renames a field to {clash[0]!r}, which the file already has; map that one too "
            "or drop it from the file"
        )
    return raw.rename_columns({theirs: ours for ours, theirs in columns.items() if ours != theirs})


def _normalizer(fmt: str, src: SourceInfo, on_bad_record: str, part: str, detected: bool):
    """`detected`: the file's format was detected (data.format=auto), so each record may be read by
    its own fields (a file mixing formats); a format set by data.format applies to every record."""

    def fn(batch: Dict[str, List[Any]], indices: List[int]) -> Dict[str, List[Any]]:
        cols = list(batch)
        out: Dict[str, List[Any]] = {k: [] for k in _features()}
        for row, index in enumerate(indices):
            rec = {c: batch[c][row] for c in cols}
            try:
                examples = normalize(rec, record_format(rec, fmt) if detected else fmt, index, src)
            except BadRecord as e:
                if on_bad_record == "error":
                    raise DataError(f"{src.path}: record {index + 1}: {e} (data.on_bad_record=error)") from None
                examples = [
                    dict(
                        id="",
                        prompt="",
                        input="",
                        response="",
                        messages=[],
                        cluster="",
                        difficulty=None,
                        source=src.name,
                        _error=f"{index + 1}:{e}",  # the record's line/position, then why
                    )
                ]
            for ex in examples:
                ex.setdefault("_error", "")
                ex["part"] = part
                for k in out:
                    out[k].append(ex[k])
        return out

    return fn


def load_examples(
    specs: List[FileSpec],
    fmt: str,
    cluster_field: Optional[str],
    difficulty_field: Optional[str],
    on_bad_record: str,
    num_proc: int = 1,
    judge_fields: Optional[List[str]] = None,
    skipped: Optional[Dict[str, List[str]]] = None,
    columns: Optional[Dict[str, str]] = None,
) -> Tuple[Any, Dict[str, int]]:
    """All files as one dataset of example records, and counts (`records`, `skipped_bad`).

    `skipped`, when given, collects the skipped records by reason: reason -> [`file:record`, ...].
    `columns` (data.columns): our field names -> the files' own, renamed before the format is detected."""
    import datasets

    parts = []
    stats = {"records": 0, "skipped_bad": 0}
    for spec in specs:
        raw = read_raw(spec.path)
        if len(raw) == 0:
            continue
        raw = map_columns(raw, columns, spec.path)
        file_fmt = detect_format(raw.column_names, spec.path) if fmt == "auto" else fmt
        name = os.path.basename(spec.path)
        stem = name.split(".")[0]
        src = SourceInfo(
            path=spec.path,
            name=name,
            cluster=spec.cluster,
            default_cluster=spec.default_cluster or stem,
            cluster_field=cluster_field,
            difficulty_field=difficulty_field,
            judge_fields=tuple(judge_fields) if judge_fields else None,
        )
        examples = raw.map(
            _normalizer(file_fmt, src, on_bad_record, spec.part, detected=fmt == "auto"),
            batched=True,
            with_indices=True,
            remove_columns=raw.column_names,
            features=_features(),
            num_proc=num_proc if num_proc > 1 else None,
            desc=f"normalise {name}",
        )
        errors = [err for err in examples["_error"] if err]
        bad = len(errors)
        for err in errors if skipped is not None else ():
            record, reason = err.split(":", 1)
            skipped.setdefault(reason, []).append(f"{name}:{record}")
        if bad:
            examples = examples.filter(lambda e: not e["_error"], num_proc=num_proc if num_proc > 1 else None)
        stats["skipped_bad"] += bad
        stats["records"] += len(examples)
        parts.append(examples.remove_columns("_error"))
    if not parts or stats["records"] == 0:
        names = ", ".join(s.path for s in specs)
        raise DataError(
            f"no usable record in {names}"
            + (f" ({stats['skipped_bad']} unusable records skipped)" if stats["skipped_bad"] else "")
        )
    return datasets.concatenate_datasets(parts), stats

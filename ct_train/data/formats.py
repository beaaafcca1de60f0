"""Instruction-data formats: detect a file's format from its fields and normalise its records.

Every format becomes the same example record (DESIGN.md, "Example"):

    id, prompt, input, response, messages, cluster, difficulty, source

`prompt`/`input`/`response` carry single-turn data (`input` is Alpaca's optional context);
`messages` (role/content dicts) carries conversations, with a loss on every assistant turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ct_train.errors import DataError

CLUSTER_FIELDS = ("cluster", "task", "category")
DIFFICULTY_FIELDS = ("difficulty", "score")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


# Tool-calling turns (ShareGPT's function_call/observation as LLaMA-Factory writes them, OpenAI-style
# tool/function messages): ct_train renders no tool calls, so such a record is skipped under this name.
TOOL_TURNS = ("function_call", "observation", "tool", "function", "ipython", "tool_call")
TOOL_REASON = "tool-call turns ({}) are not trained (ct_train renders no tool calls); drop them or the record"


class BadRecord(ValueError):
    """A record with no usable prompt/response; skipped and counted, or fatal (`data.on_bad_record`)."""


@dataclass
class SourceInfo:
    """What normalisation needs to know about the file a record came from."""

    path: str
    name: str  # file name, used in generated ids: "<name>:<index>"
    cluster: Optional[str]  # forced cluster (data.sources) or None
    default_cluster: str  # when the record names none
    cluster_field: Optional[str]
    difficulty_field: Optional[str]
    judge_fields: Optional[Tuple[str, str]] = None  # (teacher, student): difficulty = their difference


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _alpaca(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    prompt, response = _text(rec.get("instruction")), _text(rec.get("output"))
    return [dict(prompt=prompt, input=_text(rec.get("input")), response=response, messages=[])]


def _prompt_response(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [
        dict(
            prompt=_text(rec.get("prompt")),
            input=_text(rec.get("input")),
            response=_text(rec.get("response")),
            messages=[],
        )
    ]


def _chat_turns(value: Any, field: str) -> List[Dict[str, str]]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise BadRecord(f"{field!r} must be a string or a list of {{role, content}} messages")
    return [{"role": str(m.get("role", "")), "content": _text(m.get("content"))} for m in value]


def _prompt_completion(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """TRL's prompt-completion rows: standard (two strings) or conversational (two message lists,
    the completion's assistant turn(s) trained; earlier assistant turns in the prompt are trained too,
    as in every chat record here)."""
    prompt, completion = rec.get("prompt"), rec.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return [dict(prompt=_text(prompt), input="", response=_text(completion), messages=[])]
    if isinstance(prompt, str):  # a string prompt before a conversational completion
        prompt = [{"role": "user", "content": prompt}]
    messages = _chat_turns(prompt, "prompt") + _chat_turns(completion, "completion")
    return [dict(prompt="", input="", response="", messages=messages)]


def _phased(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    turns = rec.get("data")
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        raise BadRecord("'data' must be a list [instruction, response, ...] of even length")
    if len(turns) == 2:
        return [dict(prompt=_text(turns[0]), input="", response=_text(turns[1]), messages=[])]
    roles = ["user", "assistant"] * (len(turns) // 2)
    return [
        dict(
            prompt="", input="", response="", messages=[{"role": r, "content": _text(t)} for r, t in zip(roles, turns)]
        )
    ]


def _sharegpt(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    # A top-level `system` (ShareGPT as LLaMA-Factory and axolotl write it) is the first message.
    messages = [{"role": "system", "content": _text(rec["system"])}] if _text(rec.get("system")) else []
    for turn in rec.get("conversations") or []:
        speaker = str(turn.get("from", "")).lower()
        if speaker in TOOL_TURNS:
            raise BadRecord(TOOL_REASON.format(speaker))
        role = SHAREGPT_ROLES.get(speaker)
        if role is None:
            raise BadRecord(f"unknown ShareGPT speaker {turn.get('from')!r}")
        messages.append({"role": role, "content": _text(turn.get("value"))})
    return [dict(prompt="", input="", response="", messages=messages)]


def _messages(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    if not rec.get("messages") and rec.get("prompt"):  # a single-turn row of a mixed file (ct-train-score's output)
        return _prompt_response(rec)
    messages = [{"role": str(m.get("role", "")), "content": _text(m.get("content"))} for m in rec.get("messages") or []]
    return [dict(prompt="", input="", response="", messages=messages)]


def _self_instruct(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    out = []
    for j, inst in enumerate(rec.get("instances") or []):
        out.append(
            dict(
                prompt=_text(rec.get("instruction")),
                input=_text(inst.get("input")),
                response=_text(inst.get("output")),
                messages=[],
                _suffix=f":{j}",
                _cluster=rec.get("name"),
            )
        )
    if not out:
        raise BadRecord("self-instruct task has no instances")
    return out


FORMATS: Dict[str, Callable[[Dict[str, Any]], List[Dict[str, Any]]]] = {
    "alpaca": _alpaca,
    "phased": _phased,
    "sharegpt": _sharegpt,
    "messages": _messages,
    "self_instruct": _self_instruct,
    "prompt_response": _prompt_response,
    "prompt_completion": _prompt_completion,
}


def _match(cols: set) -> Optional[str]:
    """The format named by a set of field names (the first rule that matches wins), or None."""
    if "data" in cols and ("score" in cols or "id" in cols):
        return "phased"
    if "conversations" in cols:
        return "sharegpt"
    if "messages" in cols:
        return "messages"
    if {"instruction", "instances"} <= cols:
        return "self_instruct"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "response"} <= cols:
        return "prompt_response"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    return None


def record_format(rec: Dict[str, Any], file_fmt: str) -> str:
    """The format of one record of an auto-detected file, from the fields it fills. A JSON lines file
    that mixes formats (Alpaca rows among chat rows) has the union of their fields as its columns, so
    the file's format fits only some rows; the others are read by their own fields."""
    return _match({k for k, v in rec.items() if v not in (None, "", [])}) or file_fmt


def detect_format(columns: Iterable[str], path: str) -> str:
    """The format of a file from its field names (the first rule that matches wins)."""
    cols = set(columns)
    found = _match(cols)
    if found:
        return found
    if "text" in cols:
        raise DataError(
            f"{path}: a `text` column is TRL's language-modelling format (a loss on every token); ct_train "
            "trains on responses: give prompt/completion (or messages) records instead"
        )
    raise DataError(
        f"{path}: cannot tell the format from its fields {sorted(cols)}; expected Alpaca "
        "(instruction/input/output), Phased-IFT (id/score/data), ShareGPT (conversations), "
        "chat (messages), Self-Instruct (instruction/instances), prompt/response or TRL's prompt/completion; "
        "or set data.format"
    )


def _number(rec: Dict[str, Any], key: str, where: str) -> Optional[float]:
    value = rec.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):  # float(True) is 1.0: a flag is not a difficulty
        raise DataError(f"{where}: difficulty field {key!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: difficulty field {key!r} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: difficulty field {key!r} must be finite, got {value!r}")
    return number


def _difficulty(rec: Dict[str, Any], src: SourceInfo, where: str) -> Optional[float]:
    if src.judge_fields:  # TAPIR's judge gap: None unless both scores are there
        teacher, student = (_number(rec, key, where) for key in src.judge_fields)
        return None if teacher is None or student is None else teacher - student
    keys = (src.difficulty_field,) if src.difficulty_field else DIFFICULTY_FIELDS
    for key in keys:
        number = _number(rec, key, where)
        if number is not None:
            return number
    return None


def _cluster(rec: Dict[str, Any], src: SourceInfo, derived: Any, where: str) -> str:
    if src.cluster is not None:
        return src.cluster
    keys = (src.cluster_field,) if src.cluster_field else CLUSTER_FIELDS
    for key in keys:
        value = rec.get(key)
        if value in (None, ""):
            continue
        if isinstance(value, (list, dict, bool)):  # str() would make a cluster named "['a', 'b']"
            raise DataError(f"{where}: cluster field {key!r} must be one name (a string or a number), got {value!r}")
        return str(value)
    if derived not in (None, ""):
        return str(derived)
    return src.default_cluster


def _usable(ex: Dict[str, Any]) -> None:
    if ex["messages"]:
        roles = [m["role"] for m in ex["messages"]]
        bad = sorted({r for r in roles if r not in ("system", "user", "assistant")})
        if set(bad) & set(TOOL_TURNS):
            raise BadRecord(TOOL_REASON.format(", ".join(r for r in bad if r in TOOL_TURNS)))
        if bad:
            raise BadRecord(f"unknown message roles {bad}")
        if not any(r == "assistant" and m["content"] for r, m in zip(roles, ex["messages"])):
            raise BadRecord("no assistant turn with content")
        if not any(r == "user" for r in roles):
            raise BadRecord("no user turn")
    else:
        if not ex["prompt"]:
            raise BadRecord("empty prompt/instruction")
        if not ex["response"]:
            raise BadRecord("empty response/output")


def normalize(rec: Dict[str, Any], fmt: str, index: int, src: SourceInfo) -> List[Dict[str, Any]]:
    """One raw record as example records (several for a Self-Instruct task). Raises BadRecord."""
    where = f"{src.path}: record {index + 1}"
    out = []
    base_id = str(rec["id"]) if rec.get("id") not in (None, "") else f"{src.name}:{index}"
    difficulty = _difficulty(rec, src, where)
    for ex in FORMATS[fmt](rec):
        suffix = ex.pop("_suffix", "")
        derived_cluster = ex.pop("_cluster", None)
        _usable(ex)
        ex.update(
            id=base_id + suffix,
            cluster=_cluster(rec, src, derived_cluster, where),
            difficulty=difficulty,
            source=src.name,
        )
        out.append(ex)
    return out

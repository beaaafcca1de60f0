"""Prompt templates and response-only labels.

A template renders an example record as text segments, each marked as target (trained on) or not.
Segments are tokenised one by one and concatenated, so the label mask follows segment boundaries
exactly: prompt tokens get -100, response tokens (and the end-of-turn token after them) keep their ids.

`chat` uses the tokenizer's own chat template. The conversation is rendered incrementally (prefix up
to each assistant turn with the generation prompt, then including that turn) and the difference is the
assistant's text; templates that do not render incrementally are rejected with a clear message.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ct_train.errors import ConfigError

Segment = Tuple[str, bool]  # (text, is_target)

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)


def _turns(ex: Dict[str, Any]) -> List[Dict[str, str]]:
    """The example as role/content messages (single-turn records become user + assistant)."""
    if ex["messages"]:
        return list(ex["messages"])
    user = ex["prompt"] + (f"\n\n{ex['input']}" if ex["input"] else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": ex["response"]}]


def _alpaca(ex: Dict[str, Any], eos: str, preamble: bool) -> List[Segment]:
    segs: List[Segment] = []
    if not ex["messages"]:
        head = (ALPACA_PREAMBLE_INPUT if ex["input"] else ALPACA_PREAMBLE) if preamble else ""
        head += f"### Instruction:\n{ex['prompt']}\n\n"
        if ex["input"]:
            head += f"### Input:\n{ex['input']}\n\n"
        return [(head + "### Response:\n", False), (ex["response"] + eos, True)]
    text = ALPACA_PREAMBLE if preamble else ""
    for m in ex["messages"]:
        if m["role"] == "system":
            text += m["content"] + "\n\n"
        elif m["role"] == "user":
            text += f"### Instruction:\n{m['content']}\n\n### Response:\n"
        else:
            segs.append((text, False))
            segs.append((m["content"] + eos, True))
            text = "\n\n"
    return segs


TEMPLATES = {
    "alpaca": lambda ex, eos: _alpaca(ex, eos, preamble=True),
    "simple": lambda ex, eos: _alpaca(ex, eos, preamble=False),
    # The prompt, a newline, the response: no instruction markers (short synthetic suites, cheap steps).
    "bare": lambda ex, eos: _bare(ex, eos),
}


def _bare(ex: Dict[str, Any], eos: str) -> List[Segment]:
    if ex["messages"]:
        raise ConfigError("data.template=bare takes prompt/response records, not chat messages; use simple or chat")
    prompt = ex["prompt"] + (f"\n{ex['input']}" if ex["input"] else "")
    return [(prompt + "\n", False), (ex["response"] + eos, True)]


def _chat(ex: Dict[str, Any], tokenizer: Any) -> List[Segment]:
    msgs = _turns(ex)

    def render(upto: int, gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs[:upto], tokenize=False, add_generation_prompt=gen)

    segs: List[Segment] = []
    done = ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix, full = render(i, True), render(i + 1, False)
        if not (prefix.startswith(done) and full.startswith(prefix)):
            raise ConfigError(
                "data.template=chat: this tokenizer's chat template does not render conversations "
                "incrementally, so assistant tokens cannot be located; use data.template=alpaca"
            )
        segs += [(prefix[len(done) :], False), (full[len(prefix) :], True)]
        done = full
    tail = render(len(msgs), False)[len(done) :]
    if tail:
        segs.append((tail, False))
    return segs


def _literal(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def chat_template_for(template: str) -> str:
    """A Jinja chat template that renders messages exactly as `template` rendered them in training
    (BOS first, as `tokenize_example` adds it), so `apply_chat_template` at inference gives the
    training text; with add_generation_prompt the prompt already ends where the response starts."""
    bos = "{% if bos_token %}{{ bos_token }}{% endif %}"
    if template == "bare":
        turns = (
            "{% for m in messages %}{% if m.role == 'user' %}{{ m.content + " + _literal("\n") + " }}"
            "{% elif m.role == 'assistant' %}{{ m.content + eos_token }}{% endif %}{% endfor %}"
        )
        return bos + turns
    if template not in ("alpaca", "simple"):
        raise ValueError(f"no chat template for data.template={template}")
    preamble = _literal(ALPACA_PREAMBLE) if template == "alpaca" else None
    return (
        bos
        + ("{{ " + preamble + " }}" if preamble else "")
        + "{% for m in messages %}"
        + "{% if m.role == 'system' %}{{ m.content + "
        + _literal("\n\n")
        + " }}"
        + "{% elif m.role == 'user' %}{{ "
        + _literal("### Instruction:\n")
        + " + m.content + "
        + _literal("\n\n### Response:\n")
        + " }}"
        + "{% else %}{{ m.content + eos_token }}{% if not loop.last %}{{ "
        + _literal("\n\n")
        + " }}{% endif %}{% endif %}"
        + "{% endfor %}"
    )


def with_chat_template(tokenizer: Any, template: str) -> Any:
    """The tokenizer to export: as it is when it has a chat template (training used it), else a copy
    whose chat template renders the training template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    import copy

    out = copy.deepcopy(tokenizer)
    out.chat_template = chat_template_for(template)
    return out


def resolve_template(name: str, tokenizer: Any) -> str:
    """`auto` -> `chat` when the tokenizer has a chat template, else `alpaca`."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if name == "auto":
        return "chat" if has_chat else "alpaca"
    if name == "chat" and not has_chat:
        raise ConfigError("data.template=chat but the tokenizer has no chat template; use alpaca or simple")
    return name


def render(ex: Dict[str, Any], template: str, tokenizer: Any) -> List[Segment]:
    if template == "chat":
        return _chat(ex, tokenizer)
    return TEMPLATES[template](ex, tokenizer.eos_token or "")


# Tokens a field's text is cut to before tokenising, past max_seq_len: a margin for the tokens at the
# cut, which may differ from the uncut text's (they lie past max_seq_len and are dropped anyway).
CUT_MARGIN_TOKENS = 16


def max_token_chars(tokenizer: Any) -> int:
    """The most characters one token of this vocabulary spells (>= 1). A byte-level vocabulary writes
    each byte as one character, so this also bounds the bytes, hence the characters, of a token."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return max([len(t) for t in vocab] + [1])


def field_char_limit(tokenizer: Any, max_seq_len: int) -> int:
    """Characters a text field keeps before tokenising: any longer text spells more than max_seq_len
    tokens (each token spells at most max_token_chars), so the kept tokens are the same, and memory
    and time are bounded by max_seq_len instead of by the record (a 20 MB line took 4.5 GB)."""
    return (max_seq_len + CUT_MARGIN_TOKENS) * max_token_chars(tokenizer)


def _cut_fields(ex: Dict[str, Any], limit: int) -> Dict[str, Any]:
    """The record with every text field cut to `limit` characters (the record itself when none is longer)."""
    texts = [ex.get(k) or "" for k in ("prompt", "input", "response")]
    texts += [m.get("content") or "" for m in ex.get("messages") or []]
    if all(len(t) <= limit for t in texts if isinstance(t, str)):
        return ex
    out = {k: (v[:limit] if k in ("prompt", "input", "response") and isinstance(v, str) else v) for k, v in ex.items()}
    if ex.get("messages"):
        out["messages"] = [
            {**m, "content": m["content"][:limit]} if isinstance(m.get("content"), str) else m for m in ex["messages"]
        ]
    return out


def tokenize_example(
    ex: Dict[str, Any],
    template: str,
    tokenizer: Any,
    max_seq_len: int,
    response_only: bool = False,
    char_limit: Optional[int] = None,
) -> Dict[str, Any]:
    """input_ids and labels (-100 on prompt tokens), cut to `max_seq_len`.

    Returns also `full_length` (the length before the cut to max_seq_len; for a text longer than
    `char_limit`, `field_char_limit`'s cut, the length of the cut text, still > max_seq_len) and
    `n_target`: how many labels are predicted after the causal shift (labels[1:] != -100), the count
    every loss normalisation uses.
    `response_only`: the response segments without the prompt (the denominator of IFD scoring).
    """
    if char_limit is not None:
        ex = _cut_fields(ex, char_limit)
    ids: List[int] = []
    labels: List[int] = []
    if template != "chat" and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(-100)
    for text, is_target in render(ex, template, tokenizer):
        if not text or (response_only and not is_target):
            continue
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if is_target else [-100] * len(seg)
    full_length = len(ids)
    ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    n_target = sum(1 for label in labels[1:] if label != -100)
    return {"input_ids": ids, "labels": labels, "full_length": full_length, "n_target": n_target}

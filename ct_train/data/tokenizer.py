"""Tokenizers without a download: a local Hugging Face directory, or the built-in byte-level one.

The byte-level tokenizer maps each UTF-8 byte to one id (byte + 4, after <pad> <s> </s> <unk>), so
it handles any text, CJK included, needs no training data, and is identical on every machine. It is a
real `tokenizers` BPE with no merges wrapped in a fast tokenizer, so it saves with the model and
`AutoTokenizer.from_pretrained(final/)` loads it back.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any, Dict, Optional

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


@cache
def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of ByteLevel pre-tokenizers."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def byte_tokenizer() -> Any:
    """The built-in byte-level tokenizer (260 ids) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b, ch in sorted(_bytes_to_unicode().items()):
        vocab[ch] = len(SPECIAL_TOKENS) + b
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def load_tokenizer(tokenizer_path: Optional[str], model_path: Optional[str]) -> Any:
    """`model.tokenizer` if set, else the one in `model.path`, else the byte-level tokenizer."""
    path = tokenizer_path or model_path
    if path is None or path == "byte":
        return byte_tokenizer()
    from transformers import AutoTokenizer

    from ct_train.errors import ConfigError

    key = "model.tokenizer" if tokenizer_path else "model.path"
    if not os.path.isdir(path):
        # (transformers would read a missing local path as a hub repo id and say so, which misleads.)
        raise ConfigError(
            f"{key}={path} does not exist: expected a local Hugging Face model directory "
            "(config.json, weights, tokenizer files); nothing is downloaded"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{key}={path}: no loadable Hugging Face tokenizer there ({str(e).splitlines()[0]})"
        ) from None
    if tok.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id works; eos is conventional.
        tok.pad_token = tok.eos_token
    return tok

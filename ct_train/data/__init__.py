"""Instruction data: formats, loading through `datasets`, templates and labels, the skill suite."""

from ct_train.data.batching import MicroBatch, collate
from ct_train.data.prepare import PreparedData, TokenizedSplit, prepare_data
from ct_train.data.tokenizer import byte_tokenizer, load_tokenizer

__all__ = [
    "MicroBatch",
    "PreparedData",
    "TokenizedSplit",
    "byte_tokenizer",
    "collate",
    "load_tokenizer",
    "prepare_data",
]

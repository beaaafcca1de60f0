"""Instruction data: formats, loading through `datasets`, templates and labels, the skill suite."""

from ct_train.data.batching import MicroBatch, collate, group_by_length
from ct_train.data.prepare import PreparedData, TokenizedSplit, prepare_data
from ct_train.data.tokenizer import byte_tokenizer, load_tokenizer

__all__ = [
    "MicroBatch",
    "PreparedData",
    "TokenizedSplit",
    "byte_tokenizer",
    "collate",
    "group_by_length",
    "load_tokenizer",
    "prepare_data",
]

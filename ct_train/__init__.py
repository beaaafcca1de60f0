"""ct_train: curriculum-learning instruction tuning on DeepSpeed ZeRO-3."""

__version__ = "0.1.0"

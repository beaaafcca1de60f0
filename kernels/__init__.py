"""Fused linear cross-entropy kernels, importable as `ct_train.kernels` (see setup.py's package_dir).

The package lives at the top level (the design card's layout) but installs inside ct_train: a
top-level package named `kernels` would shadow the `kernels` package transformers probes for.
"""

from ct_train.kernels.cross_entropy import linear_cross_entropy

__all__ = ["linear_cross_entropy"]

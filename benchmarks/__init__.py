"""Micro-benchmarks and planted simulations outside the library (figures in docs/benchmarks.md)."""

"""Benchmarks that print measured numbers: the engine against raw mlx-lm, the app against the
engine, adapter swaps, session resume. ``workbench bench`` runs them."""

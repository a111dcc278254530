"""Evaluation on the ADL-X benchmarks (SPEC section 9): benchmark loaders, reply parsing, judging and metrics."""

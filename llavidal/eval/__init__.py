"""Evaluation on the ADL-X benchmarks: benchmark loaders, reply parsing, judging and metrics.

Formats and protocols: docs/design.md#benchmarks.
"""

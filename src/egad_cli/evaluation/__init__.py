"""Metrics behind egad eval and inspect-entropy: metric functions and chunked token passes.

Metric functions are pure (tensors in, floats out) and tested against hand-computed values;
the passes compute per-token metrics in token chunks (``metrics.token_metrics``). Run-dir and
sweep plumbing lives with the commands (``egad_cli.commands.runs``, ``egad_cli.commands.sweep``).
"""

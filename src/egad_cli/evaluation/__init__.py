"""Analysis behind egad eval, inspect-entropy and report: metric functions, token passes, run dirs, sweeps.

Metric functions are pure (tensors in, floats out) and tested against hand-computed values;
the passes compute per-token metrics in token chunks (``metrics.token_metrics``).
"""

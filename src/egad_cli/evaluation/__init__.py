"""Analysis behind egad eval, inspect-entropy and report: metric functions, token passes, run dirs, sweeps.

Metric functions are pure (tensors in, floats out) and tested against hand-computed values;
the passes reuse the engine's chunked per-token metrics (``engine.heldout.token_metrics``).
"""

"""The environment for subprocesses that only have to *run* (documented commands,
benchmark smoke tests, the multi-host launch): XLA:CPU with less LLVM optimisation.

Their tiny configs spend most of their time compiling; these two flags take about
a third off the compile time (depth benchmark at test size: 70 → 49 CPU seconds)
and change no result beyond float32 rounding. Tests that compare numbers across
XLA:CPU configurations do not use it. Any XLA_FLAGS already set (e.g. the
numerics run's ``--xla_cpu_max_isa=AVX2``) are kept, before these.
"""

from __future__ import annotations

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def fast_compile_env(**changes: str) -> dict[str, str]:
    """``os.environ`` with ``changes`` and the fast-compile XLA flags appended."""
    env = {**os.environ, **changes}
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()
    return env

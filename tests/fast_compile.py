"""XLA:CPU with less LLVM optimisation for the whole test session.

Most of the suite's time is XLA compiling tiny programs that then run for a few
milliseconds: these two flags take about a quarter off the suite's CPU time
(measured on ``tests/test_cagrad.py tests/test_depth_train.py
tests/test_loss_groups.py``: 194 → 142 CPU seconds) and change no result beyond
float32 rounding, which every tolerance already allows for (the brief's second
XLA:CPU configurations run the same tests).

``tests/conftest.py`` applies them before jax is imported, so every test, every
xdist worker and every subprocess a test starts (they inherit the environment)
compiles alike. ``make test-numerics`` sets ``COVJAX_TESTS_FULL_OPTIMISATION=1``
to run the numerically sensitive tests under XLA's default optimisation instead.
Any XLA_FLAGS already set (e.g. ``--xla_cpu_max_isa=AVX2``) are kept, before these.
"""

from __future__ import annotations

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
#: Set to 1 to compile the tests with XLA's default optimisation.
FULL_OPTIMISATION = "COVJAX_TESTS_FULL_OPTIMISATION"


def use_fast_compile() -> None:
    """Append the fast-compile flags to ``XLA_FLAGS`` unless ``FULL_OPTIMISATION`` is 1.

    Call before jax is imported: XLA reads its flags once, when the backend starts.
    """
    if os.environ.get(FULL_OPTIMISATION) == "1":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if FAST_COMPILE_FLAGS not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAGS}".strip()


if __name__ == "__main__":
    # `make test` builds the docs with the tests' flags too (they share one compilation
    # cache, whose keys include the flags): print XLA_FLAGS as the session sets them.
    use_fast_compile()
    print(os.environ.get("XLA_FLAGS", ""))

"""Shared pytest configuration: CPU only, quiet TensorFlow, deterministic hypothesis,
one persistent XLA compilation cache for the session."""

import os
import shutil
import tempfile

from fast_compile import use_fast_compile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# The experiments' tests compile the same tiny networks again and again, in
# process and in the subprocesses of the documented commands, and compiling is
# most of their time: one persistent compilation cache for the whole session,
# shared by the xdist workers (they inherit this environment) and by every
# subprocess a test starts. Set JAX_COMPILATION_CACHE_DIR to keep one between runs.
# Every program is cached, however quickly it compiled (JAX's default keeps only
# those over 1 s): the tests build new jitted functions of identical programs again
# and again, so a hit is common; on tests/test_loss_values.py,
# tests/test_aggregator_properties.py and tests/test_experiment_common.py this
# takes the CPU time from 356 to 226 s.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="covjax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE

# Compiling is most of the suite's time: less LLVM optimisation (tests/fast_compile.py).
use_fast_compile()

import jax  # noqa: E402  (after the environment above, which jax reads on import)
from hypothesis import settings  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

settings.register_profile("covjax", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("covjax")


def pytest_unconfigure(config: object) -> None:
    if _SESSION_CACHE is not None:  # only the process that made it (xdist's controller)
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config: object, items: list) -> None:
    """The end-to-end runs (``slow``) first: started early, the longest tests overlap
    with the many short ones on the other worker instead of running alone at the end.
    The order is deterministic, as xdist requires of every worker's collection."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

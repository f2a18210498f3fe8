"""Shared pytest configuration: CPU only, quiet TensorFlow, deterministic hypothesis."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from hypothesis import settings

settings.register_profile("covjax", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("covjax")

"""The config fields every task's config shares (read by :mod:`experiments.common.train`).

Each experiment's ``configs/default.py`` starts from :func:`machinery_defaults`
and sets only what is its own (model, data, evaluation) and the values it
changes (optimiser, steps, scheme).
"""

from __future__ import annotations

import ml_collections


def machinery_defaults() -> ml_collections.ConfigDict:
    """Optimisation, weighting, logging, checkpoint and device fields, with defaults."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Optimisation.
    config.optimizer = "adam"
    config.learning_rate = 1e-4
    config.lr_schedule = "constant"  # or "cosine": warm-up, then decay to 10% at the end
    config.warmup_steps = 0
    config.momentum = 0.9
    config.batch_size = 8
    config.steps_per_epoch = 64
    config.num_train_steps = 640

    # Weighting: a name of experiments.common.schemes.SCHEMES, its keyword
    # arguments per scheme, and optional gradient-target overrides.
    config.scheme = "cov"
    config.scheme_kwargs = ml_collections.ConfigDict()
    config.scheme_gradient_target = ml_collections.ConfigDict()
    config.gradient_chunk_size = ml_collections.config_dict.placeholder(int)
    # Pull back groups of losses that reach different layers separately (same result).
    config.group_losses = True

    # Logging and checkpoints.
    config.log_every_steps = 10
    config.checkpoint_every_steps = 200
    config.max_checkpoints_to_keep = 2

    # Devices: all by default; multi-process runs set distributed = True. The
    # three launch fields go to jax.distributed.initialize; left unset, JAX
    # detects them on SLURM, Cloud TPU and MPI. On a plain machine give all
    # three: process 0's HOST:PORT (a loopback one is also where it binds),
    # the process count and this process's index (see the README).
    config.num_devices = ml_collections.config_dict.placeholder(int)
    config.distributed = False
    config.coordinator_address = ml_collections.config_dict.placeholder(str)
    config.num_processes = ml_collections.config_dict.placeholder(int)
    config.process_id = ml_collections.config_dict.placeholder(int)
    return config

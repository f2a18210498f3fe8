"""The config fields every task's config shares (read by :mod:`experiments.common.train`).

Each experiment's ``configs/default.py`` starts from :func:`machinery_defaults`
and sets only what is its own (model, data via :func:`data_defaults`,
evaluation) and the values it changes (optimiser, steps, scheme).

Every option a run can take is a declared field, so every one of them is a
dotted flag (``--config.scheme_kwargs.cov.decay=0.99``,
``--config.data.kitti.split_file=...``) and a misspelt one is an error naming
the fields that exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

#: The keyword options of each data source's loader (``experiments.data.<source>.load``),
#: as ``{option: (type, default)}``; ``config.data.<source>`` declares them, and only
#: the section of ``config.data.name`` reaches the loader. tests/test_cli.py checks
#: these against the loaders' signatures.
DATA_SOURCE_OPTIONS: dict[str, dict[str, tuple[type, Any]]] = {
    "synthetic": {
        "height": (int, 64),
        "width": (int, 128),
        "num_train": (int, 2000),
        "num_validation": (int, 200),
        "num_test": (int, 200),
        "seed": (int, 0),
    },
    "kitti": {
        "split_file": (str, None),
        "split_dir": (str, None),
        "depth_dir": (str, None),
        "with_depth": (bool, None),
        "missing_depth": (str, "skip"),
    },
    "cityscapes": {"manual_dir": (str, None), "crop_bonnet": (bool, True)},
    "pascal_context": {"background": (str, "ignore")},
    "nyuv2": {},
}


class ConfigError(ValueError):
    """A config that cannot run (unknown data source, option, scheme or value), found
    before anything is built; the command-line tools print it as one line."""


def _field(field_type: type, default: Any) -> Any:
    """A config value that may be None and still has a type the flags can parse."""
    if default is None:
        return ml_collections.FieldReference(None, field_type=field_type)
    return default


def data_defaults(
    name: str, sources: Sequence[str], **options: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """``config.data``: the source's name, its directory and one section per usable source.

    Args:
      name: the default source (``config.data.name``).
      sources: the sources this experiment can train on; each gets a section
        ``config.data.<source>`` with its loader's options (:data:`DATA_SOURCE_OPTIONS`).
      **options: per source, defaults that differ from the loader's (e.g.
        ``synthetic={"num_train": 512}``).
    """
    unknown = sorted(set(options) - set(sources))
    if unknown or name not in sources:
        raise ValueError(f"data sources {unknown or [name]} are not among {list(sources)}.")
    data = ml_collections.ConfigDict()
    data.name = name
    # Where the source lies; for "synthetic", where it is generated (default:
    # $TFDS_DATA_DIR or ~/tensorflow_datasets).
    data.data_dir = ml_collections.config_dict.placeholder(str)
    for source in sources:
        declared = DATA_SOURCE_OPTIONS[source]
        section = ml_collections.ConfigDict(
            {option: _field(*spec) for option, spec in declared.items()}
        )
        for option, value in options.get(source, {}).items():
            if option not in declared:
                raise ValueError(f"{source} has no option {option!r}; it has {sorted(declared)}.")
            section[option] = value
        data[source] = section
    return data


def scheme_defaults() -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """``(scheme_kwargs, scheme_gradient_target)``: one section per registered scheme.

    ``scheme_kwargs.<name>`` holds that scheme's settable hyper-parameters with
    their defaults (:func:`experiments.common.schemes.hyperparameters`);
    ``scheme_gradient_target.<name>`` overrides what its per-loss gradients are
    taken of (unset: the registry's choice).
    """
    from experiments.common import schemes  # local: imports covjax and JAX

    kwargs = ml_collections.ConfigDict()
    targets = ml_collections.ConfigDict()
    for name in schemes.available_schemes():
        kwargs[name] = ml_collections.ConfigDict(
            {
                parameter.name: _field(parameter.type, parameter.default)
                for parameter in schemes.hyperparameters(name)
            }
        )
        targets[name] = ml_collections.config_dict.placeholder(str)
    return kwargs, targets


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

    # Weighting: a name of experiments.common.schemes.SCHEMES, the
    # hyper-parameters of every scheme (scheme_kwargs.<name>.<parameter>), and
    # optional gradient-target overrides (scheme_gradient_target.<name>).
    config.scheme = "cov"
    config.scheme_kwargs, config.scheme_gradient_target = scheme_defaults()
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


def tiny_synthetic_data(config: ml_collections.ConfigDict) -> None:
    """The dense tasks' test data: 8/4/4 synthetic scenes rendered at the network's 32×64."""
    config.data.synthetic.update(height=32, width=64, num_train=8, num_validation=4, num_test=4)
    config.data.shuffle_buffer = 8
    config.update(image_height=32, image_width=64)


def tiny_training(config: ml_collections.ConfigDict) -> None:
    """The dense tasks' test run: 4 steps of batch 4 (epochs of 2), logged and saved every 2."""
    config.update(learning_rate=1e-3, batch_size=4, steps_per_epoch=2, num_train_steps=4)
    config.update(log_every_steps=2, checkpoint_every_steps=2)
    config.eval.batch_size = 4


def dense_data_defaults(sources: Sequence[str]) -> ml_collections.ConfigDict:
    """``config.data`` of the dense (segmentation, multi-task) experiments.

    The synthetic scenes (512 / 64 / 64) by default; training on ``"train"``
    with the input pipeline's augmentation (horizontal flip, targets mirrored
    with the image, and colour) from a 512-example shuffle buffer, the decoded
    training examples kept in memory; evaluation on ``"validation"``; 255 is
    the void label.
    """
    data = data_defaults(
        "synthetic", sources, synthetic={"num_train": 512, "num_validation": 64, "num_test": 64}
    )
    data.update(train_split="train", eval_split="validation", augment=True, shuffle_buffer=512)
    data.update(cache=True, ignore_label=255)
    return data


def eval_defaults() -> ml_collections.ConfigDict:
    """``config.eval``: batches of 8, every example (``max_examples`` to score fewer)."""
    section = ml_collections.ConfigDict()
    section.batch_size = 8
    section.max_examples = ml_collections.config_dict.placeholder(int)
    return section


def backbone_model_defaults() -> ml_collections.ConfigDict:
    """``config.model``'s fields of a network on the shared dilated ResNet
    (:mod:`experiments.common.backbones`): the synthetic scenes' 7 classes, a full-width
    ResNet-50, trained from scratch unless ``pretrained`` names a converted checkpoint."""
    model = ml_collections.ConfigDict()
    model.update(num_classes=7, backbone="resnet50", width=1.0)
    # Path of a converted torchvision ResNet checkpoint (.npz; see
    # experiments/common/backbones.py); None = train from scratch.
    model.pretrained = ml_collections.config_dict.placeholder(str)
    return model

"""What every command-line entry point shares (each experiment's ``main``, ``experiments.main``).

* ``--config`` (a config file, overridable with dotted flags such as
  ``--config.scheme_kwargs.cov.decay=0.99``), ``--show_config`` (print the
  fields the run would use, with their values, and exit) and
  ``--list_schemes`` (the weighting schemes with their hyper-parameters);
* a misspelt config field is one line naming the fields that exist there;
* quiet output: progress bars and results on the terminal, the libraries'
  INFO logs (Orbax writes ~40 lines per checkpoint) in ``<workdir>/log.txt``;
* Ctrl-C: training saves a checkpoint of its last step and the command ends
  with one line saying how to resume (exit status 130).
"""

from __future__ import annotations

import difflib
import importlib.util
import logging as python_logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# TensorFlow's C++ start-up messages are not the user's business; set before TF is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from experiments.common.config import ConfigError

LOG_FILE = "log.txt"
CONFIG_ERROR_EXIT_STATUS = 2
INTERRUPTED_EXIT_STATUS = 130  # the shell's status for a command ended by SIGINT


def define_flags(default_config: str | None = None, *, config_help: str = "") -> None:
    """``--config`` (required unless ``default_config``), ``--show_config``, ``--list_schemes``."""
    required = "" if default_config else " (required)"
    config_flags.DEFINE_config_file(
        "config",
        default_config,
        f"Config file{required}, e.g. experiments/depth/configs/cpu.py. {config_help}Any field "
        "is overridable: --config.FIELD=VALUE, e.g. --config.num_train_steps=100, "
        "--config.scheme_kwargs.cov.decay=0.99, --config.data.kitti.split_file=PATH.",
    )
    flags.DEFINE_bool(
        "show_config",
        False,
        "Print the config's fields with their values (after the overrides) and exit.",
    )
    flags.DEFINE_bool(
        "list_schemes",
        False,
        "List the weighting schemes (--config.scheme) with their hyper-parameters and exit.",
    )
    _show_in_help("config", "show_config", "list_schemes")


def _show_in_help(*names: str) -> None:
    """List flags defined here under the program's own in ``--help`` (absl shows the key
    flags of the main module, which it names by ``sys.argv[0]``)."""
    for name in names:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def define_seeds_flag() -> None:
    """``--seeds=0,1,2`` of the ``compare`` commands (default: ``config.seed``)."""
    flags.DEFINE_list(
        "seeds",
        None,
        "Seeds to train every run with; tables then give mean ± std over them "
        "(default: config.seed).",
    )
    _show_in_help("seeds")


def parse_seeds(seeds: str | Sequence[str | int]) -> list[int]:
    """``"0,1,2"`` (or a sequence) as distinct integers, in order."""
    if isinstance(seeds, str):
        seeds = [part for part in seeds.split(",") if part.strip()]
    try:
        parsed = [int(seed) for seed in seeds]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {list(seeds)}.") from None
    if not parsed or len(set(parsed)) != len(parsed):
        raise ConfigError(f"--seeds must be distinct integers, at least one; got {parsed}.")
    return parsed


def seeds_from_flags(config: ml_collections.ConfigDict) -> list[int]:
    """``--seeds``, or ``[config.seed]`` when it is not given."""
    return parse_seeds(flags.FLAGS.seeds or [config.seed])


def run(main: Callable[[ml_collections.ConfigDict], None]) -> None:
    """``app.run`` with the shared flags' behaviour; ``main`` gets the config.

    The other flags are read from ``absl.flags.FLAGS`` as usual.
    """
    _run(lambda arguments: _no_arguments(arguments, main))


def run_commands(commands: Mapping[str, Callable[[ml_collections.ConfigDict], None]]) -> None:
    """:func:`run` for a program of several commands, named by its first argument
    (``python -m experiments.depth.main train --config=...``)."""
    _run(lambda arguments: _command(arguments, commands))


def _no_arguments(
    arguments: list[str], main: Callable[[ml_collections.ConfigDict], None]
) -> Callable[[ml_collections.ConfigDict], None]:
    if arguments:
        raise app.UsageError(f"Unexpected arguments: {arguments}")
    return main


def _command(
    arguments: list[str], commands: Mapping[str, Callable[[ml_collections.ConfigDict], None]]
) -> Callable[[ml_collections.ConfigDict], None]:
    if len(arguments) != 1 or arguments[0] not in commands:
        raise app.UsageError(
            f"Give one command of {', '.join(commands)} (got {arguments or 'none'}), "
            f"e.g. `{sys.argv[0]} {next(iter(commands))} --config=... --workdir=...`."
        )
    return commands[arguments[0]]


def require_workdir() -> str:
    """``--workdir``, which every command of an experiment needs."""
    workdir = flags.FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    return workdir


def _run(
    main_for: Callable[[list[str]], Callable[[ml_collections.ConfigDict], None]],
) -> None:
    def wrapped(argv: list[str]) -> None:
        if flags.FLAGS.list_schemes:
            from experiments.common.schemes import describe_schemes

            print(describe_schemes())
            return
        config = flags.FLAGS.config
        if config is None:
            raise app.UsageError("--config is required (see --help).")
        if flags.FLAGS.show_config:
            print(config)
            return
        main = main_for(argv[1:])
        workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None
        quiet_logging(workdir)
        try:
            main(config)
        except ConfigError as error:
            print(f"FATAL config error: {error}", file=sys.stderr)
            sys.exit(CONFIG_ERROR_EXIT_STATUS)
        except KeyboardInterrupt as interrupt:
            print(f"\n{interrupt}" if str(interrupt) else "\nInterrupted.", flush=True)
            sys.exit(INTERRUPTED_EXIT_STATUS)

    app.run(wrapped, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """Parse ``argv``; a bad flag or config field is one clear line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _exit_with(str(error))
    except (AttributeError, KeyError) as error:  # ml_collections: an undeclared field
        _exit_with(unknown_field_message(argv) or f"bad config override: {error}")
    raise AssertionError("unreachable")


def _exit_with(message: str) -> None:
    print(f"FATAL Flags parsing error: {message}", file=sys.stderr)
    print(
        "Pass --help to see the flags, --show_config to see the config's fields.", file=sys.stderr
    )
    sys.exit(1)


def unknown_field_message(argv: Sequence[str]) -> str | None:
    """For the first ``--config.a.b=...`` naming a field the config lacks: which, and what is."""
    config_path = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None)
    if config_path is None and "config" in flags.FLAGS:
        config_path = flags.FLAGS["config"].default
    if config_path is None:
        return None
    config = load_config_file(config_path)
    for arg in argv:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        path = arg[len("--config.") : arg.index("=")].split(".")
        node: Any = config
        for depth, key in enumerate(path):
            if isinstance(node, ml_collections.ConfigDict) and key in node:
                node = node[key]
                continue
            where = ".".join(["config", *path[:depth]])
            if not isinstance(node, ml_collections.ConfigDict):
                return f"{arg}: {where} is a value ({node!r}), not a section."
            fields = sorted(node.keys())
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return f"{arg}: {where} has no field {key!r}.{hint} Its fields: {', '.join(fields)}."
    return None


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, as ``--config=path`` loads it."""
    spec = importlib.util.spec_from_file_location("_config_file", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load the config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def quiet_logging(workdir: str | os.PathLike[str] | None) -> None:
    """Warnings and errors on the terminal; the libraries' INFO logs in ``<workdir>/log.txt``."""
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().setLevel(python_logging.WARNING)  # a Python level, not absl's
    if workdir is None:
        return
    Path(workdir).mkdir(parents=True, exist_ok=True)
    handler = python_logging.FileHandler(Path(workdir) / LOG_FILE)
    handler.setLevel(python_logging.INFO)
    handler.setFormatter(python_logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    python_logging.getLogger().addHandler(handler)

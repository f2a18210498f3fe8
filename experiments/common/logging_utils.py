"""Run logs: JSONL rows, TensorBoard scalars and a tqdm progress bar.

Every logged row holds the step, the weighted total, each loss as
``loss/<name>`` and each weight as ``weight/<name>`` (so all K weights are
named), whether covjax accepted that step (``accepted``), how many steps it
has rejected so far (``skipped_steps``, each a step that changed nothing), plus
throughput. ``metrics.jsonl`` is what the report helpers read;
the TensorBoard event files (``tensorboard/``) are for looking at runs live.
TensorBoard scalars are written with ``tf.summary.write`` and the scalars
plugin's metadata, which works with TensorFlow alone (the ``tensorboard``
package, needed only to *view* the files, is not a dependency).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_collections
from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CONFIG_FILE = "config.json"

#: Config entries a run may be resumed (or reused) with changed: how long it
#: trains, how it logs and checkpoints, where the data lies, how the devices,
#: the processes and the per-loss gradients are laid out (the global batches
#: do not depend on the process count: experiments.data.input_pipeline), and
#: everything under :data:`RESUMABLE_SECTIONS`. The options of schemes and data
#: sources the run does not use are ignored too. Anything else (model, data,
#: scheme, optimiser, seed...) makes it a different run.
RESUMABLE_SECTIONS = ("eval",)  # how a trained network is evaluated: no retraining needed
RESUMABLE_CHANGES = frozenset(
    {
        "num_train_steps",
        "log_every_steps",
        "checkpoint_every_steps",
        "max_checkpoints_to_keep",
        "num_devices",
        "distributed",
        "coordinator_address",
        "num_processes",
        "process_id",
        "data.data_dir",
        "gradient_chunk_size",
        "group_losses",
    }
)


def _flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _unused(key: str, config: Mapping[str, Any]) -> bool:
    """Whether ``key`` is an option of a scheme or data source the run does not use."""
    parts = key.split(".")
    if parts[0] in ("scheme_kwargs", "scheme_gradient_target") and len(parts) > 1:
        return parts[1] != config.get("scheme")
    data = config.get("data")
    if parts[0] == "data" and len(parts) > 2 and isinstance(data, Mapping):
        return isinstance(data.get(parts[1]), Mapping) and parts[1] != data.get("name")
    return False


def _matters_for_training(key: str, config: Mapping[str, Any]) -> bool:
    return (
        key not in RESUMABLE_CHANGES
        and key.split(".")[0] not in RESUMABLE_SECTIONS
        and not _unused(key, config)
    )


def config_differences(workdir: str | Path, config: ml_collections.ConfigDict) -> list[str]:
    """``"key: old there, new now"`` for each entry in which ``workdir``'s recorded config differs.

    Empty when ``workdir`` records no config; entries that do not change what
    is trained (:data:`RESUMABLE_CHANGES`, :data:`RESUMABLE_SECTIONS`, the
    options of unused schemes and data sources) are left out.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return []
    current_tree = json.loads(config.to_json_best_effort())
    saved = _flat_config(json.loads(path.read_text()))
    current = _flat_config(current_tree)
    return [
        f"{key}: {saved.get(key)!r} there, {current.get(key)!r} now"
        for key in sorted(saved.keys() | current.keys())
        if _matters_for_training(key, current_tree) and saved.get(key) != current.get(key)
    ]


def check_same_config(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
    """Raise if ``workdir`` already holds a run of a different config.

    Resuming (or reusing the results of) a run trained with another model,
    data, scheme or seed would silently mix two experiments.

    Raises:
      ValueError: naming the differing entries, their old and new values.
    """
    differing = config_differences(workdir, config)
    if differing:
        more = f" (and {len(differing) - 6} more)" if len(differing) > 6 else ""
        raise ValueError(
            f"{workdir} holds a run of a different config ({'; '.join(differing[:6])}{more}). "
            "Resume it with the config it was started with, or give another --workdir (or "
            "delete this one)."
        )


def write_config(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
    """Record ``config`` as the config of the run in ``workdir``."""
    (Path(workdir) / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))


class MetricWriter:
    """Append rows to ``<workdir>/metrics.jsonl`` and to TensorBoard event files."""

    def __init__(self, workdir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self._tensorboard = None
        if not enabled:
            return
        self._file = (self.workdir / METRICS_FILE).open("a")
        if tensorboard:
            import tensorflow as tf  # local: only the logging process needs it

            self._tf = tf
            self._tensorboard = tf.summary.create_file_writer(str(self.workdir / TENSORBOARD_DIR))
            from tensorflow.core.framework import summary_pb2

            self._scalar_metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            )

    def write(self, step: int, row: Mapping[str, float | bool]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{key: _jsonable(value) for key, value in row.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            with self._tensorboard.as_default():
                for key, value in row.items():
                    self._tf.summary.write(
                        key,
                        self._tf.constant(float(value), self._tf.float32),
                        step=int(step),
                        metadata=self._scalar_metadata,
                    )

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        if self.enabled:
            write_config(self.workdir, config)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.flush()
            self._tensorboard.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int):  # flags and counts stay as they are
        return value
    value = float(value)
    return value if math.isfinite(value) else str(value)


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<workdir>/metrics.jsonl``; a resumed run's repeated steps keep the last."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"No training log at {path}.")
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]


def weight_series(rows: list[dict[str, Any]]) -> tuple[list[int], dict[str, list[float]]]:
    """Steps and ``{loss name: weights over training}`` from logged rows."""
    steps = [int(row["step"]) for row in rows]
    names = [key[len("weight/") :] for key in rows[0] if key.startswith("weight/")] if rows else []
    series = {name: [float(row[f"weight/{name}"]) for row in rows] for name in names}
    return steps, series


def progress_bar(start: int, total: int, *, desc: str, enabled: bool) -> Any:
    """A tqdm bar from ``start`` to ``total`` (a silent stand-in when disabled)."""
    if enabled:
        return tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    return _SilentBar()


class _SilentBar:
    def update(self, _: int) -> None:
        pass

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        return iter(())

"""Tests of the shared experiment machinery (experiments/common) on the toy task."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import toy_task
from flax import nnx

import covjax
from experiments.common import logging_utils, report, schemes, sharding, train

TASK = toy_task.ToyTask(num_losses=4, hidden=8)
REPO = Path(__file__).resolve().parents[1]


def _leaves(state: train.TrainState) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(state))]


# CoV; a learned weighting with its own Adam state; a PRNG key in the state.
@pytest.mark.parametrize("scheme", ["cov", "uncertainty", "rlw"])
def test_resume_gives_the_uninterrupted_state(tmp_path: Path, scheme: str) -> None:
    config = toy_task.toy_config(scheme=scheme, num_train_steps=6, checkpoint_every_steps=3)
    _, uninterrupted = train.train(TASK, config, tmp_path / "straight", show_progress=False)

    interrupted_config = toy_task.toy_config(
        scheme=scheme, num_train_steps=3, checkpoint_every_steps=3
    )
    train.train(TASK, interrupted_config, tmp_path / "resumed", show_progress=False)
    trainer, resumed = train.train(TASK, config, tmp_path / "resumed", show_progress=False)

    assert int(resumed.step) == 6
    for got, want in zip(_leaves(resumed), _leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(got, want)
    straight_rows = logging_utils.read_metrics(tmp_path / "straight")
    resumed_rows = logging_utils.read_metrics(tmp_path / "resumed")
    drop = ("images_per_second",)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(resumed_rows) == strip(straight_rows)
    # The restored trainer reproduces the model of the final state.
    restored_trainer, restored = train.restore_trainer(TASK, config, tmp_path / "resumed")
    for got, want in zip(_leaves(restored), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(got, want)
    assert restored_trainer.graphdef == trainer.graphdef


def test_resuming_with_another_config_is_refused(tmp_path: Path) -> None:
    config = toy_task.toy_config(scheme="cov", num_train_steps=2, checkpoint_every_steps=2)
    train.train(TASK, config, tmp_path / "run", show_progress=False)
    # Training longer, logging differently, other gradient chunks: the same run.
    longer = toy_task.toy_config(
        scheme="cov", num_train_steps=3, checkpoint_every_steps=3, log_every_steps=1
    )
    assert logging_utils.config_differences(tmp_path / "run", longer) == []
    _, state = train.train(TASK, longer, tmp_path / "run", show_progress=False)
    assert int(state.step) == 3
    # Another scheme or seed: a different experiment, named in the error.
    for changed, key in (({"scheme": "equal"}, "scheme"), ({"seed": 7}, "seed")):
        other = toy_task.toy_config(
            **{"scheme": "cov", "num_train_steps": 3, "checkpoint_every_steps": 3, **changed}
        )
        with pytest.raises(ValueError, match=rf"different config .*{key}: "):
            train.train(TASK, other, tmp_path / "run", show_progress=False)


def test_logs_name_every_loss_and_weight(tmp_path: Path) -> None:
    config = toy_task.toy_config(num_train_steps=4, log_every_steps=2)
    train.train(TASK, config, tmp_path, show_progress=False)
    rows = logging_utils.read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [2, 4]
    for row in rows:
        for name in TASK.names:
            assert np.isfinite(row[f"loss/{name}"])
            assert np.isfinite(row[f"weight/{name}"])
        assert row["accepted"] is True and row["skipped_steps"] == 0
        assert row["images_per_second"] > 0
        # CoV weights sum to one.
        assert sum(row[f"weight/{name}"] for name in TASK.names) == pytest.approx(1.0, abs=1e-5)
    events = list((tmp_path / logging_utils.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert json.loads((tmp_path / "config.json").read_text())["scheme"] == "cov"


def _same_bits(a: object, b: object) -> bool:
    """Equal bit for bit (NaN payloads and the sign of zero included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


class _OneNanBatch(toy_task.ToyTask):
    """The toy task whose batch at ``NAN_STEP`` holds a NaN input (NaN losses and statistics)."""

    NAN_STEP = 2

    def batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
        batch = super().batch(seed, step, batch_size)
        if step == self.NAN_STEP:
            batch["x"][0, 0] = np.nan
        return batch


class _RecordingBar:
    """A progress bar that remembers its postfixes."""

    def __init__(self) -> None:
        self.postfixes: list[dict[str, object]] = []

    def update(self, _: int) -> None:
        pass

    def set_postfix(self, **postfix: object) -> None:
        self.postfixes.append(postfix)

    def close(self) -> None:
        pass


def test_a_rejected_step_changes_nothing_and_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _OneNanBatch(num_losses=4, hidden=8)
    nan_step = task.NAN_STEP
    config = toy_task.toy_config(scheme="cov", num_train_steps=5, log_every_steps=1)
    mesh = sharding.make_mesh(1)
    trainer = train.Trainer(task, config, mesh)
    batches = task.train_batches(config, start_step=0, process_index=0, process_count=1)
    state = trainer.init_state(sharding.shard_batch(next(batches), mesh))
    batches = task.train_batches(config, start_step=0, process_index=0, process_count=1)
    kept = lambda s: (s.params, s.rest, s.opt_state, s.weighting)  # noqa: E731
    for step in range(nan_step + 2):
        before = jax.device_get(kept(state))  # the step donates the state's buffers
        state, metrics = trainer.train_step(state, sharding.shard_batch(next(batches), mesh))
        after = jax.device_get(kept(state))
        unchanged = all(
            _same_bits(a, b)
            for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        )
        assert bool(metrics.accepted) == (step != nan_step)
        # Only the NaN step leaves parameters, batch statistics, Adam and CoV as they were.
        assert unchanged == (step == nan_step), step
        assert int(state.skipped_steps) == int(step >= nan_step)
        assert int(state.step) == step + 1

    bar = _RecordingBar()
    monkeypatch.setattr(logging_utils, "progress_bar", lambda *args, **kwargs: bar)
    train.train(task, config, tmp_path, show_progress=True)
    rows = logging_utils.read_metrics(tmp_path)
    assert [row["accepted"] for row in rows] == [step != nan_step for step in range(5)]
    assert [row["skipped_steps"] for row in rows] == [int(step >= nan_step) for step in range(5)]
    assert [postfix.get("skipped") for postfix in bar.postfixes] == [None, None, 1, 1, 1]
    import tensorflow as tf

    (events,) = (tmp_path / logging_utils.TENSORBOARD_DIR).glob("events.out.tfevents.*")
    logged = [
        (event.step, tf.make_ndarray(value.tensor))
        for event in tf.compat.v1.train.summary_iterator(str(events))
        for value in event.summary.value
        if value.tag == "skipped_steps"
    ]
    assert logged == [(step + 1, int(step >= nan_step)) for step in range(5)]


@pytest.mark.parametrize("name", sorted(schemes.SCHEMES))
def test_registry_builds_and_steps_every_scheme(name: str) -> None:
    entry = schemes.SCHEMES[name]
    constructor = entry.constructor.__name__
    assert getattr(covjax, constructor) is entry.constructor, f"covjax.{constructor} is missing"
    kwargs = {"static": {"weights": [0.1, 0.2, 0.3, 0.4]}}
    config = toy_task.toy_config(scheme=name, steps_per_epoch=4, scheme_kwargs=kwargs)
    mesh = sharding.make_mesh(1)
    trainer = train.Trainer(TASK, config, mesh)
    assert trainer.scheme.name == name
    assert (trainer.scheme.gradient_target == "none") != trainer.scheme.needs_gradients
    batches = TASK.train_batches(config, start_step=0, process_index=0, process_count=1)
    state = trainer.init_state(sharding.shard_batch(next(batches), mesh))
    for _ in range(5):
        state, metrics = trainer.train_step(state, sharding.shard_batch(next(batches), mesh))
    weights = np.asarray([metrics.weights[n] for n in TASK.names])
    assert np.all(np.isfinite(weights)) and bool(metrics.accepted)
    if name == "hand_tuned":
        hand = TASK.hand_tuned_weights()
        want = np.asarray([hand[n] for n in TASK.names])
        np.testing.assert_allclose(weights / weights.sum(), want / want.sum(), rtol=1e-6)
    if name == "static":
        np.testing.assert_allclose(weights / weights.sum(), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    if name == "equal":
        np.testing.assert_allclose(weights, weights[0])


def test_a_direction_scheme_runs_on_the_representation() -> None:
    """GradDrop on z (LibMTL's rep_grad=True): the trunk follows its direction w.r.t. z."""
    targets = ml_collections.ConfigDict({"graddrop": "representation"})
    mesh = sharding.make_mesh(1)
    runs = {}
    for run in ("parameters", "representation", "batch_separated"):
        config = toy_task.toy_config(scheme="graddrop")
        if run != "parameters":
            config.scheme_gradient_target = targets
        if run == "batch_separated":  # the paper's form: z's values reach the scheme
            config.scheme_kwargs = ml_collections.ConfigDict(
                {"graddrop": {"batch_separated": True}}
            )
        trainer = train.Trainer(TASK, config, mesh)
        assert trainer.scheme.gradient_target == (
            "parameters" if run == "parameters" else "representation"
        )
        assert (covjax.FEATURE_MAPS in trainer.scheme.weighting.requires) == (
            run == "batch_separated"
        )
        batches = TASK.train_batches(config, start_step=0, process_index=0, process_count=1)
        state = trainer.init_state(sharding.shard_batch(next(batches), mesh))
        for _ in range(3):
            state, metrics = trainer.train_step(state, sharding.shard_batch(next(batches), mesh))
            assert bool(metrics.accepted)
        runs[run] = jax.tree.leaves(nnx.state(trainer.model_from_state(state), nnx.Param))
    for other in ("representation", "batch_separated"):
        assert all(np.all(np.isfinite(leaf)) for leaf in runs[other])
        pairs = zip(runs["parameters"], runs[other], strict=True)
        assert any(not np.allclose(a, b) for a, b in pairs)


def test_sdmgrad_takes_the_cross_gramian_of_the_batch_halves() -> None:
    """The step's weights are SDMGrad's on C = J(first half) J(second half)ᵀ, computed here
    from covjax's public functions, and differ from those on the whole batch's Gramian."""
    config = toy_task.toy_config(scheme="sdmgrad")
    mesh = sharding.make_mesh(1)
    trainer = train.Trainer(TASK, config, mesh)
    assert covjax.CROSS_GRAMIAN in trainer.scheme.weighting.requires
    batch = next(TASK.train_batches(config, start_step=0, process_index=0, process_count=1))
    state = trainer.init_state(sharding.shard_batch(batch, mesh))
    halves = [{key: value[:4] for key, value in batch.items()}]
    halves.append({key: value[4:] for key, value in batch.items()})
    jacobians = [
        covjax.per_loss_jacobian(TASK.losses, trainer.model_from_state(state), half)[1]
        for half in halves
    ]
    losses = TASK.losses(trainer.model_from_state(state), batch)
    scheme = trainer.scheme.weighting
    want, _ = scheme.update(losses, scheme.init(losses), gramian=covjax.cross_gramian(*jacobians))
    whole = covjax.per_loss_gramian(TASK.losses, trainer.model_from_state(state), batch)[1]
    one_batch, _ = scheme.update(losses, scheme.init(losses), gramian=whole)
    _, metrics = trainer.train_step(state, sharding.shard_batch(batch, mesh))
    got = np.asarray([metrics.weights[name] for name in TASK.names])
    want = np.asarray([want[name] for name in TASK.names])
    # Both float32 on the same Gramian up to summation order: a few ulps of weights ≤ 1.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.abs(got - np.asarray([one_batch[name] for name in TASK.names])).max() > 1e-4


def test_bad_configurations_are_named() -> None:
    context = schemes.SchemeContext(
        task=TASK, optimizer=train.make_optimizer(toy_task.toy_config()), steps_per_epoch=2
    )
    with pytest.raises(ValueError, match="Unknown weighting scheme 'covv'"):
        schemes.build_scheme("covv", context)
    with pytest.raises(ValueError, match="rejected the arguments"):
        schemes.build_scheme("cov", context, {"no_such_argument": 1})
    with pytest.raises(ValueError, match="gradient target 'layers'"):
        schemes.build_scheme("mgda_ub", context, gradient_target="layers")
    # Without a model there is no P for the constructors that take num_params: named
    # by the registry where it is required, by covjax where M-ConFIG's momentum needs it.
    with pytest.raises(ValueError, match=r"'moco' keeps a vector .* scheme_kwargs.moco.num_params"):
        schemes.build_scheme("moco", context)
    with pytest.raises(ValueError, match=r"covjax\.conflict_free: num_params must be P"):
        schemes.build_scheme("m_config", context)
    assert schemes.build_scheme("conflict_free", context).name == "conflict_free"
    sized = dataclasses.replace(context, parameter_count=lambda target: 6)
    losses = {name: np.float32(1.0) for name in TASK.names}
    for name in ("moco", "m_config", "excess_mtl"):
        state = schemes.build_scheme(name, sized).weighting.init(losses)
        assert {leaf.shape[-1] for leaf in jax.tree.leaves(state) if np.ndim(leaf) == 2} == {6}
    with pytest.raises(ValueError, match="already registered"):
        schemes.register_scheme("cov", schemes.SCHEMES["cov"])
    with pytest.raises(ValueError, match="Unknown optimizer 'adamw2'"):
        train.make_optimizer(toy_task.toy_config(optimizer="adamw2"))
    with pytest.raises(ValueError, match="must be divisible"):
        sharding.check_global_batch_size(7, types.SimpleNamespace(size=2))


def test_cosine_schedule_warms_up_and_decays_to_a_tenth() -> None:
    config = toy_task.toy_config(lr_schedule="cosine", num_train_steps=10)
    schedule = train.learning_rate_schedule(config)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [1e-2, 5.5e-3, 1e-3])
    config = toy_task.toy_config(lr_schedule="cosine", num_train_steps=12, warmup_steps=2)
    schedule = train.learning_rate_schedule(config)
    np.testing.assert_allclose(
        [schedule(0), schedule(1), schedule(2), schedule(12)], [0, 5e-3, 1e-2, 1e-3], atol=1e-9
    )
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        train.learning_rate_schedule(toy_task.toy_config(lr_schedule="cosine", warmup_steps=6))
    assert train.learning_rate_schedule(toy_task.toy_config()) == 1e-2  # constant by default
    with pytest.raises(ValueError, match="Unknown lr_schedule 'linear'"):
        train.make_optimizer(toy_task.toy_config(lr_schedule="linear"))


class _NoRepresentation:
    """The toy task minus its representation split and shared layer."""

    name = "plain"

    def __getattr__(self, attribute: str):  # delegate the Task protocol only
        if attribute in ("representation", "losses_from_representation", "shared_layer"):
            raise AttributeError(attribute)
        return getattr(TASK, attribute)


def test_representation_schemes_need_a_representation() -> None:
    name = "mgda_ub"
    context = schemes.SchemeContext(
        task=_NoRepresentation(),
        optimizer=train.make_optimizer(toy_task.toy_config()),
        steps_per_epoch=2,
    )
    with pytest.raises(ValueError, match="defines no representation"):
        schemes.build_scheme(name, context)
    with pytest.raises(ValueError, match=r"defines no .*shared_layer"):
        schemes.build_scheme("gradnorm", context)


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import jax
    import toy_task
    from experiments.common import logging_utils, sharding, train
    assert jax.device_count() == 8, jax.devices()
    task = toy_task.ToyTask(num_losses=4, hidden=8)
    out = {}
    for scheme in sys.argv[1:]:
        for devices in (1, 8):
            config = toy_task.toy_config(scheme=scheme, num_train_steps=4, batch_size=16,
                                         num_devices=devices)
            workdir = tempfile.mkdtemp()
            train.train(task, config, workdir, show_progress=False)
            rows = logging_utils.read_metrics(workdir)
            out[f"{scheme}/{devices}"] = [
                {k: v for k, v in r.items() if k.startswith(("loss/", "weight/"))}
                for r in rows]
    print("RESULT" + json.dumps(out))
    """
)


def test_sharded_step_matches_one_device() -> None:
    names = ["cov", "mgda_ub"]
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join((str(REPO), str(REPO / "tests"))),
    }
    completed = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT, *names],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(ln for ln in completed.stdout.splitlines() if ln.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    for name in names:
        single, sharded = result[f"{name}/1"], result[f"{name}/8"]
        assert len(single) == len(sharded) == 4
        for one, eight in zip(single, sharded, strict=True):
            assert one.keys() == eight.keys()
            for key in one:
                np.testing.assert_allclose(
                    eight[key], one[key], rtol=2e-5, atol=1e-6, err_msg=f"{name} {key}"
                )


def test_report_tables_and_plots(tmp_path: Path) -> None:
    rows = [
        {"scheme": "equal", "abs_rel": 0.21, "a1": 0.69},
        {"scheme": "cov", "abs_rel": 0.19, "a1": 0.70},
        {"scheme": "paper", "abs_rel": None, "a1": 0.72},
    ]
    table = report.markdown_table(
        rows,
        ["scheme", "abs_rel", "a1"],
        headers=["Scheme", "ARD", "δ1"],
        bold_best={"abs_rel": "min", "a1": "max"},
    )
    lines = table.strip().splitlines()
    assert lines[0] == "| Scheme | ARD | δ1 |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| equal | 0.2100 | 0.6900 |"
    assert lines[3] == "| cov | **0.1900** | 0.7000 |"
    assert lines[4] == "| paper | – | **0.7200** |"
    with pytest.raises(ValueError, match="3 headers for 2 columns"):
        report.markdown_table(rows, ["scheme", "a1"], headers=["a", "b", "c"])

    assert report.group_of("ssim/left/s2") == "ssim"
    assert report.scale_of("ssim/left/s2") == "s2"
    assert report.scale_of("ce") == "all"

    config = toy_task.toy_config(num_train_steps=3)
    train.train(TASK, config, tmp_path / "run", show_progress=False)
    paths = report.plot_run_weights(tmp_path / "run", tmp_path / "plots", title="toy")
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

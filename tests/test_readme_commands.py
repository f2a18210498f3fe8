"""Every shell command of the READMEs runs, as a real subprocess, on tiny configs and fake data.

Each ```bash block of README.md, of the docs pages that hold the experiments'
commands (docs/experiments.md, docs/guides/multi_host.md) and of the
experiments' READMEs is split into
commands, which run in order (a block's ``evaluate`` reads what its ``train``
wrote). Each command is the documented one with these changes only:

* its config file becomes the experiment's ``configs/test.py``, keeping the
  documented config's data source, splits and evaluation crop, and the
  command's own overrides, followed by tiny sizes (2 steps, 4 images scored);
* ``/tmp/...`` and ``/data/...`` paths live under pytest's temporary
  directory, where ``/data/kitti_raw`` and ``/data/splits`` are a fake KITTI
  layout (tests/fake_datasets.py) in the documented format;
* synthetic data is generated once per session into one shared directory,
  and the commands share the session's persistent JAX compilation cache
  (tests/conftest.py; most of them compile the same tiny networks), which
  caches every program however quickly it compiled, and compile with less LLVM
  optimisation, as the whole session does (tests/fast_compile.py);
* ``--schemes`` lists are cut to their first two names (every name is
  checked against the registry), a command relying on the default list
  gets ``--schemes=cov`` (the comparisons given two schemes check the win
  rates), and segmentation's ``compare`` trains one run.

The tools without a config run as documented on the same fake root:
``experiments.data.synthetic`` with tiny split sizes, and
``experiments.common.backbones`` on a fake torchvision ResNet-50
checkpoint (tests/fake_torchvision.py), its ``convert`` reading the ``.pth``
through a stand-in for ``torch`` (tests/fake_torch: PyTorch is no dependency).

Skipped: ``make demo`` / ``make test`` themselves and the multi-host blocks
marked ``<!-- covered by tests/test_multihost.py -->``, which that file runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import make_fake_kitti, write_kitti_split_eigen, write_kitti_split_monodepth
from fake_torchvision import fake_checkpoint

from experiments.common import cli, compare, evaluate, logging_utils
from experiments.common.schemes import available_schemes
from experiments.depth import metrics as depth_metrics

REPO = Path(__file__).resolve().parents[1]
READMES = (
    "README.md",
    "docs/experiments.md",
    "docs/guides/multi_host.md",
    "experiments/segmentation/README.md",
    "experiments/multitask/README.md",
)
COVERED_ELSEWHERE = "<!-- covered by tests/test_multihost.py -->"
SKIPPED_COMMANDS = ("make demo", "make test")
#: Documented config fields kept when the config file becomes test.py.
KEPT_FIELDS = ("data.name", "data.train_split", "data.eval_split")
#: Set to the test config's values after the command's own overrides.
TEST_SIZES = ("model.width", "batch_size")
#: Appended to every command, after its own overrides.
TINY = (
    "--config.num_train_steps=2",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=2",
    "--config.eval.max_examples=4",
)
TIMEOUT_S = 900
#: Commands without a config file: their own tiny sizes.
TOOLS = {
    "experiments.data.synthetic": ("--num_train=8", "--num_validation=4", "--num_test=4"),
    "experiments.common.backbones": (),
}
FAKE_TORCH = Path(__file__).resolve().parent / "fake_torch"


def bash_blocks(readme: str) -> list[tuple[str, list[str]]]:
    """``(name, commands)`` of each ```bash block of ``readme`` that this file runs."""
    text = (REPO / readme).read_text()
    blocks = []
    for match in re.finditer(r"(?:^([^\n]*)\n)?```bash\n(.*?)```", text, flags=re.S | re.M):
        if match.group(1) and COVERED_ELSEWHERE in match.group(1):
            continue
        line = text[: match.start(2)].count("\n") + 1
        joined = re.sub(r"\\\n\s*", " ", match.group(2))
        commands = [
            command.split(" #")[0].strip()
            for command in joined.splitlines()
            if command.strip() and not command.strip().startswith("#")
        ]
        commands = [c for c in commands if not c.startswith(SKIPPED_COMMANDS)]
        if commands:
            blocks.append((f"{readme}:{line}", commands))
    return blocks


BLOCKS = [block for readme in READMES for block in bash_blocks(readme)]


def program(words: list[str]) -> tuple[str, str | None]:
    """``(module, command)`` of ``python -m MODULE [COMMAND] --flags``: an experiment's
    ``main`` takes a command (train, evaluate, compare) before its flags."""
    module = words[2]
    is_experiment_main = module.endswith(".main") and module != "experiments.main"
    return module, words[3] if is_experiment_main and len(words) > 3 else None


def test_the_readmes_have_commands() -> None:
    names = {program(command.split()) for _, commands in BLOCKS for command in commands}
    for name in (
        ("experiments.main", None),
        ("experiments.depth.main", "train"),
        ("experiments.depth.main", "evaluate"),
        ("experiments.data.synthetic", None),
        ("experiments.common.backbones", None),
    ):
        assert name in names
    for experiment in ("segmentation", "multitask"):
        assert (f"experiments.{experiment}.main", "compare") in names


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root standing for ``/``: fake KITTI in ``data/``, synthetic data in ``synthetic/``."""
    root = tmp_path_factory.mktemp("readme_commands")
    kitti = make_fake_kitti(root / "data" / "kitti_raw")
    splits = root / "data" / "splits"
    splits.mkdir(parents=True)
    with_depth = [frame for frame in kitti.frames if frame.depth_png is not None]
    write_kitti_split_monodepth(splits / "eigen_train_files.txt", kitti.frames, "png")
    for split in ("val", "validation", "test"):
        write_kitti_split_eigen(splits / f"eigen_{split}_files.txt", with_depth)
    with (root / "data" / "resnet50.pth").open("wb") as handle:  # read by the fake torch.load
        np.savez(handle, **fake_checkpoint(50))
    (root / "synthetic").mkdir()
    return root


def _value(config: object, dotted: str) -> object:
    for key in dotted.split("."):
        config = config[key]  # type: ignore[index]
    return config


def rewrite(command: str, root: Path) -> list[str]:
    """The documented command as run here (see the module docstring)."""
    words = shlex.split(command)
    assert words[0] in ("python", ".venv/bin/python") and words[1] == "-m", command
    module, subcommand = program(words)
    experiment = "depth" if module == "experiments.main" else module.split(".")[1]
    command_words = [subcommand] if subcommand else []
    first_flag = 3 + len(command_words)
    # Absolute /tmp and /data paths, and the main job's relative results/ folders.
    arguments = [
        re.sub(r"(?<==)/?(tmp|data|results)/", f"{root}/\\1/", word) for word in words[first_flag:]
    ]
    if module in TOOLS:
        return [sys.executable, "-m", module, *arguments, *TOOLS[module]]
    config_path = next(
        (word.split("=", 1)[1] for word in arguments if word.startswith("--config=")),
        "experiments/depth/configs/demo.py",  # experiments.main's default
    )
    documented = cli.load_config_file(str(REPO / config_path))
    test_config = f"experiments/{experiment}/configs/test.py"
    kept = [f"--config.{field}={_value(documented, field)}" for field in KEPT_FIELDS]
    if experiment == "depth":
        kept.append(f"--config.eval.crop={documented.eval.crop}")
    own = []
    for word in arguments:
        if word.startswith("--config="):
            continue
        if word.startswith("--schemes="):
            schemes = word.split("=", 1)[1].split(",")
            unknown = [name for name in schemes if name not in available_schemes()]
            assert not unknown, f"{command}: unknown schemes {unknown}"
            word = "--schemes=" + ",".join(schemes[:2])
        own.append(word)
    tiny = cli.load_config_file(str(REPO / test_config))
    extra = [f"--config.{field}={_value(tiny, field)}" for field in TEST_SIZES] + list(TINY)
    if not any(word.startswith("--config.data.data_dir=") for word in own):
        extra.append(f"--config.data.data_dir={root / 'synthetic'}")
    if module == "experiments.main":  # its defaults: results/demo and results
        for flag, default in (("--workdir", "results/demo"), ("--results", "results")):
            if not any(word.startswith(f"{flag}=") for word in own):
                extra.append(f"{flag}={root / default}")
    given = {word.split("=", 1)[0] for word in own}
    depth_compare = (module, subcommand) == ("experiments.depth.main", "compare")
    if (module == "experiments.main" or depth_compare) and "--schemes" not in given:
        extra.append("--schemes=cov")
    if (module, subcommand) == (
        "experiments.segmentation.main",
        "compare",
    ) and "--runs" not in given:
        extra.append("--runs=cov")
    return [
        sys.executable, "-m", module, *command_words, f"--config={test_config}", *kept, *own,
        *extra,
    ]  # fmt: skip


#: The commands that run the depth comparison (the main job is one).
DEPTH_COMPARISONS = (("experiments.main", None), ("experiments.depth.main", "compare"))


def check_depth_comparison(argv: list[str]) -> None:
    """What a depth comparison leaves in its workdir: per run, its evaluation (summary =
    mean of the finite per-image metrics) and all 32 weights logged by name; the weight
    plots; the report with every run, the untrained network, the paper's rows and, for
    two or more runs, the win rates."""
    given = dict(word.split("=", 1) for word in argv if word.startswith("--") and "=" in word)
    tiny = dict(word.split("=", 1) for word in TINY)
    workdir = Path(given["--workdir"])
    schemes = given["--schemes"].split(",")
    report = (workdir / "results" / compare.REPORT_FILE).read_text()
    seed = int(given.get("--config.seed", cli.load_config_file(str(REPO / given["--config"])).seed))
    for scheme in schemes:
        run = compare.run_dir(workdir, scheme, seed)
        (summary_path,) = run.glob(f"eval_*/{evaluate.SUMMARY_FILE}")
        summary = json.loads(summary_path.read_text())
        assert summary["step"] == int(tiny["--config.num_train_steps"]), (scheme, summary)
        per_image = depth_metrics.load_per_image(summary_path.parent)
        assert per_image.shape == (summary["num_images"], 7)
        assert 0 < len(per_image) <= int(tiny["--config.eval.max_examples"])
        assert np.all(np.isfinite(per_image))
        np.testing.assert_allclose(
            [summary[metric] for metric in depth_metrics.METRIC_NAMES],
            per_image.mean(axis=0),
            rtol=1e-6,
        )
        first = json.loads((run / logging_utils.METRICS_FILE).read_text().splitlines()[0])
        assert sum(key.startswith("weight/") for key in first) == 32, scheme
        for kind in ("group", "scale"):
            png = workdir / "results" / "weights" / f"{scheme}_weights_by_{kind}.png"
            assert png.read_bytes()[:4] == b"\x89PNG", png
        assert f"| {scheme} |" in report, scheme
    assert "| (untrained network) |" in report
    assert "| paper: cov | 0.0912 | 0.5108 |" in report and "reference only" in report
    if len(schemes) > 1:
        assert "Win rates" in report and f"| A \\ B | {' | '.join(schemes)} |" in report


@pytest.mark.slow
@pytest.mark.parametrize("name,commands", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_documented_commands_run(name: str, commands: list[str], layout: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for command in commands:
        argv = rewrite(command, layout)
        command_env = env
        if argv[2] == "experiments.common.backbones":
            path = os.pathsep.join(filter(None, [str(FAKE_TORCH), env.get("PYTHONPATH")]))
            command_env = {**env, "PYTHONPATH": path}
        start = time.perf_counter()
        result = subprocess.run(
            argv, cwd=REPO, env=command_env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        seconds = time.perf_counter() - start
        assert result.returncode == 0, (
            f"{name}: `{command}` failed after {seconds:.0f} s\nran: {shlex.join(argv)}\n"
            f"{result.stderr[-4000:]}"
        )
        print(f"{name}: {seconds:.0f} s: {command}")
        if program(argv[2:]) in DEPTH_COMPARISONS:
            check_depth_comparison(argv)

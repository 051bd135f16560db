"""The example job (examples/train_classifier) run for real, as the agent runs it: a fresh
``python main.py`` whose outputs go to ``$SOVEREIGN_OUTPUTS`` and whose inputs (if any) are in
``$SOVEREIGN_INPUTS``. On the CPU here; on CUDA with the ``gpu`` marker where a GPU is lent."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.gpu import NO_GPU, gpu_present

ROOT = Path(__file__).resolve().parents[3]
MAIN = ROOT / "examples" / "train_classifier" / "main.py"
STEPS = 120


@dataclass(frozen=True)
class Run:
    """One finished run of the example: its exit status, stdout lines and output folder."""

    returncode: int
    lines: list[str]
    stderr: str
    outputs: Path
    #: The network interfaces of this namespace just before the run.
    interfaces_before: list[str]

    @property
    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = json.loads((self.outputs / "metrics.json").read_text())
        return metrics


def run_example(
    tmp: Path, *args: str, inputs: Path | None = None, wrapper: Sequence[str] = ()
) -> Run:
    """Run main.py in a fresh interpreter with the environment the agent gives a job."""
    outputs = tmp / "work"
    outputs.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(outputs),
        "PYTHONUNBUFFERED": "1",
        "SOVEREIGN_JOB_ID": "00000000-0000-4000-8000-000000000001",
        "SOVEREIGN_OUTPUTS": str(outputs),
        "SOVEREIGN_INPUTS": str(inputs or tmp / "inputs"),
    }
    before = [name for _, name in socket.if_nameindex()]
    done = subprocess.run(
        [*wrapper, sys.executable, str(MAIN), *args],
        cwd=outputs,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return Run(done.returncode, done.stdout.splitlines(), done.stderr, outputs, before)


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """examples/train_classifier/main.py imported as a module (it prints nothing on import)."""
    spec = importlib.util.spec_from_file_location("train_classifier_main", MAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The example on generated data, a few steps, forced onto the CPU."""
    run = run_example(
        tmp_path_factory.mktemp("cpu"), "--steps", str(STEPS), "--seed", "3", "--device", "cpu"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_the_run_writes_weights_and_metrics_and_beats_chance(cpu_run: Run):
    assert (cpu_run.outputs / "weights.pt").stat().st_size > 0
    metrics = cpu_run.metrics
    assert metrics["steps"] == STEPS and metrics["device"] == "cpu"
    assert metrics["torch"].startswith("2.13.0")
    assert metrics["classes"] == 8 and metrics["chance"] == 0.125
    # Eight classes: chance is 12.5%; the generated problem is learnable to about 90%.
    assert metrics["accuracy"] > 0.6
    assert metrics["steps_per_s"] > 0 and metrics["train_s"] > 0
    assert metrics["runtime_s"] >= metrics["train_s"]
    assert metrics["data"] == "generated(seed=3, samples=16384)"
    # No half-written file is left behind.
    assert sorted(p.name for p in cpu_run.outputs.iterdir()) == ["metrics.json", "weights.pt"]


def test_the_metrics_name_the_network_interfaces_the_job_sees(cpu_run: Run):
    # Run in this test's network namespace, whose interfaces other work on the machine may add
    # or remove meanwhile (libvirt networks): those present throughout must all be listed.
    now = {name for _, name in socket.if_nameindex()}
    reported = cpu_run.metrics["interfaces"]
    assert "lo" in reported
    assert now & set(cpu_run.interfaces_before) <= set(reported)
    assert set(reported) <= now | set(cpu_run.interfaces_before)


def test_in_a_network_namespace_of_its_own_the_job_sees_only_loopback(tmp_path: Path):
    # As in an enclave (bwrap --unshare-all, or a guest with no NIC): only its own lo.
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "-r", "--net"]
    run = run_example(tmp_path, "--steps", "5", "--device", "cpu", wrapper=unshare)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.metrics["interfaces"] == ["lo"]
    assert run.lines[1].endswith("interfaces=lo")


def test_the_log_starts_at_once_and_reports_progress_and_accuracy(cpu_run: Run):
    assert cpu_run.lines[0].startswith("train_classifier: starting pid=")
    assert cpu_run.lines[1].startswith("device=cpu torch=2.13.0")
    steps = [line for line in cpu_run.lines if line.startswith("step ")]
    assert 5 <= len(steps) <= 12 and steps[-1].startswith(f"step {STEPS}/{STEPS} loss=")
    assert any(line.startswith("accuracy=") for line in cpu_run.lines)


def test_the_weights_load_back_and_give_the_reported_accuracy(cpu_run: Run, example: ModuleType):
    import torch

    metrics = cpu_run.metrics
    model = example.make_model(metrics["features"], metrics["hidden"], metrics["classes"])
    state = torch.load(cpu_run.outputs / "weights.pt", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    # The data is generated from the seed: the same held-out samples, the same accuracy.
    problem = example.make_problem(metrics["seed"])
    with torch.no_grad():
        predicted = model(problem.x_test).argmax(1)
    accuracy = float((predicted == problem.y_test).float().mean())
    assert accuracy == pytest.approx(metrics["accuracy"], abs=1e-4)


def test_the_generated_problem_is_the_same_for_a_seed_and_differs_between_seeds(
    example: ModuleType,
):
    import torch

    one, again, other = example.make_problem(5), example.make_problem(5), example.make_problem(6)
    assert torch.equal(one.x_train, again.x_train) and torch.equal(one.y_test, again.y_test)
    assert not torch.equal(one.x_train, other.x_train)


def test_a_training_step_can_be_timed_in_process(example: ModuleType):
    import torch

    trainer = example.Trainer(
        example.make_problem(0), hidden=16, batch=64, seed=0, device=torch.device("cpu")
    )
    first = trainer.step()
    assert first > 0 and trainer.time_steps(5) > 0 and trainer.steps == 6


def test_a_csv_in_the_inputs_is_used_instead_of_generated_data(tmp_path: Path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    # Two classes split by the sign of the first feature; labels 3 and 7, renumbered.
    with (inputs / "data.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "label"])
        for i in range(400):
            a = (i % 40 - 19.5) / 10
            writer.writerow([a, (i * 7919 % 100) / 100, 7 if a > 0 else 3])
    run = run_example(tmp_path, "--steps", "60", "--device", "cpu", inputs=inputs)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = run.metrics
    assert metrics["data"] == "input:data.csv"
    assert (metrics["features"], metrics["classes"]) == (2, 2)
    assert metrics["train_samples"] + metrics["test_samples"] == 400
    assert metrics["accuracy"] > 0.9


def test_an_npz_input_is_loaded_without_pickles(tmp_path: Path, example: ModuleType):
    import numpy as np

    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    np.savez(good, x=x, y=(x[:, 0] > 0).astype(np.int64))
    problem = example.load_problem(good, 0)
    assert (problem.features, problem.classes, problem.source) == (3, 2, "input:good.npz")

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="pickle"):
        example.load_problem(pickled, 0)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1,2,0\n3,x,1\n", "line 2 is not numbers"),
        ("1,2,0\n3,1\n", "line 2 has 2 columns"),
        ("1,2,0.5\n3,4,1\n", "integer label"),
        ("1,2,0\n3,4,0\n", "needs 2 to"),
        ("1,nan,0\n3,4,1\n", "finite"),
    ],
)
def test_a_bad_csv_is_refused(tmp_path: Path, example: ModuleType, text: str, error: str):
    path = tmp_path / "data.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        example.load_problem(path, 0)


def test_an_unusable_input_fails_the_job_with_a_message(tmp_path: Path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.csv").write_text("1,2,0\n")
    run = run_example(tmp_path, "--steps", "5", inputs=inputs)
    assert run.returncode == 2
    assert "unusable input" in run.stderr
    assert not (run.outputs / "metrics.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present(), reason=NO_GPU)
def test_the_example_trains_on_cuda_when_a_gpu_is_there(tmp_path: Path):
    run = run_example(tmp_path, "--steps", str(STEPS), "--device", "auto")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = run.metrics
    assert metrics["device"] == "cuda"
    assert any(line.startswith("gpu=") for line in run.lines)
    assert metrics["accuracy"] > 0.6

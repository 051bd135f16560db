"""Train a small classifier with PyTorch: the example job for Sovereign's enclaves.

What it does
    Builds a multi-class problem (by default generated from ``--seed``: Gaussian clusters in 16
    dimensions with a non-linear twist, so nothing is downloaded at run time), trains a small
    MLP on it with Adam, and reports its accuracy on held-out samples. It runs on CUDA when
    PyTorch sees a GPU, on the CPU otherwise (``--device`` overrides).

Input (optional)
    If ``$SOVEREIGN_INPUTS`` (the job's read-only inputs directory) holds ``data.npz`` (arrays
    ``x``: samples x features, floats; ``y``: integer labels), ``data.csv`` (one sample per
    row: features, then the label last; a header row is skipped), or exactly one ``*.npz`` or
    ``*.csv`` file, that data set is used instead of the generated one. ``--data PATH`` names
    one explicitly.

Outputs (in ``$SOVEREIGN_OUTPUTS``, default the current directory)
    ``weights.pt``: the model's ``state_dict`` (load it with ``torch.load(path,
    weights_only=True)`` into ``make_model(features, hidden, classes)``), and ``metrics.json``:
    accuracy, loss, steps, steps per second, device, runtime, PyTorch's version, the shape of
    the problem, and the network interfaces the job sees (``socket.if_nameindex()``: inside an
    enclave only ``lo``).

It must not read anything but its inputs, nor reach the network; it imports only the standard
library, PyTorch and (for ``.npz`` inputs only) numpy. Progress goes to stdout, line by line; the
first line is printed before PyTorch is imported, so a log shows the job started at once.

The benchmark (``bench/workloads.py``) imports ``make_problem``, ``make_model``, ``Trainer``.

Run: ``python examples/train_classifier/main.py [--steps N] [--batch N] [--seed N] [--hidden N]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

STARTED = time.monotonic()
if __name__ == "__main__":
    print(
        f"train_classifier: starting pid={os.getpid()} python={platform.python_version()}",
        flush=True,
    )

import torch  # noqa: E402 - after the first line on purpose: importing it takes seconds

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The generated problem: samples, features, classes; a fifth of the samples are held out.
SAMPLES = 16384
FEATURES = 16
CLASSES = 8
HOLDOUT = 0.2
#: Bounds on an input data set (the job's input is data, never trusted to be small).
MAX_SAMPLES = 2_000_000
MAX_FEATURES = 4096
MAX_CLASSES = 1000
#: How many progress lines a run prints (besides the first and the last few).
PROGRESS_LINES = 10


@dataclass(frozen=True)
class Problem:
    """A classification problem split into training and held-out samples."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    source: str

    @property
    def features(self) -> int:
        """Features per sample."""
        return int(self.x_train.shape[1])


def make_problem(seed: int, samples: int = SAMPLES) -> Problem:
    """The generated problem for ``seed``: the same tensors on every machine and run."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLASSES, FEATURES, generator=gen) * 0.8
    y = torch.randint(0, CLASSES, (samples,), generator=gen)
    x = centers[y] + torch.randn(samples, FEATURES, generator=gen)
    # A fixed non-linear twist, so a linear model is not quite enough.
    x[:, : FEATURES // 2] += 0.5 * torch.sin(2.0 * x[:, FEATURES // 2 :])
    return split(x, y, CLASSES, gen, f"generated(seed={seed}, samples={samples})")


def split(
    x: torch.Tensor, y: torch.Tensor, classes: int, gen: torch.Generator, source: str
) -> Problem:
    """Shuffle ``x``/``y`` with ``gen`` and hold out a fifth of them for testing."""
    order = torch.randperm(len(y), generator=gen)
    x, y = x[order], y[order]
    held = max(1, int(len(y) * HOLDOUT))
    return Problem(x[held:], y[held:], x[:held], y[:held], classes, source)


def load_problem(path: Path, seed: int) -> Problem:
    """A problem from an input file (``.npz`` with ``x``/``y``, or CSV with the label last).

    :raises ValueError: the file is not a usable data set.
    """
    if path.suffix == ".npz":
        import numpy as np  # noqa: PLC0415 - only an .npz input needs numpy

        # allow_pickle=False: an input is data and must never run code when loaded.
        with np.load(path, allow_pickle=False) as arrays:
            x = torch.from_numpy(np.asarray(arrays["x"], dtype=np.float32))
            labels = torch.from_numpy(np.asarray(arrays["y"]).astype(np.int64))
    else:
        x, labels = read_csv(path)
    if x.ndim != 2 or labels.ndim != 1 or len(x) != len(labels) or len(labels) < 2:
        raise ValueError(f"{path.name}: expected x of samples x features and y of samples")
    if len(labels) > MAX_SAMPLES or x.shape[1] > MAX_FEATURES:
        raise ValueError(f"{path.name}: more than {MAX_SAMPLES} samples or {MAX_FEATURES} features")
    if not torch.isfinite(x).all():
        raise ValueError(f"{path.name}: features must be finite numbers")
    # Any integer labels: renumbered 0..k-1 in sorted order.
    values, y = torch.unique(labels, return_inverse=True)
    if not 2 <= len(values) <= MAX_CLASSES:
        raise ValueError(f"{path.name}: needs 2 to {MAX_CLASSES} classes, has {len(values)}")
    # Standardise the features, so one learning rate suits any input's scale.
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    return split(x, y, len(values), torch.Generator().manual_seed(seed), f"input:{path.name}")


def read_csv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels from a CSV file: one sample per row, the label last.

    :raises ValueError: a row is not numbers, or rows differ in length.
    """
    rows: list[list[float]] = []
    labels: list[int] = []
    with path.open(newline="") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if not row or row[0].startswith("#"):
                continue
            try:
                values = [float(v) for v in row]
            except ValueError:
                if not rows and number == 1:
                    continue  # a header row
                raise ValueError(f"{path.name}: line {number} is not numbers") from None
            if rows and len(values) != len(rows[0]) + 1:
                raise ValueError(f"{path.name}: line {number} has {len(values)} columns")
            if len(values) < 2 or not values[-1].is_integer():
                raise ValueError(f"{path.name}: line {number} needs features and an integer label")
            rows.append(values[:-1])
            labels.append(int(values[-1]))
            if len(rows) > MAX_SAMPLES:
                raise ValueError(f"{path.name}: more than {MAX_SAMPLES} samples")
    return torch.tensor(rows, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def find_input(inputs: str | None) -> Path | None:
    """The data set in the inputs directory, if there is one (see the module docstring)."""
    if not inputs or not Path(inputs).is_dir():
        return None
    folder = Path(inputs)
    for name in ("data.npz", "data.csv"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.rglob("*") if p.suffix in {".npz", ".csv"} and p.is_file())
    return found[0] if len(found) == 1 else None


def make_model(features: int, hidden: int, classes: int) -> torch.nn.Sequential:
    """The classifier: an MLP with two hidden layers of ``hidden`` units."""
    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, classes),
    )


class Trainer:
    """A model, its optimiser and its data on one device; ``step()`` is one training step."""

    def __init__(
        self, problem: Problem, *, hidden: int, batch: int, seed: int, device: torch.device
    ) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.model = make_model(problem.features, hidden, problem.classes).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-3)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.x = problem.x_train.to(device)
        self.y = problem.y_train.to(device)
        self.batch = min(batch, len(self.y))
        # Batches are drawn from their own generator, so a run is repeatable from its seed.
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.steps = 0

    def step(self) -> float:
        """One optimiser step on a random batch; the batch's loss (synchronises the device)."""
        index = torch.randint(0, len(self.y), (self.batch,), generator=self.gen).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x[index]), self.y[index])
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.item())

    def time_steps(self, steps: int) -> float:
        """Seconds one step takes, on average over ``steps`` steps."""
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - started) / max(1, steps)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Accuracy and mean loss of the model on ``x``/``y``."""
        self.model.eval()
        try:
            logits = self.model(x.to(self.device))
            target = y.to(self.device)
            loss = float(self.loss_fn(logits, target).item())
            accuracy = float((logits.argmax(1) == target).float().mean().item())
        finally:
            self.model.train()
        return accuracy, loss


def pick_device(name: str) -> torch.device:
    """The device to train on: ``auto`` is CUDA when PyTorch sees a GPU, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_classifier: --device cuda, but PyTorch sees no GPU")
    return torch.device(name)


def interfaces() -> list[str]:
    """Names of the network interfaces this process can see (an enclave: only ``lo``)."""
    return [name for _, name in socket.if_nameindex()]


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a reader never sees half."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.replace(path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    parser.add_argument("--batch", type=int, default=256, help="samples per step (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights (0)")
    parser.add_argument("--hidden", type=int, default=64, help="units per hidden layer (64)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto"
    )
    parser.add_argument("--data", type=Path, help="an input data set (.npz or .csv)")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: its own)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate, write ``weights.pt`` and ``metrics.json``; print progress."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    seen = interfaces()
    print(
        f"device={device.type} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"interfaces={','.join(seen)}",
        flush=True,
    )
    if device.type == "cuda":
        print(f"gpu={torch.cuda.get_device_name(device)}", flush=True)
    outputs = Path(os.environ.get("SOVEREIGN_OUTPUTS") or ".")
    data = args.data or find_input(os.environ.get("SOVEREIGN_INPUTS"))
    try:
        problem = make_problem(args.seed) if data is None else load_problem(data, args.seed)
    except (ValueError, KeyError, OSError) as exc:
        print(f"train_classifier: unusable input: {exc}", file=sys.stderr, flush=True)
        return 2
    print(
        f"data={problem.source} train={len(problem.y_train)} test={len(problem.y_test)} "
        f"features={problem.features} classes={problem.classes}",
        flush=True,
    )
    trainer = Trainer(problem, hidden=args.hidden, batch=args.batch, seed=args.seed, device=device)
    every = max(1, args.steps // PROGRESS_LINES)
    train_started, train_cpu_started = time.perf_counter(), time.process_time()
    loss = float("nan")
    for step in range(1, args.steps + 1):
        loss = trainer.step()
        if step % every == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss={loss:.4f}", flush=True)
    train_s = time.perf_counter() - train_started
    # CPU seconds of all this process's threads: unlike train_s, barely moved by other work.
    train_cpu_s = time.process_time() - train_cpu_started
    accuracy, test_loss = trainer.evaluate(problem.x_test, problem.y_test)
    train_accuracy, _ = trainer.evaluate(problem.x_train, problem.y_train)

    outputs.mkdir(parents=True, exist_ok=True)
    weights = outputs / "weights.pt"
    torch.save(trainer.model.state_dict(), weights.with_name("weights.pt.part"))
    weights.with_name("weights.pt.part").replace(weights)
    metrics: dict[str, Any] = {
        "accuracy": round(accuracy, 4),
        "train_accuracy": round(train_accuracy, 4),
        "loss": round(test_loss, 4),
        "final_batch_loss": round(loss, 4),
        "chance": round(1.0 / problem.classes, 4),
        "steps": args.steps,
        "batch": trainer.batch,
        "hidden": args.hidden,
        "seed": args.seed,
        "features": problem.features,
        "classes": problem.classes,
        "train_samples": len(problem.y_train),
        "test_samples": len(problem.y_test),
        "data": problem.source,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "train_s": round(train_s, 4),
        "steps_per_s": round(args.steps / train_s, 2) if train_s > 0 else None,
        "step_ms": round(train_s * 1000 / args.steps, 4),
        "train_cpu_s": round(train_cpu_s, 4),
        "runtime_s": round(time.monotonic() - STARTED, 3),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "interfaces": seen,
    }
    write_atomically(outputs / "metrics.json", json.dumps(metrics, indent=2).encode() + b"\n")
    print(
        f"accuracy={accuracy:.4f} (chance {1.0 / problem.classes:.3f}) loss={test_loss:.4f} "
        f"steps={args.steps} steps_per_s={metrics['steps_per_s']} device={device.type} "
        f"runtime_s={metrics['runtime_s']}",
        flush=True,
    )
    print(f"wrote {weights} and {outputs / 'metrics.json'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The agent's pure helpers and command line: glob matching, GPU listing, arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclaves.agent import __main__ as cli
from enclaves.agent.server import _glob_match


@pytest.mark.parametrize(
    ("name", "pattern", "matches"),
    [
        ("result.txt", "*.txt", True),
        ("out/result.txt", "*.txt", False),
        ("out/result.txt", "**/*.txt", True),
        ("result.txt", "**/*.txt", True),
        ("a/b/c/d.bin", "a/**", True),
        ("a/b/c/d.bin", "a/**/d.bin", True),
        ("a/b/c/d.bin", "a/*/d.bin", False),
        ("model-1.pt", "model-?.pt", True),
        ("model-10.pt", "model-?.pt", False),
        ("Result.TXT", "*.txt", False),
        ("out/x", "out", False),
    ],
)
def test_glob_match(name: str, pattern: str, matches: bool) -> None:
    assert _glob_match(name.split("/"), pattern.split("/")) is matches


def test_nvidia_smi_output_is_parsed() -> None:
    text = (
        "NVIDIA H100 80GB HBM3, GPU-5f1c7c2e-aaaa-bbbb-cccc-000000000001, 81559\n"
        "garbage line\n"
        "NVIDIA H100 80GB HBM3, GPU-2, [N/A]\n"
    )
    assert cli.parse_nvidia_smi(text) == [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-5f1c7c2e-aaaa-bbbb-cccc-000000000001",
            "memory_mib": 81559,
        }
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--root", "/r"],
        ["--root", "/r", "--device", "/dev/x", "--listen-unix", "/s"],
        ["--device", "/dev/x"],
    ],
)
def test_the_command_line_needs_a_root_and_exactly_one_endpoint(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli._parser().parse_args(argv)


def test_jobs_never_run_as_root() -> None:
    with pytest.raises(SystemExit, match="root"):
        cli._job_user("root")
    with pytest.raises(SystemExit, match="no such user"):
        cli._job_user("no-such-user-here")


def test_the_image_digest_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("sha256:" + "0" * 64 + "\n")
    bad = tmp_path / "bad"
    bad.write_text("sha256:\x1b[2J")
    assert cli._image_digest(str(good)) == "sha256:" + "0" * 64
    assert cli._image_digest(str(bad)) == ""
    assert cli._image_digest(None) == ""
    assert cli._image_digest(str(tmp_path / "missing")) == ""

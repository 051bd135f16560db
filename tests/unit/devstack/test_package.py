"""The development stack is its own package: production never imports it, ``sovereign dev``
comes to the command line through an entry point, and without the ``devstack`` extra both the
import and the command say what to install."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from sovereign.cli import main

INSTALL = "pip install 'sovereign[devstack]'"


@pytest.fixture
def without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if authlib were not installed, and devstack not imported yet (both restored after)."""
    monkeypatch.setitem(sys.modules, "authlib", None)  # None in sys.modules: not importable
    for name in [m for m in sys.modules if m == "devstack" or m.startswith("devstack.")]:
        monkeypatch.delitem(sys.modules, name)


def test_the_dev_command_comes_from_its_entry_point():
    from devstack.cli import dev

    command = main.get_command(click.Context(main), "dev")
    assert command is dev
    assert "dev" in main.list_commands(click.Context(main))
    assert command.commands.keys() == {"token"}


@pytest.mark.usefixtures("without_the_extra")
def test_importing_it_without_the_extra_names_the_extra():
    with pytest.raises(ImportError, match=r"needs authlib, from the devstack extra: pip install"):
        import devstack  # noqa: F401


@pytest.mark.usefixtures("without_the_extra")
def test_without_the_extra_sovereign_still_helps_and_dev_says_what_to_install():
    runner = CliRunner()
    listed = runner.invoke(main, ["--help"])
    assert listed.exit_code == 0
    assert "dev        Not available: the development stack needs" in listed.output
    for argv in (["dev"], ["dev", "token", "analyst-defence"], ["dev", "--port", "9000"]):
        refused = runner.invoke(main, argv)
        assert refused.exit_code == 2, argv
        assert INSTALL in refused.output
    assert runner.invoke(main, ["db", "--help"]).exit_code == 0


def test_the_control_plane_imports_no_development_code():
    # The import-linter contract checks the import statements; this checks what really loads.
    probe = (
        "import sys, click\n"
        "import sovereign, sovereign.api, sovereign.bootstrap, sovereign.cli, sovereign.config\n"
        "import sovereign.web, sovereign.worker, sovereign.adapters.vault\n"
        "sovereign.cli.main.list_commands(click.Context(sovereign.cli.main))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('devstack', 'authlib')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout

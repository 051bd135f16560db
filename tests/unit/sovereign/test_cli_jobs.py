"""The pieces of ``sovereign jobs`` that need no server: which files a submission takes, where
an output may land, the multipart body (parsed back by Werkzeug, as the API parses it), what
reaches the terminal, and that the token never shows."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from werkzeug.formparser import parse_form_data

from sovereign.cli import main
from sovereign.cli_jobs import (
    Api,
    CliError,
    check_name,
    collect,
    multipart,
    parse_label,
    printable,
    problem_line,
    safe_target,
)


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_collect_takes_every_regular_file_by_relative_path(tmp_path: Path):
    src = tree(tmp_path / "job", {"main.py": b"print(1)\n", "lib/util.py": b"X = 1\n"})
    assert collect(src) == [("lib/util.py", b"X = 1\n"), ("main.py", b"print(1)\n")]


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_collect_refuses_symlinks_before_sending_anything(tmp_path: Path, kind: str):
    src = tree(tmp_path / "job", {"main.py": b"x"})
    secret = tree(tmp_path / "elsewhere", {"key": b"secret"})
    (src / "link").symlink_to(secret / "key" if kind == "file" else secret)
    with pytest.raises(CliError, match="symlink"):
        collect(src)


def test_collect_refuses_special_files_and_bad_names(tmp_path: Path):
    src = tree(tmp_path / "job", {"main.py": b"x"})
    os.mkfifo(src / "pipe")
    with pytest.raises(CliError, match="not a regular file"):
        collect(src)
    (src / "pipe").unlink()
    (src / "has space.py").write_bytes(b"")
    with pytest.raises(CliError, match="not a relative path"):
        collect(src)
    (src / "has space.py").unlink()
    (src / ".hidden").write_bytes(b"")
    with pytest.raises(CliError, match="no segment starting with a dot"):
        collect(src)


def test_collect_refuses_an_empty_directory(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CliError, match="no files"):
        collect(tmp_path / "empty")


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/etc/passwd", "a//b", ".bashrc", "a/.ssh/k", "x\ny", ""]
)
def test_output_names_that_could_escape_are_refused(tmp_path: Path, name: str):
    with pytest.raises(CliError):
        safe_target(tmp_path, name)
    with pytest.raises(CliError):
        check_name(name)


def test_an_output_under_a_symlinked_folder_is_refused(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim").mkdir()
    (out / "sub").symlink_to(tmp_path / "victim")
    with pytest.raises(CliError, match="outside"):
        safe_target(out.resolve(), "sub/model.pt")
    (out / "model.pt").symlink_to(tmp_path / "victim" / "x")
    with pytest.raises(CliError, match="outside"):
        safe_target(out.resolve(), "model.pt")
    assert safe_target(out.resolve(), "deep/er/m.json") == out.resolve() / "deep/er/m.json"


def test_the_multipart_body_parses_back_with_paths_kept():
    manifest = json.dumps({"entrypoint": "main.py", "args": ["--x", "ünï"]})
    content_type, pieces = multipart(
        [("manifest", manifest)],
        [("files", "main.py", b"print(1)\r\n--"), ("files", "pkg/a.py", bytes(range(256)))],
    )
    body = b"".join(pieces)
    _, form, files = parse_form_data(
        {
            "wsgi.input": io.BytesIO(body),
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": content_type,
            "REQUEST_METHOD": "POST",
        },
        stream_factory=lambda *_, **__: io.BytesIO(),
    )
    assert json.loads(form["manifest"]) == json.loads(manifest)
    got = [(f.filename, f.read()) for f in files.getlist("files")]
    assert got == [("main.py", b"print(1)\r\n--"), ("pkg/a.py", bytes(range(256)))]


def test_terminal_controls_from_a_job_are_escaped():
    assert printable("ok\tline\n\x1b]0;owned\x07\x9b2J") == "ok\tline\n\\x1b]0;owned\\x07\\x9b2J"


def test_problem_details_become_one_escaped_line():
    body = json.dumps(
        {"title": "Not Found", "status": 404, "detail": "no job\n\x1b[2J", "request_id": "r1"}
    ).encode()
    line = problem_line(404, body, "application/problem+json")
    assert line == "Not Found: no job\\n\\x1b[2J (HTTP 404, request r1)"
    assert problem_line(502, b"<html>", "text/html") == "HTTP 502 from the server"


def test_labels_are_parsed_from_the_short_form():
    assert parse_label("SECRET:NATO,EU") == {"level": "SECRET", "compartments": ["EU", "NATO"]}
    assert parse_label("UNCLASSIFIED") == {"level": "UNCLASSIFIED", "compartments": []}


def test_a_token_goes_over_plain_http_only_to_this_machine():
    for url in ("http://127.0.0.1:8700", "http://localhost:1", "http://[::1]:8700"):
        Api(url, "t")
    with pytest.raises(CliError, match="plain http"):
        Api("http://control.example:8700", "t")
    assert "t0ken" not in repr(Api("https://control.example", "t0ken"))


def test_commands_need_a_token_and_never_print_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SOVEREIGN_TOKEN", raising=False)
    runner = CliRunner()
    done = runner.invoke(main, ["datasets", "list"])
    assert done.exit_code == 2
    assert "no access token" in done.output
    # A server that is not there: the error names the address, never the token.
    monkeypatch.setenv("SOVEREIGN_TOKEN", "sekrit-token-value")
    done = runner.invoke(main, ["jobs", "list", "--url", "http://127.0.0.1:9", "../../x"])
    assert done.exit_code == 2
    assert "not an enclave id" in done.output
    done = runner.invoke(main, ["jobs", "show", "--url", "http://127.0.0.1:9", str(uuid.uuid4())])
    assert done.exit_code == 2
    assert "cannot reach the control plane" in done.output
    assert "sekrit" not in done.output


def test_every_command_has_help():
    runner = CliRunner()
    for group, commands in (
        ("jobs", ["submit", "list", "show", "logs", "outputs", "cancel"]),
        ("datasets", ["upload", "list"]),
    ):
        listed = runner.invoke(main, [group, "--help"])
        assert listed.exit_code == 0
        for command in commands:
            assert command in listed.output
            shown = runner.invoke(main, [group, command, "--help"])
            assert shown.exit_code == 0, shown.output
            assert "--url" in shown.output and "--token-file" in shown.output


class _Tampering(BaseHTTPRequestHandler):
    """A server whose output bytes do not match the job record it serves."""

    record: ClassVar[dict[str, object]] = {}

    def do_GET(self) -> None:
        if self.path.endswith("/outputs/w.bin"):
            body, kind = b"evil weights", "application/octet-stream"
        else:
            body, kind = json.dumps(self.record).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        del args


def test_an_output_that_does_not_match_the_record_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    job = str(uuid.uuid4())
    good = b"real weights"  # same length as what the server sends
    _Tampering.record = {
        "id": job,
        "state": "succeeded",
        "results": [
            {"name": "w.bin", "size": len(good), "sha256": hashlib.sha256(good).hexdigest()}
        ],
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tampering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("SOVEREIGN_TOKEN", "t")
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = CliRunner().invoke(
            main, ["jobs", "outputs", job, "--url", url, "--out", str(tmp_path)]
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert done.exit_code == 2
    assert "does not match the job record" in done.output
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial download

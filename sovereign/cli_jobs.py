"""``sovereign jobs`` and ``sovereign datasets``: the analyst's commands, a client of the HTTP API.

Owns turning a directory into a job submission (every regular file under it, by relative path;
symlinks, special files and anything resolving outside it refused before a byte is sent), the
multipart bodies with upload progress on standard error, following a job's log, and downloading
a job's outputs with each one's size and SHA-256 checked against the job record and its name
kept inside the target directory. It talks to the control plane only through ``/api/v1`` with a
bearer token (``SOVEREIGN_TOKEN`` or ``--token-file``), so it works from any machine the API can be
reached from.

Must not import the services, the app or anything that needs the control plane's configuration;
must never print, log or put into an error message the token. What the server and the job send
back (problem details, log bytes, names) is untrusted text: control characters are escaped before
it reaches the terminal.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import hashlib
import http.client
import ipaddress
import json
import os
import re
import secrets
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn
from urllib.parse import quote, urlencode, urlsplit

import click

from sovereign.text import for_log

#: Where the embedded default (``make run``) serves the API.
DEFAULT_URL = "http://127.0.0.1:8700"
URL_ENV = "SOVEREIGN_URL"
TOKEN_ENV = "SOVEREIGN_TOKEN"  # noqa: S105 - the variable's name, not a token
#: What the API calls a job's or dataset's file: relative POSIX path of plain segments, no
#: ``..`` and no segment starting with a dot (the agent protocol's rule, checked on both sides).
FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
MAX_NAME = 255
#: Job states after which nothing changes (the log is complete).
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
#: Seconds between polls of a running job's log.
POLL_S = 0.5
#: Seconds one HTTP exchange may take (a large upload or download streams within it).
TIMEOUT_S = 300.0
#: Bytes sent or read per step (progress is reported per step).
CHUNK = 256 * 1024
#: Longest answer read whole (a job record, a list, a log chunk of at most 1 MiB); outputs are
#: streamed to disk instead, bounded by the size the job record gives.
MAX_REPLY = 32 << 20
#: Exit status of a command the server or the user's input refused; a job that ran but did not
#: succeed exits 1.
EXIT_ERROR = 2
EXIT_JOB_FAILED = 1


class CliError(Exception):
    """A refusal to show as one line on standard error (exit 2)."""


# -- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A complete HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON.

        :raises CliError: if it is not JSON.
        """
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise CliError(f"the server answered HTTP {self.status} with no JSON") from e


def problem_line(status: int, body: bytes, content_type: str) -> str:
    """One line for an error answer: the problem's title and detail (RFC 9457) or the status."""
    if content_type.split(";", maxsplit=1)[0].strip() in {
        "application/problem+json",
        "application/json",
    }:
        try:
            found = json.loads(body)
        except ValueError:
            found = None
        if isinstance(found, dict):
            title = str(found.get("title") or f"HTTP {status}")
            detail = found.get("detail")
            line = f"{title}: {detail}" if detail else title
            request_id = found.get("request_id")
            where = f"HTTP {status}" + (f", request {request_id}" if request_id else "")
            return for_log(f"{line} ({where})")
    return f"HTTP {status} from the server"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Api:
    """The control plane's API at ``url``, called with ``token`` (never shown anywhere)."""

    def __init__(self, url: str, token: str, *, timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise CliError(f"--url must be http(s)://HOST[:PORT], not {for_log(url)}")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            # A bearer token in clear text over a network is anyone's on the path.
            raise CliError(
                f"refusing to send a token over plain http to {for_log(parts.hostname)}: "
                "use https:// (plain http only to this machine)"
            )
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token

    def __repr__(self) -> str:  # never the token
        return f"Api({self.scheme}://{self.host}:{self.port}{self.prefix})"

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Sequence[bytes] = (),
        headers: Mapping[str, str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request (``body`` in pieces, reporting bytes sent); the open response.

        :raises CliError: if the server cannot be reached or answers with an error (its
            problem details as one line).
        """
        target = self.prefix + path + (f"?{urlencode(query)}" if query else "")
        total = sum(len(piece) for piece in body)
        conn = self._connection()
        try:
            conn.putrequest(method, target)
            conn.putheader("Authorization", f"Bearer {self._token}")
            conn.putheader("Accept", "application/json, application/problem+json, */*")
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body or method in {"POST", "PUT"}:
                conn.putheader("Content-Length", str(total))
            conn.endheaders()
            # The server may refuse a body (413) and close before reading all of it: its
            # answer is the error to show, if it sent one.
            with contextlib.suppress(OSError):
                _send(conn, body, total, progress)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            where = f"{self.scheme}://{self.host}:{self.port or ''}"
            raise CliError(f"cannot reach the control plane at {where}: {for_log(e)}") from e
        if response.status >= 400:
            data = response.read(64 * 1024)
            conn.close()
            raise CliError(
                problem_line(response.status, data, response.getheader("Content-Type", ""))
            )
        return conn, response

    def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        """A whole request and answer (see :meth:`open`), at most :data:`MAX_REPLY` bytes.

        :raises CliError: as :meth:`open` does, or for a longer or cut-off answer.
        """
        conn, response = self.open(method, path, **kwargs)
        try:
            data = response.read(MAX_REPLY + 1)
            if len(data) > MAX_REPLY:
                raise CliError(f"the server's answer is longer than {MAX_REPLY} bytes")
        except (OSError, http.client.HTTPException) as e:
            raise CliError(f"the answer was cut off: {for_log(e)}") from e
        finally:
            conn.close()
        return Reply(response.status, dict(response.getheaders()), data)


def _send(
    conn: http.client.HTTPConnection,
    body: Sequence[bytes],
    total: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    sent = 0
    for piece in body:
        for at in range(0, len(piece), CHUNK):
            step = piece[at : at + CHUNK]
            conn.send(step)
            sent += len(step)
            if progress is not None:
                progress(sent, total)


# -- multipart -----------------------------------------------------------------------------------


def multipart(
    fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, bytes]]
) -> tuple[str, list[bytes]]:
    """A ``multipart/form-data`` body (RFC 7578): its content type and its pieces. Field names
    and file names are ours or checked against :data:`FILE_NAME`, so they need no quoting."""
    boundary = f"sovereign-{secrets.token_hex(16)}"
    pieces: list[bytes] = []
    for name, value in fields:
        pieces.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode()
            + value.encode()
            + b"\r\n"
        )
    for name, filename, data in files:
        pieces.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        )
        pieces.append(data)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", pieces


def check_name(name: str) -> str:
    """``name`` if it is a relative path the API accepts.

    :raises CliError: naming it otherwise.
    """
    if len(name) > MAX_NAME or not FILE_NAME.fullmatch(name) or ".." in name.split("/"):
        raise CliError(
            f"{for_log(name)}: not a relative path of letters, digits, '.', '_' and '-' "
            f"(no segment starting with a dot, at most {MAX_NAME} characters)"
        )
    return name


def _read_regular(path: Path) -> bytes:
    """The bytes of the regular file ``path``, opened without following a symlink."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise CliError(f"{for_log(path)}: cannot open: {e.strerror}") from e
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CliError(f"{for_log(path)}: not a regular file")
        return handle.read()


def collect(folder: Path) -> list[tuple[str, bytes]]:
    """Every regular file under ``folder`` with its path relative to it, sorted.

    :raises CliError: for a symlink, a special file, a name the API would refuse or a file
        resolving outside ``folder``; nothing is sent then.
    """
    if not folder.is_dir():
        raise CliError(f"{for_log(folder)}: not a directory")
    root = folder.resolve(strict=True)
    found: list[tuple[str, bytes]] = []
    for here, dirs, names in os.walk(root, followlinks=False):
        base = Path(here)
        for name in sorted(dirs):
            if (base / name).is_symlink():
                raise CliError(f"{for_log(base / name)}: a symlink; refusing to follow it")
        for name in names:
            path = base / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise CliError(f"{for_log(path)}: a symlink; refusing to follow it")
            if not stat.S_ISREG(mode):
                raise CliError(f"{for_log(path)}: not a regular file")
            if not path.resolve(strict=True).is_relative_to(root):
                raise CliError(f"{for_log(path)}: outside {for_log(root)}")
            relative = check_name(path.relative_to(root).as_posix())
            found.append((relative, _read_regular(path)))
    if not found:
        raise CliError(f"{for_log(folder)}: no files to send")
    return sorted(found)


class Progress:
    """Upload progress on standard error: one line, rewritten on a terminal."""

    def __init__(self, what: str, *, quiet: bool = False) -> None:
        self.what = what
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` bytes sent."""
        if self.quiet:
            return
        percent = 100 if total == 0 else done * 100 // total
        # On a terminal every percent; in a log file every 10 %.
        step = percent if self.tty else percent - percent % 10
        if step == self.shown:
            return
        self.shown = step
        # ``total`` is the whole body (files and the multipart framing around them).
        line = f"uploading {self.what}: {_size(done)} of {_size(total)} ({percent}%)"
        if self.tty:
            click.echo(f"\r{line}", nl=done >= total, err=True)
        else:
            click.echo(line, err=True)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# -- untrusted text to the terminal --------------------------------------------------------------

#: C0 controls but tab and newline, DEL, and C1 controls: what could move the cursor, rewrite
#: the screen or the window title if a job's log wrote it to a terminal.
_TERMINAL_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with terminal controls shown as ``\\xNN`` (tab and newline kept)."""
    return _TERMINAL_UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class LogWriter:
    """Writes a job's log bytes to standard output: escaped text, or raw with ``raw``."""

    def __init__(self, *, raw: bool) -> None:
        self.raw = raw
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes, *, final: bool = False) -> None:
        """Write ``data`` (``final``: no more will come)."""
        out: BinaryIO = sys.stdout.buffer
        if self.raw:
            out.write(data)
        else:
            out.write(printable(self._decode.decode(data, final=final)).encode())
        out.flush()


# -- shared options ------------------------------------------------------------------------------


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise CliError(f"--token-file {for_log(token_file)}: {e.strerror}") from e
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CliError(
            f"no access token: set {TOKEN_ENV} or pass --token-file "
            "(on the embedded default: export SOVEREIGN_TOKEN=$(sovereign dev token "
            "analyst-defence))"
        )
    if any(c.isspace() or not c.isprintable() for c in token):
        raise CliError("the access token holds whitespace or control characters")
    return token


def connection(command: Callable[..., None]) -> Callable[..., None]:
    """Add ``--url`` and ``--token-file`` to ``command``; it gets ``api`` instead, and any
    :class:`CliError` becomes one line on standard error and exit status 2."""

    @click.option(
        "--url",
        envvar=URL_ENV,
        default=DEFAULT_URL,
        show_default=True,
        help=f"The control plane's base URL (or {URL_ENV}).",
    )
    @click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Read the bearer token from FILE instead of {TOKEN_ENV}.",
    )
    @functools.wraps(command)
    def wrapper(url: str, token_file: Path | None, **kwargs: Any) -> None:
        try:
            command(Api(url, _token(token_file)), **kwargs)
        except CliError as e:
            fail(str(e))

    return wrapper


def fail(message: str) -> NoReturn:
    """Print ``message`` as one error line and exit 2."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(EXIT_ERROR)


def _uuid(kind: str) -> Callable[[click.Context, click.Parameter, str], str]:
    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        del ctx, param
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise click.BadParameter(f"not {kind} id (a UUID)") from None

    return check


def parse_label(text: str) -> dict[str, Any]:
    """``SECRET`` or ``SECRET:NATO,EU`` as the API's label object."""
    level, _, compartments = text.partition(":")
    if not level.strip():
        raise click.BadParameter("LEVEL or LEVEL:COMPARTMENT,...")
    return {
        "level": level.strip(),
        "compartments": sorted({c.strip() for c in compartments.split(",") if c.strip()}),
    }


def _label(value: Any) -> str:
    if not isinstance(value, dict):
        return "?"
    comps = sorted(str(c) for c in value.get("compartments") or [])
    level = str(value.get("level", "?"))
    return printable(f"{level}//{'/'.join(comps)}" if comps else level)


def _items(reply: Reply) -> list[dict[str, Any]]:
    found = reply.json()
    items = found.get("items") if isinstance(found, dict) else found
    if not isinstance(items, list):
        raise CliError("the server's list has no items")
    return [item for item in items if isinstance(item, dict)]


def _job(reply: Reply) -> dict[str, Any]:
    found = reply.json()
    if not isinstance(found, dict) or "id" not in found:
        raise CliError("the server's answer is not a job")
    return found


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else printable(str(value))


# -- jobs ----------------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """Run code in your enclave: submit a job, follow its log, fetch its outputs.

    Every command calls the control plane's API (--url, default the embedded default at
    http://127.0.0.1:8700) with the access token in SOVEREIGN_TOKEN or --token-file.
    """


@jobs.command("submit")
@click.argument("enclave", callback=_uuid("an enclave"))
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR"
)
@click.option("--entrypoint", required=True, help="The file in DIR that python3 runs.")
@click.option("--arg", "args", multiple=True, help="An argument for the entry point (repeat).")
@click.option("--input", "inputs", multiple=True, help="A dataset id mounted read-only (repeat).")
@click.option(
    "--output",
    "outputs",
    multiple=True,
    help="A path or glob, relative to the job's directory, to collect as output (repeat).",
)
@click.option("--max-runtime", type=click.IntRange(min=1), help="Seconds before the job is killed.")
@click.option(
    "--wait", is_flag=True, help="Follow the log until the job ends; exit 1 unless it succeeded."
)
@click.option("--raw", is_flag=True, help="With --wait, write the log's bytes unescaped.")
@click.option("--quiet", is_flag=True, help="No upload progress.")
@connection
def jobs_submit(
    api: Api,
    *,
    enclave: str,
    directory: Path,
    entrypoint: str,
    args: tuple[str, ...],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    max_runtime: int | None,
    wait: bool,
    raw: bool,
    quiet: bool,
) -> None:
    """Submit every regular file under DIR as a job in ENCLAVE, with ENTRYPOINT run by python3.

    Paths are kept relative to DIR; symlinks, special files and names the API would refuse stop
    the submission before anything is sent. Prints the job's id.
    """
    files = collect(directory)
    check_name(entrypoint)
    if entrypoint not in {name for name, _ in files}:
        raise CliError(f"--entrypoint {for_log(entrypoint)} is not a file in {for_log(directory)}")
    manifest: dict[str, Any] = {
        "entrypoint": entrypoint,
        "args": list(args),
        "inputs": [str(uuid.UUID(i)) for i in _ids(inputs)],
        "outputs": list(outputs),
    }
    if max_runtime is not None:
        manifest["max_runtime_s"] = max_runtime
    content_type, body = multipart(
        [("manifest", json.dumps(manifest))], [("files", name, data) for name, data in files]
    )
    what = f"{len(files)} file{'' if len(files) == 1 else 's'}"
    job = _job(
        api.call(
            "POST",
            f"/api/v1/enclaves/{enclave}/jobs",
            body=body,
            headers={"Content-Type": content_type},
            progress=Progress(what, quiet=quiet),
        )
    )
    job_id = str(job["id"])
    click.echo(f"submitted job {_text(job_id)} ({_text(job.get('state'))})", err=True)
    click.echo(_text(job_id))
    if wait:
        ended = follow(api, job_id, offset=0, until_done=True, raw=raw)
        sys.exit(report_end(ended))


def _ids(values: Iterable[str]) -> list[str]:
    found = []
    for value in values:
        try:
            found.append(str(uuid.UUID(value)))
        except ValueError:
            raise CliError(f"--input {for_log(value)} is not a dataset id (a UUID)") from None
    return found


def follow(api: Api, job_id: str, *, offset: int, until_done: bool, raw: bool) -> dict[str, Any]:
    """Write the job's log from ``offset``; with ``until_done``, keep polling until it ended.
    Returns the job as it was last read."""
    writer = LogWriter(raw=raw)
    while True:
        reply = api.call("GET", f"/api/v1/jobs/{job_id}/logs", query={"offset": offset})
        if reply.body:
            writer.write(reply.body)
        try:
            offset = int(reply.headers.get("X-Next-Offset", offset + len(reply.body)))
        except ValueError as e:
            raise CliError("the server sent a bad X-Next-Offset") from e
        state = reply.headers.get("X-Job-State", "")
        if reply.body:
            continue  # more may be waiting right now
        if not until_done or state in FINAL_STATES:
            writer.write(b"", final=True)
            return _job(api.call("GET", f"/api/v1/jobs/{job_id}"))
        time.sleep(POLL_S)


def report_end(job: dict[str, Any]) -> int:
    """Say how the job ended on standard error; the exit status for it."""
    state = str(job.get("state"))
    results = job.get("results") or []
    click.echo(
        f"job {_text(job.get('id'))} {_text(state)}: exit code {_text(job.get('exit_code'))}, "
        f"{_runtime(job.get('runtime_s'))}, {len(results)} output"
        f"{'' if len(results) == 1 else 's'}"
        + (f"; {_text(job['error'])}" if job.get("error") else ""),
        err=True,
    )
    return 0 if state == "succeeded" else EXIT_JOB_FAILED


def _runtime(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, int | float) else "-"


@jobs.command("list")
@click.argument("enclave", callback=_uuid("an enclave"))
@connection
def jobs_list(api: Api, enclave: str) -> None:
    """The jobs of ENCLAVE, newest first: id, state, entry point, exit code, runtime."""
    found = _items(api.call("GET", f"/api/v1/enclaves/{enclave}/jobs"))
    click.echo(f"{'JOB':<36}  {'STATE':<10} {'EXIT':>4} {'RUNTIME':>9}  {'CREATED':<20} ENTRYPOINT")
    for job in found:
        created = str(job.get("created_at") or "")[:19]
        click.echo(
            f"{_text(job.get('id')):<36}  {_text(job.get('state')):<10} "
            f"{_text(job.get('exit_code')):>4} {_runtime(job.get('runtime_s')):>9}  "
            f"{_text(created):<20} {_text(job.get('entrypoint'))}"
        )


@jobs.command("show")
@click.argument("job", callback=_uuid("a job"))
@connection
def jobs_show(api: Api, job: str) -> None:
    """Everything the control plane records about JOB: manifest, files, state, outputs."""
    found = _job(api.call("GET", f"/api/v1/jobs/{job}"))
    for key in (
        "id",
        "enclave_id",
        "tenant",
        "state",
        "submitted_by",
        "entrypoint",
        "max_runtime_s",
        "exit_code",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "simulated",
    ):
        click.echo(f"{key + ':':<15} {_text(found.get(key))}")
    click.echo(f"{'label:':<15} {_label(found.get('label'))}")
    click.echo(f"{'runtime:':<15} {_runtime(found.get('runtime_s'))}")
    for key in ("args", "inputs", "outputs"):
        values = found.get(key) or []
        click.echo(f"{key + ':':<15} {' '.join(_text(v) for v in values) or '-'}")
    for key, title in (("files", "files"), ("results", "outputs produced")):
        entries = found.get(key) or []
        click.echo(f"{title}: {len(entries)}")
        for entry in entries:
            if isinstance(entry, dict):
                click.echo(
                    f"  {_text(entry.get('sha256'))}  {_text(entry.get('size')):>10}  "
                    f"{_text(entry.get('name'))}"
                )


@jobs.command("logs")
@click.argument("job", callback=_uuid("a job"))
@click.option("-f", "--follow", "keep", is_flag=True, help="Keep following until the job ends.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Start at this byte.")
@click.option("--raw", is_flag=True, help="Write the log's bytes unescaped.")
@connection
def jobs_logs(api: Api, job: str, keep: bool, offset: int, raw: bool) -> None:
    """Print JOB's log (its standard output and error); -f follows it until the job ends.

    Terminal control characters the job wrote are shown escaped unless --raw.
    """
    ended = follow(api, job, offset=offset, until_done=keep, raw=raw)
    if keep:
        sys.exit(report_end(ended))


@jobs.command("outputs")
@click.argument("job", callback=_uuid("a job"))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the outputs into (created if missing).",
)
@connection
def jobs_outputs(api: Api, job: str, out: Path) -> None:
    """Download JOB's outputs into --out, checking each one's size and SHA-256 against the job
    record; a name that would land outside --out is refused."""
    found = _job(api.call("GET", f"/api/v1/jobs/{job}"))
    results = [r for r in found.get("results") or [] if isinstance(r, dict)]
    if not results:
        state = _text(found.get("state"))
        raise CliError(f"job {job} has no outputs (it is {state})")
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve(strict=True)
    for entry in results:
        name, size, digest = entry.get("name"), entry.get("size"), entry.get("sha256")
        if not (isinstance(name, str) and isinstance(size, int) and isinstance(digest, str)):
            raise CliError("the job record lists an output without name, size and sha256")
        target = safe_target(root, name)
        download(api, job, name, target, size=size, sha256=digest)
        click.echo(f"{digest}  {size:>10}  {target}")


def safe_target(root: Path, name: str) -> Path:
    """Where output ``name`` goes under ``root``: its folders created, none of them a symlink
    or outside ``root``.

    :raises CliError: if ``name`` is no plain relative path or would escape ``root``.
    """
    check_name(name)
    target = root.joinpath(*name.split("/"))
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    # A folder already there could be a symlink pointing elsewhere: resolve and check.
    if not parent.resolve(strict=True).is_relative_to(root) or target.is_symlink():
        raise CliError(f"output {for_log(name)} would be written outside {for_log(root)}")
    return target


def download(api: Api, job: str, name: str, target: Path, *, size: int, sha256: str) -> None:
    """Fetch output ``name`` into ``target`` (via a temporary file beside it, replaced only once
    the size and hash match the job record).

    :raises CliError: if they do not.
    """
    conn, response = api.open("GET", f"/api/v1/jobs/{job}/outputs/{quote(name, safe='/')}")
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    digest = hashlib.sha256()
    got = 0
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as sink:
            while chunk := response.read(min(CHUNK, size - got + 1)):
                got += len(chunk)
                if got > size:
                    break
                digest.update(chunk)
                sink.write(chunk)
        if got != size or not secrets.compare_digest(digest.hexdigest(), sha256.lower()):
            raise CliError(
                f"output {for_log(name)} does not match the job record (expected {size} bytes "
                f"with SHA-256 {for_log(sha256)}, got {'more than ' if got > size else ''}"
                f"{min(got, size)} bytes with {digest.hexdigest()}); not written"
            )
        os.replace(partial, target)
    except (OSError, http.client.HTTPException) as e:
        raise CliError(f"output {for_log(name)}: {for_log(e)}") from e
    finally:
        conn.close()
        partial.unlink(missing_ok=True)


@jobs.command("cancel")
@click.argument("job", callback=_uuid("a job"))
@connection
def jobs_cancel(api: Api, job: str) -> None:
    """Cancel JOB: a queued job never starts, a running one is killed."""
    found = _job(api.call("POST", f"/api/v1/jobs/{job}/cancel"))
    click.echo(f"job {_text(found.get('id'))} is {_text(found.get('state'))}")


# -- datasets ------------------------------------------------------------------------------------


@click.group()
def datasets() -> None:
    """Input data for jobs: upload a file for a tenant at a label, list what you may see.

    Every command calls the control plane's API (--url) with the access token in SOVEREIGN_TOKEN
    or --token-file.
    """


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", required=True, help="The tenant the dataset belongs to.")
@click.option(
    "--label",
    "label_text",
    required=True,
    help="Its label, LEVEL or LEVEL:COMPARTMENT,... (your clearance must dominate it).",
)
@click.option("--name", default=None, help="Its name (default: the file's name).")
@click.option("--quiet", is_flag=True, help="No upload progress.")
@connection
def datasets_upload(
    api: Api, *, file: Path, tenant: str, label_text: str, name: str | None, quiet: bool
) -> None:
    """Upload FILE as a dataset of --tenant at --label; it is stored encrypted under the
    tenant's key. Prints the dataset's id (for jobs submit --input)."""
    label = parse_label(label_text)
    data = _read_regular(file)
    check_name(name or file.name)
    content_type, body = multipart(
        [("tenant", tenant), ("name", name or file.name), ("label", json.dumps(label))],
        [("file", check_name(file.name), data)],
    )
    found = api.call(
        "POST",
        "/api/v1/datasets",
        body=body,
        headers={"Content-Type": content_type},
        progress=Progress(file.name, quiet=quiet),
    ).json()
    if not isinstance(found, dict) or "id" not in found:
        raise CliError("the server's answer is not a dataset")
    click.echo(
        f"uploaded dataset {_text(found.get('name'))} ({_label(found.get('label'))}, "
        f"{_text(found.get('size'))} bytes, sha256 {_text(found.get('sha256'))})",
        err=True,
    )
    click.echo(_text(found["id"]))


@datasets.command("list")
@connection
def datasets_list(api: Api) -> None:
    """The datasets you may see: id, tenant, label, size, name."""
    found = _items(api.call("GET", "/api/v1/datasets"))
    click.echo(f"{'DATASET':<36}  {'TENANT':<12} {'LABEL':<22} {'SIZE':>10}  NAME")
    for item in found:
        click.echo(
            f"{_text(item.get('id')):<36}  {_text(item.get('tenant')):<12} "
            f"{_label(item.get('label')):<22} {_text(item.get('size')):>10}  "
            f"{_text(item.get('name'))}"
        )


def register(group: click.Group) -> None:
    """Add ``jobs`` and ``datasets`` to ``group``."""
    group.add_command(jobs)
    group.add_command(datasets)


__all__ = ["Api", "CliError", "collect", "datasets", "jobs", "register"]

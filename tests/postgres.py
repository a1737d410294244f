"""A real PostgreSQL server for the tests: ``postgres_server`` (session scope) initdb's a
throwaway cluster in a temporary directory, serves it on a free loopback port, and stops it and
removes the directory at the end of the session. Each test takes a database of its own.

The server programs come from ``POSTGRES_BINDIR``, ``PATH`` or Debian's
``/usr/lib/postgresql/<version>/bin`` (``scripts/install-postgres``, called by ``make install``,
puts them there). PostgreSQL refuses to run as root: as root the cluster belongs to, and runs as,
the user ``postgres``. Without a server the tests skip saying why; with ``CI`` set they fail.

Imported by conftest.py, so every test module can ask for it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_SERVER_USER = "postgres"  # who runs the server when the tests run as root
_START_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server on loopback; its superuser needs no password (trust)."""

    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        """The SQLAlchemy/psycopg2 URL of ``database`` on this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        import psycopg2

        name = f"test_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(self.url("postgres"))
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name


def find_server_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None."""
    candidates: list[Path] = []
    if os.environ.get("POSTGRES_BINDIR"):
        candidates.append(Path(os.environ["POSTGRES_BINDIR"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)  # /usr/local/bin links into Debian's
    # Debian keeps the server programs out of PATH, one directory per major version: newest first.
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += debian
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def _server_account() -> tuple[dict[str, Any], str] | str:
    """``(subprocess arguments to run as the server's user, that user's name)``, or why not."""
    if os.geteuid() != 0:
        return {}, pwd.getpwuid(os.geteuid()).pw_name
    try:
        account = pwd.getpwnam(_SERVER_USER)
    except KeyError:
        return (
            f"the tests run as root and PostgreSQL refuses to: there is no user "
            f"{_SERVER_USER!r} to run it as (scripts/install-postgres creates it)"
        )
    # Drop root's supplementary groups too.
    run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    return run_as, account.pw_name


def _unavailable(reason: str) -> None:
    message = f"No PostgreSQL server for the tests: {reason}. Run scripts/install-postgres."
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs it: a skip there would hide a broken set-up
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own (see the module docstring)."""
    bindir = find_server_bindir()
    if bindir is None:
        _unavailable("no initdb found (POSTGRES_BINDIR, PATH, /usr/lib/postgresql/*/bin)")
        return
    account = _server_account()
    if isinstance(account, str):
        _unavailable(account)
        return
    run_as, superuser = account

    # Not under pytest's tmp_path: that is private to the test user (mode 0700).
    root = Path(tempfile.mkdtemp(prefix="dagster-together-pg-"))
    if run_as:
        os.chown(root, run_as["user"], run_as["group"])
    data, log_path = root / "data", root / "server.log"
    server: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [bindir / "initdb", "-D", data, "-U", superuser, "--auth=trust", "-E", "UTF8"]
            + ["--no-locale", "--no-sync"],
            check=True,
            capture_output=True,
            **run_as,
        )
        from tests.helpers import free_port  # not at import: conftest imports this module

        port = free_port()
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [bindir / "postgres", "-D", data, "-p", str(port), "-k", root]
                # A throwaway cluster: durability buys nothing, and the run storage is busy.
                + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
                + ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
                + ["-c", "max_connections=300"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **run_as,
            )
        instance = PostgresServer(host="127.0.0.1", port=port, user=superuser)
        _wait_until_ready(instance, server, log_path)
        yield instance
    except subprocess.CalledProcessError as exc:
        _unavailable(f"initdb failed: {exc.stderr.decode(errors='replace')[-2000:]}")
    finally:
        if server is not None:
            # SIGINT: fast shutdown, whoever is still connected (the cluster is thrown away).
            server.send_signal(signal.SIGINT)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_ready(
    server: PostgresServer, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    import psycopg2

    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            psycopg2.connect(server.url("postgres"), connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres did not accept connections in {_START_TIMEOUT_SECONDS:.0f} s:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                ) from None
            time.sleep(0.1)

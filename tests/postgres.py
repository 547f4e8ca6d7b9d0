"""A real PostgreSQL for tests: initdb + pg_ctl in a temporary folder, on 127.0.0.1 and a free port.

Import the fixture into a test module (`from postgres import postgres_server`). Tests are skipped,
saying why, where the server binaries are missing. initdb refuses to run as root, so under root the
server runs as the `postgres` user and its folder belongs to that user.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_USER = "postgres"


def find_bin_dir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name))
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    return next((Path(path) for path in reversed(candidates) if (Path(path) / "pg_ctl").exists()), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path, folder: Path, run_as: list[str]):
        self.bin_dir, self.folder, self.run_as = bin_dir, folder, run_as
        self.data = folder / "data"
        self.port = free_port()
        self.database_numbers = itertools.count(1)

    def run(self, tool: str, *args: str) -> None:
        command = [*self.run_as, str(self.bin_dir / tool), *args]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if completed.returncode:
            log = self.folder / "server.log"
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({completed.returncode}): {completed.stderr}{server_log}")

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", SERVER_USER, "--auth=trust", "-E", "UTF8", "--locale=C")
        self.resume()

    def stop(self, mode: str = "immediate") -> None:
        """immediate: as a crash (with synchronous_commit off, the last commits may be lost); fast:
        clients are disconnected and everything committed is kept."""
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def resume(self) -> None:
        """Start the server on its data: after initdb, or again after stop()."""
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"test_{next(self.database_numbers)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SERVER_USER} dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin or on PATH")
    folder = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", SERVER_USER, "--"]
    server = PostgresServer(bin_dir, folder, run_as)
    try:
        server.start()
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)

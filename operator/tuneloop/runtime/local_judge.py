"""`evaluation.judge.local` and `dataset.augment.teacher.local`: an LLM judge or teacher served on this machine
by `transformers serve`, for `tuneloop run --local`. The model comes from the model catalog (nothing is downloaded) and the server is pinned to
it (`transformers serve FOLDER`): it answers only for a request whose `model` is that folder's path, which
is therefore the model name the yielded spec carries.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TypeVar
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tuneloop import catalog
from tuneloop.api.augmentation import TeacherSpec
from tuneloop.api.evaluation import JudgeSpec
from tuneloop.offline_env import OFFLINE_ENV

Endpoint = TypeVar("Endpoint", JudgeSpec, TeacherSpec)
LOCAL_HOSTS = ("127.0.0.1", "localhost")
# Guards against a hang (loading a model takes seconds; converting it once, a minute), not a speed target.
STARTUP_SECONDS = 600.0
STOP_SECONDS = 30.0
POLL_SECONDS = 0.25
SERVES_TIMEOUT_SECONDS = 5.0  # one poll of /v1/models; the startup deadline bounds the whole wait
LAST_LINE_CHARS = 500


class LocalJudgeError(RuntimeError):
    """The local judge cannot be started; the message names the spec field or the log to read."""


def local_port(spec: Endpoint, field: str = "evaluation.judge") -> int:
    """The port of spec.url, which must be on 127.0.0.1 or localhost with an explicit port."""
    parts = urlsplit(str(spec.url))
    if parts.hostname not in LOCAL_HOSTS:
        raise LocalJudgeError(f"{field}.url: a local model listens on 127.0.0.1 or localhost, not "
                              f"{parts.hostname!r} (e.g. http://127.0.0.1:8765/v1)")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port:
        raise LocalJudgeError(f"{field}.url: {spec.url} needs a port for the local model to listen on "
                              "(e.g. http://127.0.0.1:8765/v1)")
    return port


def check_port_free(port: int, where: str) -> None:
    with socket.socket() as sock:
        # As the server will: connections of a stopped server lingering in TIME_WAIT do not make it busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            raise LocalJudgeError(f"{where}: port {port} on 127.0.0.1 is already in use ({error.strerror}); "
                                  "stop what listens there or choose another port") from None


def _last_line(log_path: Path) -> str:
    """The log's last line (a server that dies ends on its exception's message), without the traceback."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return next((line.strip()[:LAST_LINE_CHARS] for line in reversed(lines) if line.strip()), "(empty log)")


def _serves(url: str, model: str) -> bool:
    """Whether the server at `url` lists `model` yet; False while it is not listening or still loading."""
    try:  # 127.0.0.1 never goes through a proxy: no environment proxies (trust_env=False)
        response = httpx.get(f"{url}/models", timeout=SERVES_TIMEOUT_SECONDS, trust_env=False)
        listed = response.raise_for_status().json().get("data") or []
    except (httpx.HTTPError, ValueError):
        return False
    return any(entry.get("id") == model for entry in listed)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def transformers_server(model_path: Path, port: int, log_path: Path, startup_seconds: float = STARTUP_SECONDS,
                        threads: int | None = None) -> Iterator[str]:
    """`transformers serve` pinned to the Hugging Face folder `model_path` on 127.0.0.1:`port`, offline, its
    output in `log_path`. Yields the base URL (http://127.0.0.1:PORT/v1) once /v1/models lists the model
    (the server loads it before it listens); stops it at exit. The model name to request is str(model_path).
    `threads`: its CPU threads (OMP_NUM_THREADS); on CPUs other processes keep busy, 1 generates several
    times faster than torch's default of one per core, which then contend."""
    from tuneloop.runtime.local import terminated_with_parent

    url, model = f"http://127.0.0.1:{port}/v1", str(model_path)
    env = {**os.environ, **OFFLINE_ENV, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", model,
               "--host", "127.0.0.1", "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, preexec_fn=terminated_with_parent)
    try:
        deadline = time.monotonic() + startup_seconds
        while not _serves(url, model):
            if process.poll() is not None:
                raise LocalJudgeError(f"transformers serve {model} exited with code {process.returncode} before "
                                      f"it answered on {url}: {_last_line(log_path)} (whole log: {log_path})")
            if time.monotonic() > deadline:
                raise LocalJudgeError(f"transformers serve {model} did not answer on {url} within "
                                      f"{startup_seconds:.0f} s: {_last_line(log_path)} (whole log: {log_path})")
            time.sleep(POLL_SECONDS)
        yield url
    finally:
        _stop(process)


@contextmanager
def serving_local_judge(spec: Endpoint, log_path: Path, model_cache: Path | None = None,
                        startup_seconds: float = STARTUP_SECONDS, threads: int | None = None,
                        field: str = "evaluation.judge") -> Iterator[Endpoint]:
    """Serves spec.model (a model catalog name) on spec.url's 127.0.0.1 port for as long as the block runs;
    yields the spec with url and model as the server expects them. LocalJudgeError names the spec field at
    fault (model not in the catalog, url not local, port busy) or the log of a server that did not start."""
    port = local_port(spec, field)
    try:
        model_path = catalog.materialize(catalog.lookup(spec.model), model_cache)
    except catalog.CatalogError as error:
        raise LocalJudgeError(f"{field}.model: {error}; a local model is one of the catalog") from None
    check_port_free(port, f"{field}.url")
    with transformers_server(model_path, port, log_path, startup_seconds, threads) as url:
        yield spec.model_copy(update={"url": url, "model": str(model_path)})

"""`tuneloop serve --local` as a user starts it: a subprocess on a free port, stopped at the end."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Guards against a hang (loading SmolLM2 takes seconds), not a speed target.
HANG_SECONDS = 600


@contextmanager
def local_model_server(workdir: Path, run: str) -> Iterator[str]:
    """The endpoint's base URL (http://127.0.0.1:PORT/v1) once its ready line is printed."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tuneloop.cli", "serve", "--local", run, "--workdir", str(workdir), "--port", "0"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
        hang_guard = threading.Timer(HANG_SECONDS, process.kill)
        hang_guard.start()
        try:
            url = None
            for line in process.stdout:
                found = re.search(r"ready: OpenAI-compatible endpoint (http://127\.0\.0\.1:\d+/v1)", line)
                if found:
                    url = found.group(1)
                    break
            hang_guard.cancel()
            if url is None:
                log.seek(0)
                raise AssertionError(f"tuneloop serve exited ({process.wait()}) before it was ready:\n"
                                     + log.read()[-3000:])
            # Keep reading its access log so that a full pipe never blocks the server.
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            yield url
        finally:
            hang_guard.cancel()
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

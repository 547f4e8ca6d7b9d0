"""A local workload's output goes to the terminal, as it always did, and to `log.txt` in its folder,
so `tuneloop logs` can show it after the run."""

from __future__ import annotations

import os
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

LOG_FILE = "log.txt"


class WorkloadLog:
    """Copies a process's stdout and stderr, line by line, to this process's file descriptors 1 and 2
    (where the workload wrote before: tests and terminals see the same) and to one log file."""

    def __init__(self, process: subprocess.Popen, path: Path, title: str) -> None:
        self._file = path.open("ab")
        self._file.write(f"--- {title}, started {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC ---\n".encode())
        self._file.flush()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._copy, args=(pipe, descriptor), daemon=True)
                         for pipe, descriptor in ((process.stdout, 1), (process.stderr, 2)) if pipe is not None]
        for thread in self._threads:
            thread.start()

    def _copy(self, pipe: IO[bytes], descriptor: int) -> None:
        with pipe:
            for line in iter(pipe.readline, b""):
                try:
                    os.write(descriptor, line)
                except OSError:
                    pass  # a closed terminal must not stop the log file
                with self._lock:
                    if not self._file.closed:
                        self._file.write(line)
                        self._file.flush()

    def close(self, timeout: float = 10) -> None:
        """After the process has ended: wait for the last lines, then close the file."""
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            if not self._file.closed:
                self._file.close()

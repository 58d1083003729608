"""`vitrine serve` as its own process, as a shop runs it: what `make demo`, the benches and the tests start."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def start_serve(args: list[str], timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """Starts `vitrine serve --port 0 ARGS` and returns the process and its HOST:PORT once it prints it."""
    proc = subprocess.Popen([sys.executable, "-m", "vitrine.cli.main", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, line.split("listening on ", 1)[1].strip()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
    proc.kill()
    raise RuntimeError("server did not start listening in time")


def start_server(bundle: Path, extra: list[str] | None = None, timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """Starts `vitrine serve --bundle BUNDLE --port 0` and returns the process and its HOST:PORT once it prints it."""
    return start_serve(["--bundle", str(bundle), *(extra or [])], timeout_s)

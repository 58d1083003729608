"""A model registry directory: numbered versions, an atomically replaced `current` pointer, history, rollback.

    REGISTRY/v0001/ ...          copies of promoted model directories (never changed after promotion)
    REGISTRY/current.json        {"version": "v0002", "path": "v0002", "updated": ISO-8601}; replaced with os.replace
    REGISTRY/history.jsonl       one line per promote / rollback, with the version that was current before

A reader (the server watching for a new model) reads current.json and never sees half of one.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitrine.indexer.jsonl import read_jsonl
from vitrine.ranking.clicklog import utc_now_iso

CURRENT = "current.json"
HISTORY = "history.jsonl"
VERSION_RE = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    current: bool
    promoted: str = ""
    source: str = ""


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked; the message says why."""


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one promote / rollback at a time, across processes
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(found, key=lambda v: int(VERSION_RE.match(v).group(1)))

    def current(self) -> str | None:
        path = self.root / CURRENT
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))["version"]

    def current_path(self) -> Path:
        version = self.current()
        if version is None:
            raise RegistryError(f"registry {self.root} has no current model yet; promote one first.")
        return self.root / version

    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.is_file():
            return []
        return read_jsonl(path)

    def list(self) -> list[ModelVersion]:
        current = self.current()
        promoted = {e["version"]: e for e in self.history() if e["action"] == "promote"}
        return [ModelVersion(v, self.root / v, v == current, promoted.get(v, {}).get("ts", ""),
                             promoted.get(v, {}).get("source", "")) for v in self.versions()]

    def _set_current(self, version: str) -> None:
        tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"version": version, "path": version, "updated": utc_now_iso()}) + "\n", encoding="utf-8")
        os.replace(tmp, self.root / CURRENT)

    def _append_history(self, event: Mapping[str, Any]) -> None:
        with open(self.root / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(event), default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def promote(self, model_dir: str | Path, note: Mapping[str, Any] | None = None) -> str:
        """Copies a model directory in as the next version and makes it current; returns the version."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RegistryError(f"cannot promote {model_dir}: it is not a directory.")
        with self._locked():
            existing = self.versions()
            number = int(VERSION_RE.match(existing[-1]).group(1)) + 1 if existing else 1
            version = f"v{number:04d}"
            staging = self.root / f".{version}.staging"
            if staging.exists():
                shutil.rmtree(staging)
            shutil.copytree(model_dir, staging, ignore=shutil.ignore_patterns("checkpoint.pt", "checkpoint.tmp", ".best"))
            os.rename(staging, self.root / version)  # whole version appears at once
            previous = self.current()
            self._set_current(version)
            self._append_history({"ts": utc_now_iso(), "action": "promote", "version": version, "previous": previous,
                                  "source": str(model_dir.resolve()), "note": dict(note or {})})
            return version

    def rollback(self) -> str:
        """Makes current the version that was current before the present one was promoted; returns it."""
        with self._locked():
            current = self.current()
            if current is None:
                raise RegistryError(f"registry {self.root} has no current model to roll back from.")
            made = [e for e in self.history() if e["action"] == "promote" and e["version"] == current]
            previous = made[-1]["previous"] if made else None
            if previous is None:
                raise RegistryError(f"{current} is the first promoted version in {self.root}; there is nothing to roll back to.")
            if not (self.root / previous).is_dir():
                raise RegistryError(f"cannot roll back to {previous}: {self.root / previous} is missing.")
            self._set_current(previous)
            self._append_history({"ts": utc_now_iso(), "action": "rollback", "version": previous, "previous": current})
            return previous

"""A tenant's directory: what one shop owns inside a multi-tenant deployment (`vitrine serve --tenants DIR`).

    DIR/<tenant>/tenant.toml      optional: which bundle and second-stage models, quota, experiment, config overrides
    DIR/<tenant>/current          the serving bundle (a symlink `vitrine retrain --tenant` re-points), or `bundle/`
    DIR/<tenant>/logs/            clicks.jsonl, features.jsonl, experiment.jsonl (Feedback of this tenant only)
    DIR/<tenant>/registry/        the tenant's model registry (the gate promotes here)

The server, `vitrine retrain --tenant` and `vitrine ab report --tenant` all read this one layout.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_FILE = "tenant.toml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Sections of vitrine.toml a tenant may override; the others ([server], [index] build settings, ...) are the server's.
OVERRIDABLE = ("encoders", "search", "rerank", "live", "catalog", "logs", "gate")
TENANT_SECTIONS = ("quota", "experiment")
_KEYS = ("bundle", "reranker", "ranker", "read_only")


def check_name(name: str, field_name: str = "tenant") -> str:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"{field_name}: {name!r} is not a tenant name (1-63 of a-z, 0-9, '_' and '-', starting with a "
                         f"letter or digit).")
    return name


@dataclass(frozen=True)
class TenantSpec:
    """One tenant as written on disk; paths are absolute."""

    name: str
    dir: Path
    bundle: Path
    reranker: str | None = None
    ranker: str | None = None
    read_only: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)   # {section: {key: value}} merged over vitrine.toml
    quota: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def registry(self) -> Path:
        return self.dir / "registry"

    @property
    def click_log(self) -> Path:
        return self.logs / "clicks.jsonl"

    @property
    def experiment_log(self) -> Path:
        return self.logs / "experiment.jsonl"

    @classmethod
    def read(cls, tenant_dir: str | Path) -> TenantSpec:
        """Reads DIR/<name>; errors name the file and the field."""
        tenant_dir = Path(tenant_dir).absolute()
        name = check_name(tenant_dir.name)
        spec_path = tenant_dir / SPEC_FILE
        data: dict[str, Any] = {}
        if spec_path.is_file():
            try:
                data = tomllib.loads(spec_path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{spec_path} is not valid TOML: {exc}") from None
        unknown = set(data) - set(_KEYS) - set(OVERRIDABLE) - set(TENANT_SECTIONS)
        if unknown:
            raise ValueError(f"{spec_path}: unknown key(s) {', '.join(sorted(unknown))}; a tenant sets "
                             f"{', '.join(_KEYS)} and the sections {', '.join(OVERRIDABLE + TENANT_SECTIONS)}.")
        for key in ("bundle", "reranker", "ranker"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f"{spec_path}: {key} must be a path (a string), got {data[key]!r}.")
        if "read_only" in data and not isinstance(data["read_only"], bool):
            raise ValueError(f"{spec_path}: read_only must be true or false, got {data['read_only']!r}.")
        for section in OVERRIDABLE + TENANT_SECTIONS:
            if section in data and not isinstance(data[section], dict):
                raise ValueError(f"{spec_path}: [{section}] must be a table.")

        def path(value: str | None) -> str | None:
            if not value:
                return None
            p = Path(value)
            return str(p if p.is_absolute() else tenant_dir / p)

        bundle = path(data.get("bundle")) or str(default_bundle(tenant_dir))
        return cls(name=name, dir=tenant_dir, bundle=Path(bundle), reranker=path(data.get("reranker")),
                   ranker=path(data.get("ranker")), read_only=bool(data.get("read_only", False)),
                   overrides={s: dict(data[s]) for s in OVERRIDABLE if s in data},
                   quota=dict(data.get("quota", {})), experiment=dict(data.get("experiment", {})))


def default_bundle(tenant_dir: Path) -> Path:
    """`current` (a pointer retrain re-points) when it exists, else `bundle/`."""
    current = tenant_dir / "current"
    return current if current.exists() or current.is_symlink() else tenant_dir / "bundle"


def point_current(link: Path, target: Path) -> None:
    """Re-points a symlink atomically: a reader sees the old target or the new one, never none."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def list_tenants(root: str | Path) -> list[TenantSpec]:
    """Every tenant under `root`, by name; directories starting with '.' (dropped tenants) are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"tenants directory {root} does not exist.")
    return [TenantSpec.read(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def tenant_dir(root: str | Path, name: str) -> Path:
    """DIR/<name> of an existing tenant, or ValueError naming it."""
    path = Path(root) / check_name(name)
    if not path.is_dir():
        raise ValueError(f"tenant {name!r} does not exist under {root}.")
    return path


def merge_config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """vitrine.toml's sections with a tenant's overrides on top, one level deep (a section's keys replace)."""
    out = {section: dict(values) for section, values in base.items()}
    for section, values in overrides.items():
        out.setdefault(section, {}).update(values)
    return out


def write_spec(tenant_dir: Path, *, bundle: str = "", reranker: str = "", ranker: str = "", read_only: bool = False,
               extra_toml: str = "") -> Path:
    """Writes tenant.toml for a tenant created over the Admin API; `extra_toml` holds sections ([quota], [search], ...)."""
    try:
        extra = tomllib.loads(extra_toml)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config_toml: not valid TOML: {exc}") from None
    stray = set(extra) - set(OVERRIDABLE) - set(TENANT_SECTIONS)
    if stray:  # paths (bundle, models) are the request's fields, checked there; here only sections
        raise ValueError(f"config_toml: {', '.join(sorted(stray))} not allowed; it holds the sections "
                         f"{', '.join(OVERRIDABLE + TENANT_SECTIONS)}.")
    lines = [f"{k} = {_toml_str(v)}" for k, v in (("bundle", bundle), ("reranker", reranker), ("ranker", ranker)) if v]
    if read_only:
        lines.append("read_only = true")
    text = "\n".join(lines) + "\n" + (extra_toml.strip() + "\n" if extra_toml.strip() else "")
    tenant_dir.mkdir(parents=True, exist_ok=True)
    path = tenant_dir / SPEC_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

"""Opening what a server serves for one bundle or one tenant: its configuration, its `Served` record, its live index.

`vitrine serve --bundle` and `--tenants` both come here; the gRPC server (server/) wraps the result in its own
runtime objects (query log, quota, reloader), and the layout of a tenant's directory is serving/tenancy.py's.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vitrine.indexer.live import LiveIndex
from vitrine.serving.assemble import Served, open_served
from vitrine.serving.config import ExperimentConfig, LiveConfig, QuotaConfig, VitrineConfig
from vitrine.serving.pool import ModelPool
from vitrine.serving.tenancy import TenantSpec, merge_config

# Opens a bundle with second-stage models: (bundle dir, reranker dir or None, ranker dir or None) -> Served; a None
# keeps the model being served (a reload that names no second-stage model keeps today's).
Loader = Callable[[str, "str | None", "str | None"], Served]


def served_loader(config: VitrineConfig, reranker: str | None = None, ranker: str | None = None, *,
                  pool: ModelPool | None = None, experiment: ExperimentConfig | None = None) -> Loader:
    """How a server (re)opens its bundle: the configuration's sections, the last second-stage models named."""
    models = {"reranker": reranker, "ranker": ranker}

    def load(bundle: str, reranker: str | None = None, ranker: str | None = None) -> Served:
        models.update({k: v for k, v in (("reranker", reranker), ("ranker", ranker)) if v})
        return open_served(bundle, config, reranker=models["reranker"], ranker=models["ranker"], pool=pool,
                           experiment=experiment)

    return load


def start_live(served: Served, config: LiveConfig) -> LiveIndex:
    """The live index of a writable server over `served`'s bundle: the WAL replayed, the writer lock held. The
    encoders go in unbatched: a write encodes its own batch, and must not wait in a query's micro-batch window."""
    from vitrine.encoders.batching import unbatched

    searcher = served.searcher
    live = LiveIndex(searcher.bundle, unbatched(searcher.text_encoder), config, unbatched(searcher.clip_encoder))
    live.start()
    return live


@dataclass(frozen=True)
class OpenedTenant:
    """One tenant, opened: what the gRPC server needs to serve it."""

    spec: TenantSpec
    config: VitrineConfig
    served: Served
    live: LiveIndex | None          # None: read-only, so its bundle may be hot-swapped with `loader`
    loader: Loader
    quota: QuotaConfig
    experiment: ExperimentConfig | None

    @property
    def pointer(self) -> str | None:
        """The `current` symlink a reload without a path follows, when the tenant serves one."""
        return str(self.spec.bundle) if self.spec.bundle.is_symlink() else None


def tenant_config(raw: dict[str, Any], spec: TenantSpec) -> VitrineConfig:
    """vitrine.toml with the tenant's overrides. A tenant's logs are its own, in its directory: the server-wide
    [logs] paths would mix tenants' data, and a path outside the directory is refused."""
    merged = merge_config(raw, spec.overrides)
    logs = merged["logs"] = {**{k: v for k, v in raw.get("logs", {}).items() if k not in ("click_log", "feature_log")},
                             **spec.overrides.get("logs", {})}
    logs["click_log"] = logs.get("click_log") or str(spec.click_log)
    for key in ("click_log", "feature_log"):
        if logs.get(key):
            path = (spec.dir / logs[key]).resolve()
            if spec.dir.resolve() not in path.parents:
                raise ValueError(f"tenant {spec.name}: [logs] {key} {logs[key]!r} is outside its directory.")
            logs[key] = str(path)
    return VitrineConfig.from_dict(merged)


def open_tenant(spec: TenantSpec, raw: dict[str, Any], pool: ModelPool, read_only: bool) -> OpenedTenant:
    """Opens a tenant: vitrine.toml with its overrides, models from the shared pool, its own live index (WAL)."""
    if not (spec.bundle / "manifest.json").is_file():
        raise FileNotFoundError(f"tenant {spec.name}: {spec.bundle} is not a Vitrine bundle (no manifest.json).")
    config = tenant_config(raw, spec)
    experiment = ExperimentConfig.from_dict(spec.experiment) if spec.experiment else None
    loader = served_loader(config, spec.reranker, spec.ranker, pool=pool, experiment=experiment)
    served = loader(str(spec.bundle.resolve()), None, None)
    live = None
    if not (read_only or spec.read_only):
        try:
            live = start_live(served, config.live)
        except BaseException:
            served.retire()   # its models go back to the pool
            raise
    quota = QuotaConfig.from_dict({**raw.get("quota", {}), **spec.quota})
    return OpenedTenant(spec, config, served, live, loader, quota, experiment)


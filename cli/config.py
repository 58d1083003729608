"""The service-wide TOML configuration (`vitrine.toml`), read once at an entry point and passed down explicitly.

It lives with the commands because it spans both doors: [server] is the gRPC server's, [gate] the trainer's.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitrine.encoders.config import EncoderConfig
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bm25 import Bm25Config
from vitrine.indexer.live import LiveConfig
from vitrine.ranking.assemble import ModelPool, open_searcher
from vitrine.ranking.pipeline import SearchConfig, Searcher
from vitrine.ranking.rerank import RerankConfig
from vitrine.server.app import ServerConfig
from vitrine.server.catalog_service import CatalogConfig
from vitrine.server.query_log import LogConfig
from vitrine.server.tenants import QuotaConfig
from vitrine.trainer.gate import GateConfig

SECTIONS = ("index", "bm25", "encoders", "search", "rerank", "server", "live", "catalog", "logs", "gate", "quota")


@dataclass(frozen=True)
class VitrineConfig:
    index: AnnConfig = field(default_factory=AnnConfig)
    bm25: Bm25Config = field(default_factory=Bm25Config)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    logs: LogConfig = field(default_factory=LogConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)   # every tenant's, unless its tenant.toml sets its own

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VitrineConfig:
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise ValueError(f"Unknown section(s) {', '.join(sorted(unknown))}; sections are {', '.join(SECTIONS)}.")
        return cls(
            index=AnnConfig.from_dict(d.get("index", {})),
            bm25=Bm25Config.from_dict(d.get("bm25", {})),
            encoders=EncoderConfig.from_dict(d.get("encoders", {})),
            search=SearchConfig.from_dict(d.get("search", {})),
            rerank=RerankConfig.from_dict(d.get("rerank", {})),
            server=ServerConfig.from_dict(d.get("server", {})),
            live=LiveConfig.from_dict(d.get("live", {})),
            catalog=CatalogConfig.from_dict(d.get("catalog", {})),
            logs=LogConfig.from_dict(d.get("logs", {})),
            gate=GateConfig.from_dict(d.get("gate", {})),
            quota=QuotaConfig.from_dict(d.get("quota", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {name: asdict(getattr(self, name)) for name in SECTIONS}
        out["search"]["fusion"] = self.search.fusion.value
        out["catalog"].pop("auth_token", None)  # a secret never goes into a bundle's manifest
        return out


def read_config_dict(path: str | Path | None) -> dict[str, Any]:
    """The TOML file's sections as written (tenants merge their overrides over them), {} when path is None."""
    if path is None:
        return {}
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start}); save it as UTF-8.") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path} is a directory; give the path of a vitrine.toml.") from None
    except PermissionError:
        raise ValueError(f"config file {path} cannot be read: permission denied; check its owner and mode.") from None


def load_config(path: str | Path | None) -> VitrineConfig:
    """Reads a TOML file, or returns the defaults when path is None. Errors name the file and field."""
    if path is None:
        return VitrineConfig()
    data = read_config_dict(path)
    try:
        return VitrineConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config file {path}: {exc}") from None


def searcher_for(bundle: str, config: VitrineConfig, reranker: str | None = None, ranker: str | None = None,
                 pool: ModelPool | None = None) -> Searcher:
    """Opens `bundle` with the sections of `config` that shape a search, its models from `pool` when given."""
    return open_searcher(bundle, ann=config.index, encoders=config.encoders, search=config.search, rerank=config.rerank,
                         reranker=reranker, ranker=ranker, pool=pool)


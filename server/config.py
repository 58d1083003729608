"""The service-wide TOML configuration (`vitrine.toml`), read once at an entry point and passed down explicitly."""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from indexer.ann import AnnConfig
from indexer.bm25 import Bm25Config
from indexer.live import LiveConfig
from ranking.pipeline import SearchConfig
from ranking.rerank import RerankConfig
from server.catalog_service import CatalogConfig
from server.query_log import LogConfig
from server.service import ServerConfig
from trainer.gate import GateConfig

SECTIONS = ("index", "bm25", "encoders", "search", "rerank", "server", "live", "catalog", "logs", "gate")


@dataclass(frozen=True)
class EncoderConfig:
    text_model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    device: str | None = None  # None: CUDA when present, else CPU

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown key(s) in [encoders]: {', '.join(sorted(unknown))}.")
        cfg = cls(**d)
        if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
            raise ValueError(f"Field 'encoders.batch_size' must be a positive integer, got {cfg.batch_size!r}.")
        if cfg.device not in (None, "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
            raise ValueError(f"Field 'encoders.device' must be \"cpu\", \"cuda\" or \"cuda:N\", got {cfg.device!r}.")
        return cfg


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VitrineConfig:
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise ValueError(f"Unknown section(s) {', '.join(sorted(unknown))}; sections are {', '.join(SECTIONS)}.")
        for name in SECTIONS:
            if name in d and not isinstance(d[name], dict):
                raise ValueError(f"Section [{name}] must be a table.")
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
        )

    def to_dict(self) -> dict[str, Any]:
        out = {name: asdict(getattr(self, name)) for name in SECTIONS}
        out["search"]["fusion"] = self.search.fusion.value
        out["catalog"].pop("auth_token", None)  # a secret never goes into a bundle's manifest
        return out


def load_config(path: str | Path | None) -> VitrineConfig:
    """Reads a TOML file, or returns the defaults when path is None. Errors name the file and field."""
    if path is None:
        return VitrineConfig()
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return VitrineConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config file {path}: {exc}") from None

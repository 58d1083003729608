"""Everything a server is configured by: every section of `vitrine.toml` and the TOML reader, in one place.

The library's own sections (index, bm25, encoders, search, rerank, live) are defined beside the code they configure
and gathered here; the sections only the doors read (server, catalog, logs, quota, experiment, gate) live here, so
that loading a configuration imports neither the gRPC server nor the trainers.
"""
from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitrine.encoders.config import EncoderConfig
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bm25 import Bm25Config
from vitrine.indexer.live import MAX_PHOTO_BYTES, LiveConfig
from vitrine.ranking.experiments import ExperimentKind
from vitrine.ranking.pipeline import SearchConfig
from vitrine.ranking.rerank import RerankConfig
from vitrine.serving.schema import check, check_positive_ints, config_from_dict

SECTIONS = ("index", "bm25", "encoders", "search", "rerank", "server", "live", "catalog", "logs", "gate", "quota")
# The metrics the promotion gates measure (trainer/gate.py, trainer/text_gate.py); [gate] may name only these.
CLICK_METRICS = ("click_ndcg@10", "click_recall@10")
# On the judged set of `vitrine gate --judgments` (people's grades, ranking/judgments.py).
JUDGED_METRICS = ("judged_ndcg@10", "judged_recall@10")
GENERAL_METRICS = ("catalog_i2t_r@10", "catalog_t2i_r@10", "flickr_i2t_r@10", "flickr_t2i_r@10")
TEXT_METRICS = ("text_ndcg@10", "text_recall@10")
TEXT_GENERAL_METRICS = ("caption_r@10",)


@dataclass(frozen=True)
class ServerConfig:
    """[server] section: gRPC worker threads, admission limit, message size and the drain time on shutdown."""

    max_workers: int = 8
    # Requests beyond this many in flight are refused with RESOURCE_EXHAUSTED instead of queueing forever.
    max_concurrent_rpcs: int = 64
    max_message_bytes: int = 12 * 1024 * 1024
    grace_s: float = 5.0
    # Clients re-resolve DNS only when a connection ends: closing each connection after this long (gracefully)
    # lets round-robin clients of a headless Service find replicas a scale-up added. 0 = never.
    max_connection_age_s: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> ServerConfig:
        cfg = config_from_dict(cls, d, "server")
        check_positive_ints(cfg, "server", ("max_workers", "max_concurrent_rpcs", "max_message_bytes"))
        return cfg


@dataclass(frozen=True)
class CatalogConfig:
    """[catalog] section: write authentication and request limits."""

    auth_token: str | None = None  # when set, write RPCs need metadata `authorization: Bearer <token>`
    max_ids: int = 1000            # ids per Delete or Get
    max_text_chars: int = 20_000   # per text field
    max_attributes: int = 100
    max_attribute_chars: int = 1000
    max_uri_chars: int = 2048
    max_image_bytes: int = 10 * 1024 * 1024  # per photo sent as bytes (the gRPC message limit applies too)
    max_streams: int = 8           # concurrent Upsert streams; more get RESOURCE_EXHAUSTED

    @classmethod
    def from_dict(cls, d: dict) -> CatalogConfig:
        cfg = config_from_dict(cls, d, "catalog")
        check(cfg.auth_token is None or len(cfg.auth_token) >= 16, "catalog.auth_token",
              "a string of at least 16 characters", "<hidden>")
        check_positive_ints(cfg, "catalog", ("max_ids", "max_text_chars", "max_attributes", "max_attribute_chars",
                                             "max_uri_chars", "max_image_bytes", "max_streams"))
        check(cfg.max_image_bytes <= MAX_PHOTO_BYTES, "catalog.max_image_bytes", f"at most {MAX_PHOTO_BYTES}",
              cfg.max_image_bytes)
        return cfg


@dataclass(frozen=True)
class LogConfig:
    """[logs] section."""

    feature_log: str = ""              # JSONL path; empty = no feature log
    feature_sample_rate: float = 0.0   # share of searches logged without being asked (0..1)
    click_log: str = ""                # JSONL path for Feedback; empty = Feedback answers FAILED_PRECONDITION
    pending_searches: int = 10_000     # searches remembered for Feedback (oldest forgotten first)

    @classmethod
    def from_dict(cls, d: dict) -> LogConfig:
        cfg = config_from_dict(cls, d, "logs")
        check(0 <= cfg.feature_sample_rate <= 1, "logs.feature_sample_rate", "between 0 and 1", cfg.feature_sample_rate)
        check_positive_ints(cfg, "logs", ("pending_searches",))
        return cfg


@dataclass(frozen=True)
class QuotaConfig:
    """[quota] section (server-wide default) or a tenant's own [quota]: 0 means unlimited."""

    qps: float = 0.0              # requests per second, a token bucket refilled at this rate
    burst: float = 0.0            # the bucket's size; 0 = max(1, qps), one second of traffic
    bytes_per_s: float = 0.0      # request bytes per second (image queries, upserts)
    max_items: int = 0            # items in the tenant's catalog; an upsert of a new id beyond it is refused
    max_in_flight: int = 0        # concurrent RPCs of this tenant; keeps one shop from holding every worker thread

    @classmethod
    def from_dict(cls, d: dict) -> QuotaConfig:
        cfg = config_from_dict(cls, d, "quota")
        for name in ("qps", "burst", "bytes_per_s", "max_items", "max_in_flight"):
            check(getattr(cfg, name) >= 0, f"quota.{name}", "zero (unlimited) or positive", getattr(cfg, name))
        return cfg


@dataclass(frozen=True)
class ExperimentConfig:
    """A tenant's [experiment]: compare arm "a" (the served models) with arm "b" (other second-stage models).

    kind "ab": each session sees one arm (sticky, by hash); "interleave": every response team-draft interleaves both
    arms' rankings. Feedback clicks are credited to the arm or team that produced the clicked item."""

    name: str = ""
    kind: ExperimentKind = ExperimentKind.INTERLEAVE
    split: float = 0.5            # A/B: share of sessions in arm b
    reranker: str = ""            # arm b's cross-encoder directory (empty = arm a's)
    ranker: str = ""              # arm b's LightGBM ranker directory (empty = arm a's)

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        cfg = config_from_dict(cls, d, "experiment")
        check(bool(cfg.name.strip()), "experiment.name", "a non-empty name", cfg.name)
        check(0.0 < cfg.split < 1.0, "experiment.split", "between 0 and 1", cfg.split)
        check(bool(cfg.reranker or cfg.ranker), "experiment", "arm b's reranker or ranker", "neither")
        return cfg


@dataclass(frozen=True)
class GateConfig:
    """[gate] section: when a trained model may replace the current one (trainer/gate.py)."""

    min_gain: float = 0.01                 # absolute gain every in-domain metric must reach
    max_general_drop: float = 0.10         # largest relative drop allowed on each general metric
    in_domain_metrics: tuple[str, ...] = CLICK_METRICS
    general_metrics: tuple[str, ...] = GENERAL_METRICS
    general_items: int = 1000              # catalog pairs sampled (seeded) for general retrieval
    composed_text_weight: float = 0.5      # as ranking.pipeline composes image + text queries
    seed: int = 0
    # A general metric where the current model is below this is reported but does not gate: a model at chance level
    # has nothing to forget, and a "10% drop" of a handful of hits is noise. flickr8k is measured on the 500 photos
    # no CLIP trains on (trainer/clip.general_split), where chance R@10 is 0.02 and the default CLIP is well above.
    chance_floor: float = 0.05

    def __post_init__(self) -> None:
        check(math.isfinite(self.min_gain) and self.min_gain >= 0, "gate.min_gain", "a non-negative number", self.min_gain)
        check(0.0 <= self.max_general_drop <= 1.0, "gate.max_general_drop", "a fraction in [0, 1]", self.max_general_drop)
        for name, allowed in (("in_domain_metrics", CLICK_METRICS + JUDGED_METRICS + TEXT_METRICS),
                              ("general_metrics", GENERAL_METRICS + TEXT_GENERAL_METRICS)):
            bad = [m for m in getattr(self, name) if m not in allowed]
            check(not bad, f"gate.{name}", f"known metrics ({', '.join(allowed)}); unknown metric(s) {', '.join(bad)}",
                  getattr(self, name))
        check(bool(self.in_domain_metrics), "gate.in_domain_metrics",
              "at least one metric, or nothing could justify a promotion", self.in_domain_metrics)
        check(self.general_items >= 2, "gate.general_items", "at least 2", self.general_items)
        check(self.composed_text_weight >= 0, "gate.composed_text_weight", "non-negative", self.composed_text_weight)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> GateConfig:
        """Builds the [gate] section of vitrine.toml; raises ValueError naming a bad or unknown field."""
        return config_from_dict(cls, obj, "gate")


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

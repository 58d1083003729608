"""Configuration the whole library shares: `config_from_dict` for every frozen config dataclass, and [encoders].

Every section of `vitrine.toml` is a frozen dataclass built by `config_from_dict`, so unknown keys and values of
the wrong type get one wording everywhere: "Field 'section.name' must be …, got …." The dataclass's own
`from_dict` adds only the range checks its fields need, with `check`.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def check(ok: bool, field: str, expectation: str, value: Any) -> None:
    """Raises the one wording of a bad config value: "Field 'search.max_k' must be a positive integer, got 0."."""
    if not ok:
        raise ValueError(f"Field '{field}' must be {expectation}, got {value!r}.")


def check_positive_ints(cfg: Any, section: str, names: typing.Iterable[str], minimum: int = 1) -> None:
    for name in names:
        value = getattr(cfg, name)
        check(value >= minimum, f"{section}.{name}", "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}",
              value)


def _describe(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, field: str) -> Any:
    """Checks a TOML value against a dataclass field's annotation and converts it (int→float, list→tuple, str→enum)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], field) if len(inner) == 1 else value
    if tp is typing.Any:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ValueError(f"Field '{field}' must be {_describe(tp)}, got {value!r}.") from None
    if tp is bool:
        check(isinstance(value, bool), field, _describe(tp), value)
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), field, _describe(tp), value)
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), field, _describe(tp), value)
        return float(value)
    if tp is str:
        check(isinstance(value, str), field, _describe(tp), value)
        return value
    if origin is tuple:
        check(isinstance(value, (list, tuple)), field, "a list", value)
        item = args[0] if args else typing.Any
        return tuple(coerce(v, item, f"{field}[{n}]") for n, v in enumerate(value))
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        check(isinstance(value, Mapping), field, "a table", value)
        return dict(value)
    return value


def config_from_dict(cls: type[T], d: Any, section: str) -> T:
    """Builds the frozen dataclass `cls` from the TOML table [section], checking names and types of every key."""
    if not isinstance(d, Mapping):
        raise ValueError(f"Section [{section}] must be a table, got {d!r}.")
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    names = [f.name for f in fields]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"Unknown key(s) in [{section}]: {', '.join(unknown)}; known keys are {', '.join(names)}.")
    hints = typing.get_type_hints(cls)
    return cls(**{name: coerce(value, hints[name], f"{section}.{name}") for name, value in d.items()})


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """[encoders] section: the text model the indexer uses, batch size, the device (CUDA when present), and how the
    server runs the models on the query path."""

    text_model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    device: str | None = None  # None: CUDA when present, else CPU
    # "auto" serves the fastest ONNX variant (encoders/onnx.py) whose measured nDCG@10 loss against the torch model
    # is at most max_backend_loss, else torch; "onnx-int8", "onnx" or "torch" forces one. Applies to the text
    # encoder (variants in the bundle) and the cross-encoder (variants in its directory).
    backend: str = "auto"
    max_backend_loss: float = 0.005
    export_onnx: bool = True      # the indexer writes the text model's ONNX variants into the bundle
    # ONNX Runtime intra-op threads per call. Calls run concurrently on the gRPC workers, so on 2 cores one thread
    # per call serves more queries per second than two (README "Threads").
    threads: int = 1
    # Micro-batching of query encodings (encoders/batching.py): concurrent requests wait up to batch_window_ms to be
    # encoded together, at most batch_max per call and batch_queue waiting; repeated texts hit an LRU cache.
    batch_window_ms: float = 2.0
    batch_max: int = 32
    batch_queue: int = 256
    cache_size: int = 10_000
    # `vitrine serve --tenants`: tenants whose bundles name the same model (same weights, same backend) share one
    # loaded copy and one micro-batcher; LoRA adapters share their base. False loads a copy per tenant.
    share_models: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        cfg = config_from_dict(cls, d, "encoders")
        check_positive_ints(cfg, "encoders", ("batch_size", "threads", "batch_max", "batch_queue"))
        check_positive_ints(cfg, "encoders", ("cache_size",), minimum=0)
        check(cfg.device in (None, "cpu", "cuda") or str(cfg.device).startswith("cuda:"), "encoders.device",
              '"cpu", "cuda" or "cuda:N"', cfg.device)
        check(cfg.backend in ("auto", "onnx-int8", "onnx", "torch"), "encoders.backend",
              '"auto", "onnx-int8", "onnx" or "torch"', cfg.backend)
        check(cfg.max_backend_loss >= 0, "encoders.max_backend_loss", "a non-negative number", cfg.max_backend_loss)
        check(cfg.batch_window_ms >= 0, "encoders.batch_window_ms", "a non-negative number", cfg.batch_window_ms)
        return cfg

"""[encoders]: the text model the indexer uses, the device, and how the server runs the models on the query path."""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from vitrine.serving.schema import check, check_positive_ints, config_from_dict


class Backend(enum.StrEnum):
    """What runs a model on the query path. AUTO picks the fastest exported ONNX variant within the bundle's measured
    loss (encoders/onnx.py); TORCH_LORA is what a LoRA adapter on a shared torch base reports (never asked for)."""

    AUTO = "auto"
    ONNX_INT8 = "onnx-int8"
    ONNX = "onnx"
    TORCH = "torch"
    TORCH_LORA = "torch+lora"


REQUESTABLE = (Backend.AUTO, Backend.ONNX_INT8, Backend.ONNX, Backend.TORCH)


def as_backend(name: str) -> Backend | str:
    """The Backend a name is, or the name itself when it is none (a model's check then names what it has instead)."""
    return Backend(name) if name in {b.value for b in Backend} else name


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
    backend: Backend = Backend.AUTO
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
        if isinstance(d, Mapping) and "backend" in d:   # the values one may ask for (torch+lora is only reported)
            check(d["backend"] in REQUESTABLE, "encoders.backend", '"auto", "onnx-int8", "onnx" or "torch"', d["backend"])
        cfg = config_from_dict(cls, d, "encoders")
        check_positive_ints(cfg, "encoders", ("batch_size", "threads", "batch_max", "batch_queue"))
        check_positive_ints(cfg, "encoders", ("cache_size",), minimum=0)
        check(cfg.device in (None, "cpu", "cuda") or str(cfg.device).startswith("cuda:"), "encoders.device",
              '"cpu", "cuda" or "cuda:N"', cfg.device)
        check(cfg.max_backend_loss >= 0, "encoders.max_backend_loss", "a non-negative number", cfg.max_backend_loss)
        check(cfg.batch_window_ms >= 0, "encoders.batch_window_ms", "a non-negative number", cfg.batch_window_ms)
        return cfg

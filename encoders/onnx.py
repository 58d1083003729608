"""ONNX Runtime variants of the transformer models on the query path: export, int8 quantisation, choice, serving.

A variants directory holds one model in three forms and says what each loses:

    <dir>/model.onnx          fp32, exported from the torch model with torch.onnx (pooling and normalisation inside)
    <dir>/model_qint8.onnx    the same, matrix-product weights dynamically quantised to 8 bits (onnxruntime.quantization)
    <dir>/tokenizer*.json, vocab.txt ...   the tokenizer, so serving needs no torch model
    <dir>/variants.json       {"kind", "source", "max_length", "dim", "variants": {name: {"file", "bytes",
                               "ndcg@10", "loss", "ms_per_query"}}, "checked_on": "..."}

sentence-transformers' own ONNX export (`backend="onnx"`, `export_dynamic_quantized_onnx_model`) goes through
optimum-onnx, which requires transformers < 4.58; Vitrine runs transformers 5, so the graph is exported with
torch.onnx and quantised with onnxruntime's `quantize_dynamic` (the same int8 recipe optimum applies).

`choose_backend` serves the fastest variant whose measured loss is within `max_loss` nDCG@10 of the torch model.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.encoders.config import Backend

BACKENDS = (Backend.ONNX_INT8, Backend.ONNX, Backend.TORCH)  # fastest first
AUTO = Backend.AUTO
FILES = {Backend.ONNX: "model.onnx", Backend.ONNX_INT8: "model_qint8.onnx"}
RECORD = "variants.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def read_record(folder: str | Path) -> dict:
    path = Path(folder) / RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def choose_backend(record: Mapping[str, Any], requested: str, max_loss: float) -> Backend:
    """The backend to serve: `requested` when it is one (and was exported), else the fastest measured backend whose
    nDCG@10 loss against the torch model is at most `max_loss`; torch when nothing was exported or measured.

    "Fastest" is the recorded ms per single-text call when every candidate has one, else the order of BACKENDS.
    """
    variants = record.get("variants", {})
    if requested != AUTO:
        if requested not in BACKENDS or (requested != Backend.TORCH and requested not in variants):
            raise ValueError(f"backend {str(requested)!r} was not exported for this model (have: "
                             f"{', '.join(variants) or 'none'}); run `vitrine export onnx`.")
        return Backend(requested)
    # A variant this version does not know (written by a later one) is not served.
    ok = {name: v for name, v in variants.items() if name in BACKENDS and v.get("loss") is not None and v["loss"] <= max_loss}
    if not ok:
        return Backend.TORCH
    ok[Backend.TORCH] = record.get("torch", {})
    if all("ms_per_query" in v for v in ok.values()):
        return Backend(min(ok, key=lambda name: (ok[name]["ms_per_query"], BACKENDS.index(name))))
    return Backend(min(ok, key=BACKENDS.index))


def acceptable(record: Mapping[str, Any], max_loss: float) -> list[Backend]:
    """Every backend within `max_loss` of torch for this record (torch itself included)."""
    return [Backend.TORCH, *(Backend(name) for name, v in record.get("variants", {}).items()
                             if name in BACKENDS and v.get("loss") is not None and v["loss"] <= max_loss)]


def session(path: str | Path, threads: int) -> "onnxruntime.InferenceSession":  # noqa: F821
    """An ONNX Runtime CPU session with `threads` intra-op threads and no inter-op pool.

    Requests run concurrently on the gRPC workers, so each session uses few threads: on 2 cores, one intra-op
    thread per call and two calls at once beat two threads per call (README "Threads").
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not burn a shared core
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def export(module: "torch.nn.Module", example: Mapping[str, "torch.Tensor"], out_dir: str | Path,  # noqa: F821
           output: str, dynamic_sequence: bool = True, quantize: bool = True) -> dict[str, dict]:
    """Exports `module(**example)` (inputs named as in `example`, batch and, with `dynamic_sequence`, the second
    axis dynamic) to model.onnx and (with `quantize`) an int8 model_qint8.onnx in `out_dir`; returns
    {variant: {"file", "bytes"}}."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(example)
    fp32, int8 = out_dir / FILES["onnx"], out_dir / FILES["onnx-int8"]
    dynamic = {**{n: {0: "batch", 1: "sequence"} if dynamic_sequence else {0: "batch"} for n in names}, output: {0: "batch"}}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's fused inference op has no ONNX export
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches (fixed for encoders)
            torch.onnx.export(module.eval(), tuple(example[n] for n in names), str(fp32), input_names=names,
                              output_names=[output], dynamic_axes=dynamic, opset_version=17, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    if not quantize:
        return {"onnx": {"file": FILES["onnx"], "bytes": fp32.stat().st_size}}
    # 8-bit weights per output channel for the matrix products (embeddings and the rest stay fp32); activations are
    # quantised per call (dynamic), so no calibration data is needed. Unsigned weights: with signed ones, the u8 x s8
    # products saturate on AVX2 CPUs and MiniLM lost 0.007 nDCG@10 on fashion self-retrieval (1,000 queries), against
    # 0.002 with unsigned, for 1.5 ms instead of 1.05 ms a query (fp32 ONNX: 3.3 ms).
    logging.disable(logging.WARNING)  # the quantiser logs a line per tensor and a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QUInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    finally:
        logging.disable(logging.NOTSET)
    return {name: {"file": f, "bytes": (out_dir / f).stat().st_size} for name, f in FILES.items()}


def timed_ms(fn: Callable[[list[str]], Any], texts: list[str], repeats: int = 3) -> float:
    """Median milliseconds of one single-text call over `texts` (after one warm-up call)."""
    fn(texts[:1])
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for t in texts:
            fn([t])
        samples.append((time.perf_counter() - t0) * 1e3 / max(len(texts), 1))
    return float(np.median(samples))


def write_record(out_dir: str | Path, record: dict) -> dict:
    path = Path(out_dir) / RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return record


def add_quality(record: dict, ndcg: Mapping[str, float], checked_on: str, ms: Mapping[str, float] | None = None) -> dict:
    """Records each variant's nDCG@10 and its loss against the torch model's on the same check."""
    base = ndcg["torch"]
    record["torch"] = {"ndcg@10": round(base, 4), **({"ms_per_query": round(ms["torch"], 3)} if ms else {})}
    for name, v in record["variants"].items():
        v["ndcg@10"] = round(ndcg[name], 4)
        v["loss"] = round(base - ndcg[name], 4)
        if ms:
            v["ms_per_query"] = round(ms[name], 3)
    record["checked_on"] = checked_on
    return record

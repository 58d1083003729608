"""Text encoding throughput: MiniLM through the indexer's path (encode_in_batches + SentenceTransformerEncoder)
against a bare sentence-transformers encode loop, on the same fashion item texts.

Usage: python bench/encoding.py [--n 1024] [--batch-size 64] [--device cpu] [--model all-MiniLM-L6-v2]

The difference between the two is the indexer's overhead (batch slicing, progress bar, re-normalising).
Images: no CLIP encoder exists yet; add it to ENCODERS when encoders/ has one.
Last stdout line: one JSON object, also written to bench/results/encoding.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine, peak_rss_mib, report  # noqa: E402
from vitrine.encoders.text import SentenceTransformerEncoder  # noqa: E402
from vitrine.indexer.bundle import encode_in_batches, item_text  # noqa: E402
from vitrine.indexer.catalog import read_catalog  # noqa: E402

DATA = Path(os.environ.get("VITRINE_DATA", ROOT.parent / "shared" / "data"))


def timed(fn, repeat: int) -> float:
    """Best of `repeat` wall times: on a shared machine the minimum is the least disturbed figure."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024, help="catalog texts to encode")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--catalog", default=str(DATA / "fashion" / "catalog.jsonl"))
    args = p.parse_args(argv)
    import torch

    items, _ = read_catalog(args.catalog)
    texts = [item_text(it) for it in items if it.has_text()][:args.n]
    encoder = SentenceTransformerEncoder(args.model, device=args.device)
    model = encoder.model
    encoder.encode_texts(texts[:args.batch_size])  # warm-up: first-call allocations are not throughput

    def indexer_path() -> None:
        encode_in_batches(encoder.encode_texts, texts, args.batch_size, "encode", encoder.dim, progress=False)

    def bare_loop() -> None:
        for start in range(0, len(texts), args.batch_size):
            model.encode(texts[start:start + args.batch_size], batch_size=args.batch_size, normalize_embeddings=True)

    def bare_single_call() -> None:
        model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)

    rows = {}
    for name, fn in (("indexer_encode_in_batches", indexer_path), ("bare_encode_loop", bare_loop),
                     ("bare_encode_one_call", bare_single_call)):
        s = timed(fn, args.repeat)
        rows[name] = {"seconds": round(s, 3), "texts_per_s": round(len(texts) / s, 1)}
        print(name, rows[name], file=sys.stderr, flush=True)
    overhead = rows["indexer_encode_in_batches"]["seconds"] / rows["bare_encode_loop"]["seconds"] - 1
    report("encoding", {
        "bench": "encoding", "machine": machine(), "device": encoder.device, "torch_threads": torch.get_num_threads(),
        "model": args.model, "dim": encoder.dim, "max_seq_length": model.max_seq_length, "texts": len(texts),
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1), "batch_size": args.batch_size,
        "text": rows, "indexer_overhead_pct": round(100 * overhead, 1), "images": None,
        "peak_rss_mib": peak_rss_mib(),
        "notes": "images: no CLIP encoder in encoders/ yet. GPU: not run (no device in this session's run).",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

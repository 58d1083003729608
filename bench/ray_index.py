"""Distributed indexing: `vitrine index` of the fashion catalog (text + photos) without Ray, and with 1 and 2 Ray
workers on this machine; items/s of each, and the Ray overhead against the single-process indexer.

    python bench/ray_index.py [--runs runs/speed] [--catalog ../shared/data/fashion/catalog.jsonl]   # last line: JSON

Each run is the whole command a batch job types (catalog read, encoding, FAISS, Tantivy, the ONNX variants and
their checks, publishing), timed from outside, with the shipped defaults and the default CLIP (built under --runs
by bench/speed.py's prepare when missing). With a GPU, Ray gives each worker one; without, the workers split the
CPU cores. Run nothing else meanwhile: two cores are shared.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine, report  # noqa: E402

DATA = Path(os.environ.get("VITRINE_DATA", ROOT.parent / "shared" / "data"))


def index(catalog: Path, out: Path, clip: Path, extra: list[str]) -> dict:
    """One `vitrine index` in a fresh process (Ray's local cluster starts and stops inside it)."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vitrine.cli.main", "index", "--catalog", str(catalog), "--out", str(out),
                           "--clip-model", str(clip), "--quiet", *extra], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"vitrine index {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    timings = manifest.get("timings", {})
    encode = timings.get("text_encode_s", 0) + timings.get("clip_s", 0)
    return {"args": extra, "wall_s": round(wall, 1), "items": summary["items"], "items_per_s": round(summary["items"] / wall, 2),
            "encode_s": round(encode, 1), "encode_items_per_s": round(summary["items"] / encode, 2) if encode else None,
            "timings": timings, "built_by": manifest.get("built_by")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "speed"), help="where the default CLIP is (built if missing)")
    p.add_argument("--catalog", default=str(DATA / "fashion" / "catalog.jsonl"))
    p.add_argument("--work", default=None, help="where the bundles go (default: RUNS/ray-index)")
    args = p.parse_args(argv)
    from bench.speed import prepare

    clip = prepare(Path(args.runs))["clip"]
    work = Path(args.work or Path(args.runs) / "ray-index")
    work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for label, extra in (("single process", []), ("Ray, 1 worker", ["--ray", "--workers", "1"]),
                         ("Ray, 2 workers", ["--ray", "--workers", "2"])):
        print(f"{label} ...", file=sys.stderr, flush=True)
        runs[label] = index(Path(args.catalog), work / label.replace(" ", "-").replace(",", ""), clip, extra)
        print(f"  {label}: {runs[label]['items_per_s']} items/s ({runs[label]['wall_s']} s wall; encoding "
              f"{runs[label]['encode_items_per_s']} items/s)", file=sys.stderr, flush=True)
    base = runs["single process"]["items_per_s"]
    result = {"machine": machine(), "catalog": args.catalog, "runs": runs,
              "ray2_over_single": round(runs["Ray, 2 workers"]["items_per_s"] / base, 3),
              "ray1_over_single": round(runs["Ray, 1 worker"]["items_per_s"] / base, 3),
              "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            result["gpu"] = index(Path(args.catalog), work / "ray-gpu", clip, ["--ray"])
    except ImportError:
        pass
    report("ray_index", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

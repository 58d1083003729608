"""How many items one replica holds: bytes per item of each bundle component, measured on real bundles, and the
resident bytes per vector of the default FAISS factory at >= 100,000 vectors; extrapolated to 1M items.

    python bench/capacity.py [--bundles /work/runs/fashion-clip /work/runs/scifact] [--vectors 150000]
                                                        # last line: JSON; bench/results/capacity.json

Every resident figure is the RSS a fresh process gains by opening the thing (after its imports), so it counts what
the files do not: the docstore's in-memory mirror (items, id map, filter postings, prices), FAISS's id maps. Bundles
are copied to a temporary directory first (opening a docstore may touch its -wal/-shm files); their models are not.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine, report

MIB = 2**20
TARGET_ITEMS = 1_000_000


def rss_bytes() -> int:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def probe(kind: str, path: str) -> dict:
    """Runs in a fresh process: RSS gained by opening `path` as a docstore, a bundle or a vector index."""
    import faiss  # noqa: F401 - imported before the baseline, as a server has

    from vitrine.indexer.ann import AnnConfig, VectorIndex
    from vitrine.indexer.bundle import Bundle
    from vitrine.indexer.docstore import DocStore

    before = rss_bytes()
    if kind == "docstore":
        opened = DocStore(path)
        n = len(opened)
    elif kind == "bundle":
        opened = Bundle(path)
        n = len(opened.docstore)  # Tantivy's segments are mmap'd: resident only once searched (page cache)
    elif kind == "vectors":
        factory = json.loads(Path(path + ".json").read_text())["factory"]
        opened = VectorIndex.load(path, factory, AnnConfig())
        n = opened.ntotal
    else:
        raise ValueError(f"unknown probe kind {kind!r}")
    return {"rss_bytes": rss_bytes() - before, "n": n}


def run_probe(kind: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--probe", kind, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def copy_bundle(src: Path, dst: Path) -> Path:
    """The bundle without its models/ (served from the shared pool) and without -wal/-shm leftovers."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n == "models" or n.endswith(("-wal", "-shm"))
                                                      or n == "wal.log"])
    return dst


def measure_bundle(src: Path, tmp: Path) -> dict:
    path = copy_bundle(src, tmp / src.name)
    manifest = json.loads((path / "manifest.json").read_text())
    n = manifest["counts"]["items"]
    disk = {"docstore.sqlite": dir_bytes(path / "docstore.sqlite"), "bm25": dir_bytes(path / "bm25")}
    for source, meta in manifest.get("vectors", {}).items():
        files = [f for f in (path / "vectors").iterdir() if f.name.startswith(source + ".")]
        disk[f"vectors/{source} ({meta['factory']}, d={meta['dim']})"] = sum(f.stat().st_size for f in files)
    disk["models (not counted per item)"] = dir_bytes(src / "models") if (src / "models").is_dir() else 0
    docstore = run_probe("docstore", path / "docstore.sqlite")
    bundle = run_probe("bundle", path)
    return {
        "bundle": str(src), "items": n,
        "disk_bytes": disk,
        "disk_bytes_per_item": {k: round(v / n, 1) for k, v in disk.items() if not k.startswith("models")},
        "resident_docstore_bytes_per_item": round(docstore["rss_bytes"] / n, 1),
        "resident_bundle_bytes_per_item": round(bundle["rss_bytes"] / n, 1),
        "resident_bundle_mib": round(bundle["rss_bytes"] / MIB, 1),
    }


def replicated_docstore(src: Path, copies: int, tmp: Path) -> dict:
    """The fashion docstore's items repeated under new ids: is the in-memory mirror linear in items?"""
    from vitrine.indexer.docstore import DocStore

    original = DocStore(copy_bundle(src, tmp / f"{src.name}-src") / "docstore.sqlite")
    items = list(original.items.values())
    original.close()
    store = DocStore(tmp / f"{src.name}-x{copies}.sqlite")
    for c in range(copies):
        rows = store.assign(replace(it, id=f"{it.id}-{c}") for it in items)
        store.put_many(rows)
    n = len(store)
    store.close()
    got = run_probe("docstore", tmp / f"{src.name}-x{copies}.sqlite")
    return {"items": n, "resident_bytes_per_item": round(got["rss_bytes"] / n, 1),
            "sqlite_bytes_per_item": round((tmp / f"{src.name}-x{copies}.sqlite").stat().st_size / n, 1)}


def measure_vectors(d: int, n: int, tmp: Path) -> dict:
    """Default factory for n vectors of dimension d; resident bytes at n and 2n (same trained index), and the
    marginal bytes per vector between them, which does not depend on nlist."""
    from vitrine.indexer.ann import AnnConfig, VectorIndex, choose_factory

    rng = np.random.default_rng(0)

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, d), dtype=np.float32)  # (rows, d)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    t0 = time.perf_counter()
    index = VectorIndex.build(unit(n), np.arange(n, dtype=np.int64), AnnConfig())
    build_s = time.perf_counter() - t0
    sizes = {}
    for total in (n, 2 * n):
        if total > index.ntotal:
            index.add(unit(total - index.ntotal), np.arange(index.ntotal, total, dtype=np.int64))
        path = tmp / f"v{d}-{total}.faiss"
        index.save(path)
        Path(str(path) + ".json").write_text(json.dumps({"factory": index.factory}))
        sizes[total] = {"file_bytes": sum(f.stat().st_size for f in tmp.glob(f"v{d}-{total}.*faiss")),
                        "rss_bytes": run_probe("vectors", path)["rss_bytes"]}
    marginal = (sizes[2 * n]["rss_bytes"] - sizes[n]["rss_bytes"]) / n
    fixed = sizes[2 * n]["rss_bytes"] - 2 * n * marginal
    return {"d": d, "factory": index.factory, "factory_at_1m": choose_factory(TARGET_ITEMS, d), "build_s": round(build_s, 1),
            "sizes": {str(k): v for k, v in sizes.items()}, "file_bytes_per_vector": round(sizes[2 * n]["file_bytes"] / (2 * n), 1),
            "resident_bytes_per_vector": round(marginal, 1), "resident_fixed_mib": round(fixed / MIB, 1)}


def extrapolate(fashion: dict, replicated: dict, vectors: dict[int, dict], tenants: dict) -> dict:
    """1M fashion-like items (text 384-d + CLIP 256-d), one replica, models on ONNX int8."""
    n = TARGET_ITEMS
    docstore = replicated["resident_bytes_per_item"] * n
    bm25 = fashion["disk_bytes_per_item"]["bm25"] * n  # mmap'd: page cache a warm server keeps resident
    ann = {d: v["resident_bytes_per_vector"] * n + 4 * d * (int(v["factory_at_1m"].split(",")[0][3:]))
           for d, v in vectors.items()}  # + the IVF centroids at the 1M nlist
    bundle = docstore + bm25 + sum(ann.values())
    memory = tenants.get("memory", {})
    steps = {s["tenant"]: s for s in memory.get("steps", [])}
    pool = {p["model"]: p["bytes"] for p in steps.get("fashion", {}).get("pool", [])}
    base = memory.get("empty_server_rss_mb", float("nan")) * MIB  # bench/speed.py memory_mb: MiB
    models = sum(pool.values())
    steady = base + models + bundle
    return {
        "items": n,
        "assumptions": "fashion-like items (title, category, ~6 attributes, price; no long description); text 384-d and "
                       "CLIP 256-d vectors for every item with the >= 100,000 default factories; ONNX int8 text and CLIP "
                       "towers; no cross-encoder; docstore mirror per item as measured on the fashion items repeated; "
                       "BM25 fully resident; a hot swap holds the old and the new bundle for close_after_s (60 s)",
        "mib": {"docstore_mirror": round(docstore / MIB), "bm25_page_cache": round(bm25 / MIB),
                **{f"faiss_{d}d": round(b / MIB) for d, b in ann.items()},
                "bundle_total": round(bundle / MIB), "server_without_bundle": round((base + models) / MIB),
                "steady_rss": round(steady / MIB), "during_hot_swap": round((steady + bundle) / MIB)},
        "bytes_per_item": round(bundle / n),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="+", default=["/work/runs/fashion-clip", "/work/runs/scifact"])
    ap.add_argument("--vectors", type=int, default=150_000, help="vectors per synthetic index (then twice as many)")
    ap.add_argument("--copies", type=int, default=11, help="times the first bundle's items are repeated (~100k for fashion)")
    ap.add_argument("--probe", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(*args.probe)))
        return 0
    if args.vectors < 100_000:
        raise ValueError("--vectors must be at least 100,000: below it the default rule picks another factory.")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitrine-capacity-") as tmp_dir:
        tmp = Path(tmp_dir)
        bundles = [measure_bundle(Path(b), tmp) for b in args.bundles]
        replicated = replicated_docstore(Path(args.bundles[0]), args.copies, tmp)
        vectors = {d: measure_vectors(d, args.vectors, tmp) for d in (384, 256)}
    tenants_path = ROOT / "bench" / "results" / "tenants.json"
    tenants = json.loads(tenants_path.read_text()) if tenants_path.is_file() else {}
    result = {"bench": "capacity", "machine": machine(), "bundles": bundles, "replicated_docstore": replicated,
              "vectors": {str(d): v for d, v in vectors.items()},
              "server_from_tenants_json": {"empty_server_rss_mb": tenants.get("memory", {}).get("empty_server_rss_mb"),
                                           "steps": [{k: s[k] for k in ("tenant", "bundle", "rss_mb", "delta_mb")}
                                                     for s in tenants.get("memory", {}).get("steps", [])]},
              "extrapolated_1m": extrapolate(bundles[0], replicated, vectors, tenants),
              "wall_s": round(time.perf_counter() - t0, 1)}
    assert math.isfinite(result["extrapolated_1m"]["bytes_per_item"])
    report("capacity", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

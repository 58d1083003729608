"""FAISS IVF-PQ against exact flat search on 1M synthetic clustered unit vectors (d=384), on the CPU.

Usage: python bench/ann.py [--n 1000000] [--nq 500] [--quick]

Vectors: a Gaussian mixture of 2,000 clusters (Dirichlet sizes) whose centres and within-cluster noise
share a power-law spectrum (variance of direction j ~ 1/(j+1), randomly rotated), plus a common mean
direction, then L2-normalised. That matches MiniLM's anisotropy on scifact (top 100 principal directions
hold ~78% of the variance; vectors share a mean direction). Queries are fresh draws from the same mixture.

Each coarse quantizer (nlist) is trained and the 1M vectors assigned once; every PQ variant reuses that
assignment, and refine stores (Flat / SQ8) are built once and paired with every base via IndexRefine.
Build time of a config = its quantizer's train + assign time + its own PQ train + encode time.
The last stdout line is one JSON object, also written to bench/results/ann.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
from faiss.contrib.ivf_tools import add_preassigned  # noqa: E402

from bench.machine import machine, peak_rss_mib, report  # noqa: E402

D = 384
K = 10
GOAL = {"recall@10": 0.95, "qps_ratio": 10.0, "memory_ratio": 8.0}


def make_vectors(n: int, nq: int, d: int = D, n_clusters: int = 2000, noise: float = 0.8, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (xb, xq): (n, d) and (nq, d) float32 unit vectors from one clustered, anisotropic mixture."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)  # power-law spectrum
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32) * scale
    mean = rng.standard_normal(d).astype(np.float32) * scale
    sizes = rng.dirichlet(np.full(n_clusters, 2.0))

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for start in range(0, m, 100_000):
            rows = min(100_000, m - start)
            z = rng.choice(n_clusters, size=rows, p=sizes)
            x = centres[z] + noise * rng.standard_normal((rows, d)).astype(np.float32) * scale + 0.6 * mean
            x = x @ rotation  # (rows, d)
            out[start:start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(nq)


def real_vectors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """MiniLM vectors of the largest catalog here (fashion, 9,261 items: `item_text` as the indexer encodes it),
    replicated to n with noise, and the fashion text queries (literal + paraphrase) as queries.

    Each replica is x + noise, re-normalised, where the noise follows the catalog's own covariance (so it stays in
    the directions real items vary in) and is scaled so that a replica's cosine to its original is the median cosine
    of a real item to its nearest other item: replicas are as close to each other as real near-duplicates are.
    The encoded vectors are cached in .cache/ann-real-minilm.npz.
    """
    import json
    import os

    root = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("VITRINE_DATA", root.parent / "shared" / "data")) / "fashion"
    cache = root / ".cache" / "ann-real-minilm.npz"
    if cache.is_file():
        z = np.load(cache)
        docs, queries = z["docs"], z["queries"]
    else:
        from vitrine.encoders.text import SentenceTransformerEncoder
        from vitrine.indexer.bundle import item_text
        from vitrine.indexer.catalog import item_from_dict

        encoder = SentenceTransformerEncoder(device="cpu")
        items = [item_from_dict(json.loads(line)) for line in open(data / "catalog.jsonl", encoding="utf-8")]
        texts = [json.loads(line)["text"] for task in ("text-literal", "text-paraphrase")
                 for line in open(data / "queries" / f"{task}.jsonl", encoding="utf-8")]
        docs = encoder.encode_texts([item_text(it) for it in items if it.has_text()], progress=True)
        queries = encoder.encode_texts(texts)
        cache.parent.mkdir(exist_ok=True)
        np.savez(cache, docs=docs, queries=queries)
    rng = np.random.default_rng(seed)
    sims = docs @ docs.T
    np.fill_diagonal(sims, -1)
    target = float(np.median(sims.max(axis=1)))  # a real item's cosine to its nearest other item
    centred = docs - docs.mean(axis=0)
    cov = centred.T @ centred / len(docs)
    evals, evecs = np.linalg.eigh(cov)
    shape = np.sqrt(np.clip(evals, 0, None) / evals.sum())  # unit total variance, the catalog's spectrum
    noise_sd = np.sqrt(1.0 / target**2 - 1.0)               # |noise| for cos(x, x + noise) = target
    out = np.empty((n, docs.shape[1]), dtype=np.float32)
    out[:len(docs)] = docs
    for start in range(len(docs), n, 100_000):
        rows = min(100_000, n - start)
        src = docs[rng.integers(len(docs), size=rows)]
        noise = (rng.standard_normal((rows, docs.shape[1])).astype(np.float32) * shape) @ evecs.T
        x = src + noise_sd * noise.astype(np.float32)
        out[start:start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, queries.astype(np.float32), {"catalog_vectors": len(docs), "queries": len(queries),
                                             "replica_target_cos": round(target, 3)}


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int = K) -> float:
    """Mean |top-k found ∩ exact top-k| / k."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, gt)]))


def measure(index: faiss.Index, xq: np.ndarray, gt: np.ndarray, n_single: int, threads: int) -> dict:
    """Recall@10 and batched QPS over all queries; single-query QPS over the first n_single, one at a time.

    Single queries run with one OpenMP thread, as a server thread answers one request: with 2 threads on
    a shared 2-core machine, OpenMP's spin-waiting made single flat queries ~6x slower, not faster.
    """
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    _, I = index.search(xq, K)
    batched = len(xq) / (time.perf_counter() - t0)
    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    for q in xq[:n_single]:
        index.search(q[None, :], K)
    single = n_single / (time.perf_counter() - t0)
    faiss.omp_set_num_threads(threads)
    return {"recall@10": round(recall_at_k(I, gt), 4), "qps_batched": round(batched, 1), "qps_single": round(single, 1)}


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).size)


def base_index(kind: str, quantizer: faiss.Index, nlist: int) -> faiss.Index:
    """kind is "PQ48" (8-bit), "PQ96x4fs" (4-bit fast scan), "RaBitQ3" (RaBitQ, 3 bits per dimension: 1 sign bit
    plus 2 extra bits) or "RaBitQfs3" (its fast-scan layout), as in a factory string."""
    if kind.startswith("RaBitQ"):
        fast_scan = kind.startswith("RaBitQfs")
        nbits = int(kind.removeprefix("RaBitQfs" if fast_scan else "RaBitQ") or 1)
        if fast_scan:
            return faiss.IndexIVFRaBitQFastScan(quantizer, D, nlist, faiss.METRIC_INNER_PRODUCT, 32, True, nbits)
        return faiss.IndexIVFRaBitQ(quantizer, D, nlist, faiss.METRIC_INNER_PRODUCT, True, nbits)
    fast_scan = kind.endswith("fs")
    m, _, nbits = kind[2:].removesuffix("fs").partition("x")
    m, nbits = int(m), int(nbits or 8)
    if fast_scan:
        return faiss.IndexIVFPQFastScan(quantizer, D, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIVFPQ(quantizer, D, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    return index


def train_sample(xb: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return xb[np.sort(rng.choice(len(xb), size=min(n, len(xb)), replace=False))]


def sweep(xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, flat: faiss.Index, args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    refines: dict[str, tuple[faiss.Index | None, int, float]] = {"none": (None, 0, 0.0)}
    flat_bytes = xb.nbytes + 64  # IndexFlat serialises its vectors plus a small header
    refines["RFlat"] = (flat, flat_bytes, 0.0)
    for spec in args.refines:
        # Any FAISS factory as the refine store: SQ8 / SQ4 (scalar), or PQ128 / OPQ128,PQ128 (a finer PQ than the base).
        t0 = time.perf_counter()
        store = faiss.index_factory(D, spec, faiss.METRIC_INNER_PRODUCT)
        store.train(train_sample(xb, 65_536))
        store.add(xb)
        refines[f"Refine({spec})"] = (store, index_bytes(store), time.perf_counter() - t0)
        print(f"refine store {spec}: {index_bytes(store) / len(xb):.0f} B/vector in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if not args.with_rflat:
        del refines["RFlat"]

    for nlist in args.nlists:
        t0 = time.perf_counter()
        quantizer = faiss.IndexFlatIP(D)
        clus = faiss.Clustering(D, nlist)
        clus.niter = 10
        clus.max_points_per_centroid = args.points_per_centroid
        clus.spherical = True
        clus.train(train_sample(xb, nlist * args.points_per_centroid), quantizer)
        _, assign = quantizer.search(xb, 1)
        assign = assign.ravel().astype(np.int64)
        coarse_s = time.perf_counter() - t0
        print(f"nlist={nlist}: quantizer trained and {len(xb)} vectors assigned in {coarse_s:.1f} s", file=sys.stderr, flush=True)
        for kind in args.pq:
            t0 = time.perf_counter()
            base = base_index(kind, quantizer, nlist)
            base.train(train_sample(xb, args.pq_train))
            if kind.endswith("fs") or kind.startswith("RaBitQ"):
                base.add(xb)  # add_preassigned (add_core) corrupts the heap for fast-scan IVF in faiss 1.15
            else:
                add_preassigned(base, xb, assign)
            build_s = coarse_s + time.perf_counter() - t0
            base_bytes = index_bytes(base)
            for rname, (store, store_bytes, store_s) in refines.items():
                index = base if store is None else faiss.IndexRefine(base, store)
                if store is not None:
                    index.k_factor = args.k_factor
                for nprobe in args.nprobes:
                    if nprobe > nlist:
                        continue
                    faiss.extract_index_ivf(base).nprobe = nprobe
                    factory = f"IVF{nlist},{kind}" + ("" if rname == "none" else f",{rname}")
                    m = measure(index, xq, gt, args.single, args.threads)
                    total = base_bytes + store_bytes
                    row = {"factory": factory, "nlist": nlist, "pq": kind, "refine": rname, "nprobe": nprobe,
                           "k_factor": args.k_factor if store is not None else None, **m,
                           "bytes": total, "bytes_per_vector": round(total / len(xb), 1),
                           "build_s": round(build_s + store_s, 1)}
                    rows.append(row)
                    print(f"  {factory:34s} nprobe={nprobe:4d} R@10={m['recall@10']:.3f} "
                          f"qps1={m['qps_single']:8.1f} qpsB={m['qps_batched']:8.1f} MB={total / 2**20:7.1f}",
                          file=sys.stderr, flush=True)
            del base
    return rows


def sweep_factories(xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """Whole FAISS factory strings (e.g. with an OPQ rotation before the IVF), each trained from scratch on a
    sample (quantizer included) and measured at every nprobe."""
    rows = []
    for factory in args.factories:
        t0 = time.perf_counter()
        index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.max_points_per_centroid = args.points_per_centroid
        ivf.cp.niter = 10
        if isinstance(index, faiss.IndexPreTransform):
            opq = faiss.downcast_VectorTransform(index.chain.at(0))
            if isinstance(opq, faiss.OPQMatrix):  # the default (50 rounds over 65k points) takes ~10 min here
                opq.niter, opq.max_train_points = 8, 32_768
        index.train(train_sample(xb, max(args.pq_train, ivf.nlist * args.points_per_centroid)))
        index.add(xb)
        build_s = time.perf_counter() - t0
        total = index_bytes(index)
        print(f"{factory}: built in {build_s:.0f} s, {total / len(xb):.0f} B/vector", file=sys.stderr, flush=True)
        for nprobe in args.nprobes:
            ivf.nprobe = nprobe
            m = measure(index, xq, gt, args.single, args.threads)
            rows.append({"factory": factory, "nlist": ivf.nlist, "pq": factory, "refine": "none", "nprobe": nprobe,
                         "k_factor": None, **m, "bytes": total, "bytes_per_vector": round(total / len(xb), 1),
                         "build_s": round(build_s, 1)})
            print(f"  {factory:34s} nprobe={nprobe:4d} R@10={m['recall@10']:.3f} qps1={m['qps_single']:8.1f} "
                  f"qpsB={m['qps_batched']:8.1f} MB={total / 2**20:7.1f}", file=sys.stderr, flush=True)
        del index
    return rows


def choose(rows: list[dict], flat: dict) -> dict | None:
    """The fastest (single-query) config meeting all three goals; failing that, among those meeting the recall
    and speed goals, the one with the most memory saved (then the fastest)."""
    for r in rows:
        r["qps_ratio_single"] = round(r["qps_single"] / flat["qps_single"], 1)
        r["qps_ratio_batched"] = round(r["qps_batched"] / flat["qps_batched"], 1)
        r["memory_ratio"] = round(flat["bytes"] / r["bytes"], 1)
        r["meets_goal"] = (r["recall@10"] >= GOAL["recall@10"] and r["qps_ratio_single"] >= GOAL["qps_ratio"]
                           and r["memory_ratio"] >= GOAL["memory_ratio"])
    ok = [r for r in rows if r["meets_goal"]]
    if ok:
        return max(ok, key=lambda r: r["qps_single"])
    good = [r for r in rows if r["recall@10"] >= GOAL["recall@10"] and r["qps_ratio_single"] >= GOAL["qps_ratio"]]
    return max(good, key=lambda r: (r["memory_ratio"], r["qps_single"])) if good else None


def reanalyse(path: Path) -> dict:
    """Re-applies `choose` to a saved result (no re-measurement), e.g. after changing the selection rule."""
    import json

    result = json.loads(path.read_text())
    result["chosen"] = choose(result["sweep"], result["flat"])
    result["best_meeting_memory_goal"] = max((r for r in result["sweep"] if r["memory_ratio"] >= GOAL["memory_ratio"]),
                                             key=lambda r: r["recall@10"], default=None)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--nq", type=int, default=500, help="queries for recall and batched QPS")
    p.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nlists", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 4096])
    p.add_argument("--pq", type=lambda s: [x for x in s.split(",") if x], default=["PQ48", "PQ96", "PQ192x4fs"],
                   help="bases sharing one quantizer per nlist: PQ48 (8-bit), PQ96x4fs (4-bit fast scan), RaBitQ3 "
                        "(3 bits per dimension), RaBitQfs4 (fast scan)")
    p.add_argument("--nprobes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 16, 32, 64, 128])
    p.add_argument("--refines", type=lambda s: [x for x in s.split(";") if x], default=["SQ8", "SQ4"],
                   help="';'-separated FAISS factories for refine stores, e.g. 'SQ8;PQ128;OPQ128,PQ128'")
    p.add_argument("--no-rflat", dest="with_rflat", action="store_false", help="skip the exact (RFlat) refine store")
    p.add_argument("--out-name", default="ann", help="result file name under bench/results/")
    p.add_argument("--k-factor", type=int, default=10, help="refine shortlist = k * k_factor (as AnnConfig.k_factor_rf)")
    p.add_argument("--points-per-centroid", type=int, default=32, help="k-means training sample per list (FAISS wants >= 39; 32 keeps 2 cores in budget)")
    p.add_argument("--pq-train", type=int, default=65_536)
    p.add_argument("--quick", action="store_true", help="100k vectors, one nlist, two PQ sizes: a smoke run")
    p.add_argument("--factories", type=lambda s: [x for x in s.split(";") if x], default=[],
                   help="';'-separated whole factory strings trained from scratch, e.g. 'OPQ96_384,IVF4096,PQ96'")
    p.add_argument("--data", choices=("synthetic", "real"), default="synthetic",
                   help="real: fashion's MiniLM vectors replicated with noise, fashion text queries (see real_vectors)")
    p.add_argument("--reanalyse", metavar="RESULT_JSON", help="re-choose the default from a saved result; measures nothing")
    args = p.parse_args(argv)
    if args.reanalyse:
        report(Path(args.reanalyse).stem, reanalyse(Path(args.reanalyse)))
        return 0
    if args.quick:
        args.n, args.nlists, args.pq, args.nprobes = 100_000, [256], ["PQ48", "PQ96x4fs"], [8, 32]
    faiss.omp_set_num_threads(args.threads)
    t_start = time.perf_counter()
    machine_at_start = machine()

    t0 = time.perf_counter()
    real = {}
    if args.data == "real":
        xb, xq, real = real_vectors(args.n)
    else:
        xb, xq = make_vectors(args.n, args.nq)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(D)
    flat.add(xb)
    flat_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, gt = flat.search(xq, K)
    flat_batched = len(xq) / (time.perf_counter() - t0)
    n_flat_single = min(args.single, 40)
    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    for q in xq[:n_flat_single]:
        flat.search(q[None, :], K)
    faiss.omp_set_num_threads(args.threads)
    flat_row = {"factory": "Flat", "recall@10": 1.0, "qps_single": round(n_flat_single / (time.perf_counter() - t0), 1),
                "qps_batched": round(flat_batched, 1), "bytes": xb.nbytes + 64, "build_s": round(flat_build_s, 1)}
    data_stats = {"random_pair_cos": round(float(np.mean(xq[:200] @ xb[:200].T)), 3),
                  "query_top1_cos": round(float(np.mean(np.sum(xq[:200] * xb[gt[:200, 0]], axis=1))), 3),
                  "query_top10_cos": round(float(np.mean(np.sum(xq[:200] * xb[gt[:200, 9]], axis=1))), 3)}
    print(f"data in {gen_s:.1f} s {data_stats}; flat: {flat_row}", file=sys.stderr, flush=True)

    rows = sweep(xb, xq, gt, flat, args) if args.pq else []
    rows += sweep_factories(xb, xq, gt, args)
    chosen = choose(rows, flat_row)
    best_mem = max((r for r in rows if r["memory_ratio"] >= GOAL["memory_ratio"]), key=lambda r: r["recall@10"], default=None)
    result = {
        "bench": "ann", "machine": machine_at_start, "load_avg_1m_at_end": machine()["load_avg_1m"], "faiss": faiss.__version__, "threads": args.threads,
        "data": {"n": args.n, "d": D, "nq": len(xq), **real,
                 "generator": ("fashion MiniLM vectors replicated with covariance-shaped noise; see real_vectors"
                               if args.data == "real" else
                               "clustered Gaussian mixture, power-law spectrum, rotated, L2-normalised; see bench/ann.py"),
                 "generate_s": round(gen_s, 1), **data_stats},
        "goal": GOAL, "flat": flat_row, "chosen": chosen, "best_meeting_memory_goal": best_mem, "sweep": rows,
        "peak_rss_mib": peak_rss_mib(), "wall_s": round(time.perf_counter() - t_start, 1),
        "notes": "qps_single: one query per call on one OpenMP thread; qps_batched: all queries in one call on "
                 f"{args.threads} threads. bytes = serialized base index + refine store.",
    }
    report(args.out_name if not args.quick else f"{args.out_name}-quick", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

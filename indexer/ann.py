"""FAISS vector indexes keyed by int64 doc numbers: factory choice by catalog size, GPU placement, filtered search."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

AUTO = "auto"
# Below this many vectors an IVF quantizer cannot be trained well (FAISS wants ~39 points per
# centroid), so the index is exact. Between it and PQ_MIN_VECTORS, IVF with 4-bit fast-scan PQ
# (16 centroids per sub-quantizer, trainable on a few thousand points) re-ranked by exact
# vectors; above it, 8-bit PQ that needs 256 * 39 training points. See bench/ann.py.
EXACT_MAX_VECTORS = 2_000
PQ8_MIN_VECTORS = 100_000


def choose_factory(n: int, d: int) -> str:
    """Returns the FAISS factory string Vitrine uses by default for n vectors of dimension d.

    - n < 2,000: "Flat" (exact inner product; nothing to train).
    - 2,000 <= n < 100,000: "IVF{nlist},PQ{d/2}x4fs,RFlat": at most n/39 lists, 4-bit fast-scan
      PQ, and the exact vectors kept to re-rank the PQ shortlist, so quality stays at exact.
    - n >= 100,000: "IVF{nlist},PQ{d/4}x8,Refine(SQ8)" style trade-off measured by bench/ann.py;
      nlist ~ 4 * sqrt(n).
    """
    if n < EXACT_MAX_VECTORS:
        return "Flat"
    nlist = 2 ** int(round(math.log2(max(16.0, 4 * math.sqrt(n)))))
    nlist = max(16, min(nlist, n // 39))
    if n < PQ8_MIN_VECTORS:
        m = _divisor_at_most(d, d // 2)
        return f"IVF{nlist},PQ{m}x4fs,RFlat"
    m = _divisor_at_most(d, d // 4)
    return f"IVF{nlist},PQ{m},Refine(SQ8)"


def _divisor_at_most(d: int, m: int) -> int:
    while m > 1 and d % m:
        m -= 1
    return max(1, m)


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class AnnConfig:
    factory: str = AUTO
    nprobe: int = 16
    k_factor_rf: int = 4  # how many PQ candidates per wanted hit the refine step re-scores
    use_gpu: bool = True  # used only when gpu_available()

    @classmethod
    def from_dict(cls, d: dict) -> AnnConfig:
        unknown = set(d) - {"factory", "nprobe", "k_factor_rf", "use_gpu"}
        if unknown:
            raise ValueError(f"Unknown key(s) in [index]: {', '.join(sorted(unknown))}.")
        cfg = cls(**d)
        if not isinstance(cfg.factory, str) or not cfg.factory:
            raise ValueError("Field 'index.factory' must be a FAISS factory string or \"auto\".")
        if not isinstance(cfg.nprobe, int) or cfg.nprobe < 1:
            raise ValueError(f"Field 'index.nprobe' must be a positive integer, got {cfg.nprobe!r}.")
        if not isinstance(cfg.k_factor_rf, int) or cfg.k_factor_rf < 1:
            raise ValueError(f"Field 'index.k_factor_rf' must be a positive integer, got {cfg.k_factor_rf!r}.")
        return cfg


class VectorIndex:
    """A FAISS inner-product index over unit vectors, addressed by int64 doc numbers.

    Supports add and remove by id so live upserts need no rebuild.
    """

    def __init__(self, index: faiss.Index, factory: str, config: AnnConfig) -> None:
        self.index = index
        self.factory = factory
        self.config = config
        self._search_index = index
        self._apply_search_params()

    @classmethod
    def build(cls, xb: np.ndarray, ids: np.ndarray, config: AnnConfig = AnnConfig()) -> VectorIndex:
        """Trains (if needed) and fills an index; xb is (N, D) float32 unit vectors."""
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        n, d = xb.shape
        factory = choose_factory(n, d) if config.factory == AUTO else config.factory
        base = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        index = base if _supports_ids(base) else faiss.IndexIDMap2(base)
        if not index.is_trained:
            index = _train(index, xb, config)
        index.add_with_ids(xb, np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index, factory, config)

    @classmethod
    def load(cls, path: str | Path, factory: str, config: AnnConfig = AnnConfig()) -> VectorIndex:
        return cls(faiss.read_index(str(path)), factory, config)

    def save(self, path: str | Path) -> None:
        """Writes the index to a temporary file and renames it into place."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def add(self, xb: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        self._search_index = self.index

    def remove(self, ids: np.ndarray) -> int:
        removed = self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
        self._search_index = self.index
        return int(removed)

    def search(self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (D, I), each (nq, k); I is -1 where fewer than k vectors qualify.

        `allowed` restricts results to these doc numbers (a filter), inside the index scan.
        """
        xq = np.ascontiguousarray(xq, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, max(1, self.ntotal)))
        if allowed is None:
            return self._search_index.search(xq, k)
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        params = self._search_params(sel)
        return self.index.search(xq, k, params=params)

    def _search_params(self, sel: faiss.IDSelector) -> faiss.SearchParameters:
        ivf = _try_extract_ivf(self.index)
        if ivf is not None:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.config.nprobe)
        else:
            params = faiss.SearchParameters(sel=sel)
        if "RFlat" in self.factory or "Refine" in self.factory:
            return faiss.IndexRefineSearchParameters(k_factor=float(self.config.k_factor_rf), base_index_params=params, sel=sel)
        return params

    def _apply_search_params(self) -> None:
        ivf = _try_extract_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = self.config.nprobe
        refine = _find_refine(self.index)
        if refine is not None:
            refine.k_factor = float(self.config.k_factor_rf)
        if self.config.use_gpu and gpu_available():
            self._search_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)


def _supports_ids(index: faiss.Index) -> bool:
    return _try_extract_ivf(index) is not None and not isinstance(index, faiss.IndexRefine)


def _try_extract_ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _find_refine(index: faiss.Index) -> faiss.IndexRefine | None:
    idx = index
    if isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        idx = faiss.downcast_index(idx.index)
    idx = faiss.downcast_index(idx)
    return idx if isinstance(idx, faiss.IndexRefine) else None


def _train(index: faiss.Index, xb: np.ndarray, config: AnnConfig) -> faiss.Index:
    """Trains on the GPU when one is available (IVF clustering dominates build time), else the CPU."""
    sample = xb
    if len(xb) > 256 * 1024:
        rng = np.random.default_rng(0)
        sample = xb[rng.choice(len(xb), 256 * 1024, replace=False)]
    if config.use_gpu and gpu_available():
        ivf = _try_extract_ivf(index)
        if ivf is not None:
            clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
            ivf.clustering_index = clustering_index
    index.train(sample)
    return index

"""FAISS vector indexes keyed by int64 doc numbers: factory choice by catalog size, GPU placement, filtered search."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from vitrine.serving.schema import check, check_positive_ints, config_from_dict

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
    nprobe: int = 64  # 16 lost 0.065 nDCG@10 on scifact (IVF132) and 0.026 on fashion (IVF237); 64 loses < 0.01 (bench/tune_first_stage.py)
    k_factor_rf: int = 10  # how many PQ candidates per wanted hit the refine store re-scores (bench/ann.py)
    use_gpu: bool = True  # used only when gpu_available()

    @classmethod
    def from_dict(cls, d: dict) -> AnnConfig:
        cfg = config_from_dict(cls, d, "index")
        check(bool(cfg.factory), "index.factory", 'a FAISS factory string or "auto"', cfg.factory)
        check_positive_ints(cfg, "index", ("nprobe", "k_factor_rf"))
        return cfg


def split_refine(factory: str) -> tuple[str, str | None]:
    """Splits "IVF..,PQ..,RFlat" / "..,Refine(SQ8)" into the base factory and the refine store's factory.

    FAISS's own IndexRefine cannot remove ids, so Vitrine keeps the refine store as a second
    id-mapped index and re-ranks the base index's shortlist against it.
    """
    head, _, last = factory.rpartition(",")
    if last == "RFlat":
        return head, "Flat"
    m = re.fullmatch(r"Refine\((.+)\)", last)
    if m:
        return head, m.group(1)
    return factory, None


class VectorIndex:
    """A FAISS inner-product index over unit vectors, addressed by int64 doc numbers.

    Supports add and remove by id so live upserts need no rebuild. With a refine store, the base
    index (IVF-PQ) proposes k * k_factor_rf candidates and the store's better vectors re-score them.
    """

    def __init__(self, index: faiss.Index, factory: str, config: AnnConfig, refine: faiss.Index | None = None) -> None:
        self.index = index
        self.refine = refine
        self.factory = factory
        self.config = config
        self._search_index = index
        self._apply_search_params()

    @classmethod
    def build(cls, xb: np.ndarray, ids: np.ndarray, config: AnnConfig = AnnConfig()) -> VectorIndex:
        """Trains (if needed) and fills an index; xb is (N, D) float32 unit vectors."""
        out = cls.trained(xb, config)
        out.add(xb, ids)
        return out

    @classmethod
    def trained(cls, xb: np.ndarray, config: AnnConfig = AnnConfig()) -> VectorIndex:
        """An empty index of the factory for len(xb) vectors, trained on (a sample of) xb: every shard of a
        distributed build is added to a copy of it, so all shards share one quantiser and can be merged."""
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        n, d = xb.shape
        factory = choose_factory(n, d) if config.factory == AUTO else config.factory
        base_factory, refine_factory = split_refine(factory)
        index = _id_mapped(faiss.index_factory(d, base_factory, faiss.METRIC_INNER_PRODUCT))
        refine = None
        if refine_factory is not None:
            refine = _id_mapped(faiss.index_factory(d, refine_factory, faiss.METRIC_INNER_PRODUCT))
        for idx in (index, refine):
            if idx is not None and not idx.is_trained:
                _train(idx, xb, config)
        return cls(index, factory, config, refine)

    def to_bytes(self) -> tuple[bytes, bytes | None]:
        """The index (and refine store) serialised by FAISS, to ship to another process."""
        return (faiss.serialize_index(self.index).tobytes(),
                faiss.serialize_index(self.refine).tobytes() if self.refine is not None else None)

    @classmethod
    def from_bytes(cls, blobs: tuple[bytes, bytes | None], factory: str, config: AnnConfig = AnnConfig()) -> VectorIndex:
        index, refine = (faiss.deserialize_index(np.frombuffer(b, dtype=np.uint8)) if b is not None else None for b in blobs)
        return cls(index, factory, config, refine)

    @property
    def mergeable(self) -> bool:
        """Whether FAISS can merge shards of this index (IVF and flat stores can; graphs such as HNSW cannot)."""
        def ok(idx: faiss.Index | None) -> bool:
            if idx is None or _try_extract_ivf(idx) is not None:
                return True
            inner = faiss.downcast_index(idx.index) if isinstance(idx, faiss.IndexIDMap2) else idx
            return isinstance(inner, faiss.IndexFlatCodes)
        return ok(self.index) and ok(self.refine)

    def merge(self, shards: list[VectorIndex]) -> None:
        """Appends shards built from copies of this (trained) index, in order, with FAISS's own merge_from: the
        result equals adding every shard's vectors here in that order."""
        # A deserialised flat index is IndexFlatIP where the factory made IndexFlat(metric=IP); merge_from wants
        # one type, so this index takes the same round trip first (same bytes on disk either way).
        self.index, self.refine = VectorIndex.from_bytes(self.to_bytes(), self.factory).index, (
            VectorIndex.from_bytes(self.to_bytes(), self.factory).refine)
        for shard in shards:
            self.index.merge_from(shard.index, 0)
            if self.refine is not None:
                self.refine.merge_from(shard.refine, 0)
        self._apply_search_params()

    @classmethod
    def load(cls, path: str | Path, factory: str, config: AnnConfig = AnnConfig()) -> VectorIndex:
        path = Path(path)
        refine_path = _refine_path(path)
        refine = faiss.read_index(str(refine_path)) if refine_path.exists() else None
        index = faiss.read_index(str(path))
        blocks = _block_lists(index)
        if blocks is not None:  # a file saved after removals by an older Vitrine holds the same stale slots
            clear_vacated_slots(blocks)
        return cls(index, factory, config, refine)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None:
        """The stored vectors of doc numbers `ids` (N, D), from the exact store; None when only PQ codes are kept."""
        store = self.refine if self.refine is not None else self.index
        if not isinstance(store, faiss.IndexIDMap2) or not isinstance(faiss.downcast_index(store.index), faiss.IndexFlat):
            return None
        return np.stack([store.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    def save(self, path: str | Path) -> None:
        """Writes the index (and its refine store) to temporary files and renames them into place."""
        path = Path(path)
        pairs = [(self.index, path)] + ([(self.refine, _refine_path(path))] if self.refine is not None else [])
        for index, target in pairs:
            tmp = target.with_name(target.name + ".tmp")
            faiss.write_index(index, str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def add(self, xb: np.ndarray, ids: np.ndarray) -> None:
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.index.add_with_ids(xb, ids)
        if self.refine is not None:
            self.refine.add_with_ids(xb, ids)
        self._apply_search_params()

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        blocks = _block_lists(self.index)
        sizes = None if blocks is None else [blocks.list_size(lst) for lst in range(blocks.nlist)]
        removed = self.index.remove_ids(ids)
        if blocks is not None and removed:
            clear_vacated_slots(blocks, sizes)
        if self.refine is not None:
            self.refine.remove_ids(ids)
        self._apply_search_params()
        return int(removed)

    def search(self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (D, I), each (nq, k); I is -1 where fewer than k vectors qualify.

        `allowed` restricts results to these doc numbers (a filter), inside the index scan.
        """
        xq = np.ascontiguousarray(xq, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, max(1, self.ntotal)))
        k_base = min(self.ntotal, k * self.config.k_factor_rf) if self.refine is not None else k
        k_base = max(1, k_base)
        if allowed is None:
            D, I = self._search_index.search(xq, k_base)
        else:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            ivf = _try_extract_ivf(self.index)
            if ivf is not None and self.refine is not None and self._too_few_probed(ivf, len(allowed), k_base):
                # The probed lists would hold fewer allowed vectors than the shortlist needs (a narrow filter): scan
                # the exact store over the allowed ids instead, which is exact and, for so few ids, as fast.
                return self.refine.search(xq, k, params=faiss.SearchParameters(sel=sel))
            params = (faiss.SearchParametersIVF(sel=sel, nprobe=self.config.nprobe) if ivf is not None
                      else faiss.SearchParameters(sel=sel))
            D, I = self.index.search(xq, k_base, params=params)
        if self.refine is None:
            return D, I
        return self._rerank(xq, I, k)

    def _too_few_probed(self, ivf: faiss.IndexIVF, allowed: int, k_base: int) -> bool:
        """Whether an IVF search restricted to `allowed` ids would find fewer than `k_base` of them: it visits about
        nprobe / nlist of the vectors, so about that share of the allowed ones (Qdrant and Weaviate switch a narrow
        filter to a flat scan by the same reasoning)."""
        return allowed * min(1.0, self.config.nprobe / ivf.nlist) < k_base

    def _rerank(self, xq: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        D_out = np.full((len(xq), k), -np.inf, dtype=np.float32)
        I_out = np.full((len(xq), k), -1, dtype=np.int64)
        for row, (q, cand) in enumerate(zip(xq, I)):
            cand = cand[cand >= 0]
            if len(cand) == 0:
                continue
            vecs = self.refine.reconstruct_batch(cand)  # (C, D)
            scores = vecs @ q  # (C,)
            top = np.argsort(-scores, kind="stable")[:k]
            D_out[row, :len(top)] = scores[top]
            I_out[row, :len(top)] = cand[top]
        return D_out, I_out

    def _apply_search_params(self) -> None:
        ivf = _try_extract_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = self.config.nprobe
        self._search_index = self.index
        if self.config.use_gpu and gpu_available():
            self._search_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)


def _block_lists(index: faiss.Index) -> faiss.BlockInvertedLists | None:
    """The inverted lists of a fast-scan IVF index ("...x4fs"), whose codes are packed 32 to a block."""
    ivf = _try_extract_ivf(index)
    if ivf is None:
        return None
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    return invlists if isinstance(invlists, faiss.BlockInvertedLists) else None


def clear_vacated_slots(blocks: faiss.BlockInvertedLists, sizes_before: list[int] | None = None) -> int:
    """Zeroes the code slots past each list's end inside its last block; returns how many were cleared.

    FAISS 1.15's BlockInvertedLists.remove_ids moves the last code into a removed slot but leaves the vacated slot's
    nibbles in place, and the next add (pq4_pack_codes_range) ORs new codes into slots it expects to be zero: a
    vector added to that list after a removal got a corrupt code and was not found (40 of 50 re-added vectors in a
    probe; a title-only live upsert removes and re-adds). With `sizes_before`, only the lists that shrank are
    visited (a live write touches one or two); without, every list (a file loaded from disk).
    """
    if blocks.n_per_block != 32:
        # FAISS's PQ4 packer addresses only blocks of 32 correctly ("x4fs_64" misreads slots 32-63); clearing would
        # corrupt live codes. Such indexes keep FAISS's own behaviour (see AnnConfig: live bundles should use x4fs).
        return 0
    packer = blocks.packer
    zero = np.zeros(packer.code_size, dtype=np.uint8)
    cleared = 0
    for lst in range(blocks.nlist):
        size = blocks.list_size(lst)
        end = -(-size // blocks.n_per_block) * blocks.n_per_block  # the last block's capacity
        if sizes_before is not None:
            end = min(end, sizes_before[lst])
        if end <= size:
            continue
        nbytes = -(-end // blocks.n_per_block) * blocks.block_size
        codes = faiss.rev_swig_ptr(blocks.get_codes(lst), nbytes).reshape(-1, blocks.block_size)  # a view, not a copy
        for slot in range(size, end):
            packer.pack_1(zero, slot, codes)
            cleared += 1
    return cleared


def _refine_path(path: Path) -> Path:
    return path.with_name(path.stem + ".refine" + path.suffix)


def _id_mapped(index: faiss.Index) -> faiss.Index:
    """IVF indexes take ids natively; anything else is wrapped in IndexIDMap2 (which can also reconstruct by id)."""
    return index if _try_extract_ivf(index) is not None else faiss.IndexIDMap2(index)


def _try_extract_ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _train(index: faiss.Index, xb: np.ndarray, config: AnnConfig) -> None:
    """Trains on the GPU when one is available (IVF clustering dominates build time), else the CPU."""
    sample = xb
    if len(xb) > 256 * 1024:
        rng = np.random.default_rng(0)
        sample = xb[rng.choice(len(xb), 256 * 1024, replace=False)]
    if config.use_gpu and gpu_available():
        ivf = _try_extract_ivf(index)
        if ivf is not None:
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    index.train(sample)

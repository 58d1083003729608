from __future__ import annotations

import faiss
import numpy as np
import pytest

from vitrine.encoders.base import l2_normalize
from vitrine.indexer.ann import AnnConfig, VectorIndex, choose_factory


def clustered(n: int, d: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))
    return l2_normalize(x)


def test_factory_rule_by_catalog_size():
    assert choose_factory(500, 384) == "Flat"
    small = choose_factory(5_000, 384)
    assert small.startswith("IVF") and "x4fs" in small and small.endswith("RFlat")
    nlist = int(small.split(",")[0][3:])
    assert 16 <= nlist <= 5_000 // 39
    assert "Refine" in choose_factory(1_000_000, 384) and "PQ96" in choose_factory(1_000_000, 384)


def test_flat_matches_exact_faiss_and_keeps_ids():
    xb, xq = clustered(500, 32), clustered(10, 32, seed=1)
    ids = np.arange(1000, 1500, dtype=np.int64)
    idx = VectorIndex.build(xb, ids, AnnConfig(factory=AnnConfig.factory))
    exact = faiss.IndexFlatIP(32)
    exact.add(xb)
    D, I = idx.search(xq, 5)
    De, Ie = exact.search(xq, 5)
    np.testing.assert_array_equal(I, Ie + 1000)
    np.testing.assert_allclose(D, De, rtol=1e-5)


def test_ivf_pq_refine_recall_against_exact():
    xb, xq = clustered(6_000, 64), clustered(50, 64, seed=2)
    idx = VectorIndex.build(xb, np.arange(6_000), AnnConfig(nprobe=16))
    assert idx.factory.startswith("IVF")
    exact = faiss.IndexFlatIP(64)
    exact.add(xb)
    _, Ie = exact.search(xq, 10)
    _, I = idx.search(xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ie)])
    assert recall >= 0.88


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ8x4fs,RFlat", "IVF16,RaBitQ3"])
def test_remove_and_filtered_search(factory, tmp_path):
    xb = clustered(2_000, 32)
    idx = VectorIndex.build(xb, np.arange(2_000), AnnConfig(factory=factory, nprobe=16))
    assert idx.remove(np.array([0, 1, 2])) == 3
    _, I = idx.search(xb[:3], 5)
    assert not set(I.ravel()) & {0, 1, 2}
    allowed = np.arange(100, 200)
    _, I = idx.search(xb[150:151], 10, allowed=allowed)
    found = [i for i in I[0] if i >= 0]
    assert found and set(found) <= set(range(100, 200))
    assert found[0] == 150
    idx.save(tmp_path / "v.faiss")
    again = VectorIndex.load(tmp_path / "v.faiss", factory, AnnConfig(factory=factory, nprobe=16))
    assert again.ntotal == 1_997
    np.testing.assert_array_equal(again.search(xb[10:11], 3)[1], idx.search(xb[10:11], 3)[1])


def test_add_after_build_is_searchable():
    xb = clustered(3_000, 32)
    idx = VectorIndex.build(xb[:2_500], np.arange(2_500))
    idx.add(xb[2_500:], np.arange(10_000, 10_500))
    _, I = idx.search(xb[2_600:2_601], 1)
    assert I[0, 0] == 10_100


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="index.nprobe"):
        AnnConfig.from_dict({"nprobe": 0})
    with pytest.raises(ValueError, match="Unknown key"):
        AnnConfig.from_dict({"nlist": 3})


@pytest.mark.gpu
def test_gpu_search_matches_cpu():
    from vitrine.indexer.ann import gpu_available

    if not gpu_available():
        pytest.skip("needs faiss-gpu and a CUDA device")
    xb = clustered(5_000, 64)
    cpu = VectorIndex.build(xb, np.arange(5_000), AnnConfig(factory="IVF64,Flat", nprobe=64, use_gpu=False))
    gpu = VectorIndex.build(xb, np.arange(5_000), AnnConfig(factory="IVF64,Flat", nprobe=64, use_gpu=True))
    assert gpu._search_index is not gpu.index  # really on the GPU
    _, Ic = cpu.search(xb[:20], 10)
    _, Ig = gpu.search(xb[:20], 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(Ic, Ig)]) >= 0.95


def _fastscan_with_stale_slots() -> tuple[np.ndarray, VectorIndex]:
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((3000, 32)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    return xb, VectorIndex.build(xb, np.arange(3000), AnnConfig(factory="IVF16,PQ16x4fs,RFlat", nprobe=16))


def test_a_vector_re_added_after_a_removal_in_a_fast_scan_index_is_found():
    """FAISS 1.15 leaves a removed code's nibbles in its vacated slot and ORs the next added code into it; Vitrine
    clears vacated slots, so a live upsert (remove + add) stays findable."""
    xb, vi = _fastscan_with_stale_slots()
    rows = np.arange(0, 600, 7)
    vi.remove(rows)
    vi.add(xb[rows], rows + 10_000)
    _, I = vi.index.search(xb[rows], 10)  # the PQ base alone, before any re-scoring
    assert all(r + 10_000 in I[j] for j, r in enumerate(rows))
    _, I = vi.search(xb[rows], 1)
    assert I[:, 0].tolist() == (rows + 10_000).tolist()


def test_loading_a_fast_scan_file_saved_with_stale_slots_clears_them(tmp_path):
    xb, vi = _fastscan_with_stale_slots()
    rows = np.arange(0, 600, 7)
    vi.index.remove_ids(rows)  # as an older Vitrine removed: vacated slots keep their old nibbles
    vi.refine.remove_ids(rows)
    vi.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", "IVF16,PQ16x4fs,RFlat", AnnConfig(nprobe=16))
    loaded.add(xb[rows], rows + 10_000)
    _, I = loaded.index.search(xb[rows], 10)
    assert all(r + 10_000 in I[j] for j, r in enumerate(rows))


def test_a_narrow_filter_on_an_ivf_index_is_exact_and_full():
    """A filter keeping 1% of the catalog: IVF alone visits nprobe/nlist of it and returns fewer than k; the index
    scans the exact store over the allowed ids instead, so the top 10 equal the exact filtered top 10."""
    xb = clustered(6000, 32, seed=3)
    ids = np.arange(6000, dtype=np.int64) * 2
    index = VectorIndex.build(xb, ids, AnnConfig(factory="IVF128,PQ16x4fs,RFlat", nprobe=8))
    rng = np.random.default_rng(4)
    allowed = np.sort(rng.choice(ids, 60, replace=False))
    xq = clustered(20, 32, seed=5)
    _, got = index.search(xq, 10, allowed)
    exact = (xq @ xb[allowed // 2].T).argsort(axis=1)[:, ::-1][:, :10]
    assert (got == allowed[exact]).all()
    # A wide filter still goes through the IVF lists (and finds allowed ids only).
    wide = ids[::2]
    _, got = index.search(xq, 10, wide)
    assert np.isin(got, wide).all()

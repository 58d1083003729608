"""Makes a bundle's search indexes hold exactly its docstore's documents, after a crash at any point.

The docstore (SQLite) is the source of truth after WAL replay: doc numbers that Tantivy or a FAISS index holds and
the docstore lacks are deleted from it, and those Tantivy and the text index lack are added (text re-encoded). A CLIP
vector is not remade here (that needs the photo): the CLIP index only loses the vectors of doc numbers it should not
hold (every photo of them: its ids carry photo numbers, indexer/multiphoto.py).
"""
from __future__ import annotations

import faiss
import numpy as np
import tantivy

from vitrine.encoders.base import TextEncoder
from vitrine.indexer.bm25 import Bm25Index
from vitrine.indexer.bundle import Bundle, item_text
from vitrine.indexer.multiphoto import docnos_of


def reconcile(bundle: Bundle, encoder: TextEncoder | None) -> dict[str, int]:
    """Makes Tantivy and every vector index hold exactly the docstore's doc numbers; returns fix counts."""
    docstore, fixed = bundle.docstore, {}
    live = set(docstore.items)
    in_bm25 = set(bm25_docnos(bundle.bm25))
    extra, missing = in_bm25 - live, live - in_bm25
    if extra:
        bundle.bm25.delete(sorted(extra))
    if missing:
        bundle.bm25.add([(d, docstore.items[d]) for d in sorted(missing)])
    if extra or missing:
        bundle.bm25.commit()
    fixed["bm25"] = len(extra) + len(missing)
    for source, vi in bundle.vectors.items():
        have = vector_ids(vi.index)
        both = have if vi.refine is None else have & vector_ids(vi.refine)
        anywhere = have if vi.refine is None else have | vector_ids(vi.refine)
        want = {d for d in live if docstore.items[d].has_text()} if source == "text" else _of_live(anywhere, live)
        stale = (anywhere - want) | (anywhere - both)
        if stale:
            vi.remove(np.array(sorted(stale), dtype=np.int64))
        add = sorted(want - (both - stale))
        if add and source == "text":
            xb = encoder.encode_texts([item_text(docstore.items[d]) for d in add])  # (N, D)
            vi.add(xb, np.array(add, dtype=np.int64))
        fixed[source] = len(stale) + len(add)
    return fixed


def _of_live(ids: set[int], live: set[int]) -> set[int]:
    """The vector ids whose doc number is live."""
    arr = np.fromiter(ids, dtype=np.int64, count=len(ids))
    keep = np.isin(docnos_of(arr), np.fromiter(live, dtype=np.int64, count=len(live)))
    return set(arr[keep].tolist())


def bm25_docnos(bm25: Bm25Index) -> list[int]:
    """Every doc number in the committed Tantivy index."""
    bm25.index.reload()
    searcher = bm25.index.searcher()
    n = searcher.num_docs
    if n == 0:
        return []
    result = searcher.search(tantivy.Query.all_query(), limit=n, count=False)
    return [int(d) for d in searcher.fast_field_values("docno", [addr for _, addr in result.hits])]


def vector_ids(index: faiss.Index) -> set[int]:
    """Every id stored in an id-mapped or IVF FAISS index."""
    if hasattr(index, "id_map"):
        return set(faiss.vector_to_array(index.id_map).tolist())
    ivf = faiss.extract_index_ivf(index)
    out: set[int] = set()
    for lst in range(ivf.nlist):
        n = ivf.invlists.list_size(lst)
        if n:
            out.update(faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), n).tolist())
    return out

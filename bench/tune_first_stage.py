"""Tunes Vitrine's first-stage retrieval defaults (BM25 config, dense item text, fusion) on scifact and fashion.

Usage (from the repository root, data in ../shared/data or $VITRINE_DATA):
    python bench/tune_first_stage.py encode   # caches MiniLM vectors for fashion item-text variants (~1 min each)
    python bench/tune_first_stage.py sweep    # builds BM25 variants, sweeps fusion offline from cached lists
    python bench/tune_first_stage.py final    # evaluates the built bundles runs/{ds}-{Flat,auto} with the defaults

Caches live under runs/tune/ (gitignored). The last stdout line of every mode is one JSON object.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitrine.indexer.bm25 import Bm25Config, Bm25Index  # noqa: E402
from vitrine.indexer.catalog import Item, read_catalog  # noqa: E402
from vitrine.ranking.metrics import evaluate, load_qrels, load_queries  # noqa: E402

DATA = Path(os.environ.get("VITRINE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CACHE = Path(__file__).resolve().parents[1] / "runs" / "tune"
TASKS = [("scifact", "claims"), ("fashion", "text-literal"), ("fashion", "text-paraphrase")]
DEPTH = 1000  # cached list depth; candidate depth is simulated by truncation

# --- item_text variants for the dense encoder (fashion differs; scifact has title + description only) ---
ATTR_CORE = ("gender", "color", "article_type")


def text_variant(item: Item, name: str) -> str:
    a = item.attributes
    core = [a[k] for k in ATTR_CORE if a.get(k)]
    if name == "current":   # title. category. all attributes. description
        parts = [item.title, item.category.replace(" > ", ", ") if item.category else "",
                 ", ".join(str(v) for v in a.values()), item.description]
    elif name == "title":
        parts = [item.title, item.description]
    elif name == "title_cat":
        parts = [item.title, item.category.replace(" > ", ", ") if item.category else "", item.description]
    elif name == "title_core":
        parts = [item.title, ", ".join(core), item.description]
    elif name == "title_cat_core":
        parts = [item.title, item.category.replace(" > ", ", ") if item.category else "", ", ".join(core), item.description]
    else:
        raise KeyError(name)
    return ". ".join(p for p in parts if p)[:2000]


TEXT_VARIANTS = ("current", "title", "title_cat", "title_core", "title_cat_core")


def load(ds: str):
    items, _ = read_catalog(DATA / ds / "catalog.jsonl")
    return items


def cmd_encode() -> dict:
    from vitrine.encoders.text import SentenceTransformerEncoder
    enc = SentenceTransformerEncoder()
    CACHE.mkdir(parents=True, exist_ok=True)
    out = {}
    for ds, task in TASKS:
        qs = load_queries(DATA / ds / "queries" / f"{task}.jsonl")
        p = CACHE / f"q-{ds}-{task}.npy"
        if not p.exists():
            np.save(p, enc.encode_texts([q["text"] for q in qs]))
    fashion = load("fashion")
    for v in TEXT_VARIANTS:
        p = CACHE / f"x-fashion-{v}.npy"
        if p.exists():
            continue
        t0 = time.perf_counter()
        np.save(p, enc.encode_texts([text_variant(it, v) for it in fashion]))
        out[v] = round(time.perf_counter() - t0, 1)
        print("encoded fashion", v, out[v], flush=True)
    p = CACHE / "x-scifact-current.npy"
    if not p.exists():  # scifact vectors come from the prebuilt Flat bundle (same item_text), no re-encode
        from vitrine.indexer.bundle import Bundle
        b = Bundle("runs/scifact-Flat")
        idx = b.vectors["text"].index
        items = load("scifact")
        id2doc = {it.id: d for d, it in b.docstore.items.items()}
        ids = np.array([id2doc[it.id] for it in items], dtype=np.int64)
        x = np.vstack([idx.reconstruct(int(i)) for i in ids]).astype(np.float32)
        np.save(p, x)
    return out


# --- BM25 variants: tokenizer, field boosts, which attributes go into the attributes field ---
def bm25_item(item: Item, attrs: str, cat: bool, body: bool = False) -> Item:
    a = item.attributes
    if attrs == "core":
        a = {k: v for k, v in a.items() if k in ATTR_CORE}
    elif attrs == "none":
        a = {}
    desc = f"{item.title}. {item.description}" if body and item.description else item.description
    return Item(id=item.id, title=item.title, description=desc,
                category=item.category if cat else "", attributes=a)


_HYPHEN = re.compile(r"\b(\w+)-(\w+)\b")


def hyphen_join(text: str) -> str:
    """'t-shirt' -> 't-shirt tshirt': a hyphenated compound also matches its closed form."""
    joined = [a + b for a, b in _HYPHEN.findall(text)]
    return " ".join([text, *joined])


def bm25_lists(ds: str, items: list[Item], qs: list[dict], name: str, tok: str, boosts: dict, attrs: str = "all",
               cat: bool = True, hy: bool = False, body: bool = False) -> dict:
    p = CACHE / f"l-{ds}-bm25-{name}.json"
    if p.exists():
        return json.loads(p.read_text())
    d = CACHE / "bm25" / f"{ds}-{name}"
    if d.exists():
        import shutil
        shutil.rmtree(d)
    idx = Bm25Index(d, Bm25Config(tokenizer=tok, boosts=boosts), create=True)
    idx.add((i, bm25_item(it, attrs, cat, body)) for i, it in enumerate(items))
    idx.close()
    idx.index.reload()
    out = {}
    for q in qs:
        text = hyphen_join(q["text"]) if hy else q["text"]
        out[q["qid"]] = [(items[dn].id, s) for dn, s in idx.search(text, DEPTH)]
    p.write_text(json.dumps(out))
    return out


def dense_lists(ds: str, task: str, items: list[Item], qs: list[dict], variant: str) -> dict:
    p = CACHE / f"l-{ds}-{task}-dense-{variant}.json"
    if p.exists():
        return json.loads(p.read_text())
    X = np.load(CACHE / f"x-{ds}-{variant}.npy")
    Q = np.load(CACHE / f"q-{ds}-{task}.npy")
    S = Q @ X.T
    out = {}
    for qi, q in enumerate(qs):
        top = np.argpartition(-S[qi], DEPTH)[:DEPTH]
        top = top[np.argsort(-S[qi][top], kind="stable")]
        out[q["qid"]] = [(items[j].id, float(S[qi, j])) for j in top]
    p.write_text(json.dumps(out))
    return out


# --- fusion variants (pure; the chosen one is copied into ranking/fusion.py) ---
def f_rrf(a, b, wb, k=60):
    f = {}
    for w, lst in ((wb, a), (1 - wb, b)):
        for r, (d, _) in enumerate(lst, 1):
            f[d] = f.get(d, 0.0) + w / (k + r)
    return f


def _norm(lst, how):
    if not lst:
        return []
    s = np.array([x for _, x in lst], dtype=np.float64)
    if how == "minmax":
        span = s.max() - s.min()
        n = (s - s.min()) / span if span > 0 else np.ones_like(s)
    elif how == "max":
        n = s / s.max() if s.max() > 0 else np.ones_like(s)
    elif how == "z":
        sd = s.std()
        n = (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)
    elif how == "ztop":  # z-score, then shifted so the list minimum is 0 (absent docs score 0)
        sd = s.std()
        n = (s - s.min()) / sd if sd > 0 else np.ones_like(s)
    else:
        raise KeyError(how)
    return [(d, float(v)) for (d, _), v in zip(lst, n)]


def f_norm(a, b, wb, how):
    f = {}
    na, nb = _norm(a, how), _norm(b, how)
    absent_a = min((v for _, v in na), default=0.0) if how == "z" else 0.0
    absent_b = min((v for _, v in nb), default=0.0) if how == "z" else 0.0
    ida, idb = dict(na), dict(nb)
    for d in set(ida) | set(idb):
        f[d] = wb * ida.get(d, absent_a) + (1 - wb) * idb.get(d, absent_b)
    return f


def top_ids(f, n=10):
    return [d for d, _ in sorted(f.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def ndcg(run, qrels):
    return round(evaluate(run, qrels)["ndcg@10"], 4)


FUSIONS = ([("rrf", k, wb) for k in (10, 20, 30, 60) for wb in (0.3, 0.4, 0.5, 0.6, 0.7)]
           + [(h, None, wb) for h in ("minmax", "max", "z", "ztop") for wb in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)])


if os.environ.get("FUSE"):  # e.g. FUSE=max restricts the sweep to one family
    FUSIONS = [f for f in FUSIONS if f[0] in os.environ["FUSE"].split(",")]


def fuse_eval(B, T, qrels, fusion, cand):
    how, k, wb = fusion
    run = {}
    for q in B:
        a, b = B[q][:cand], T[q][:cand]
        f = f_rrf(a, b, wb, k) if how == "rrf" else f_norm(a, b, wb, how)
        run[q] = top_ids(f)
    return ndcg(run, qrels)


def V(tok="en_stem", t=1.0, c=1.0, a=1.0, d=1.0, attrs="all", cat=True, hy=False, body=False):
    return dict(tok=tok, boosts={"title": t, "category": c, "attributes": a, "description": d},
                attrs=attrs, cat=cat, hy=hy, body=body)


BM25_VARIANTS = {
    # round 1
    "stem_t1.5": V(t=1.5), "stem_t1": V(), "def_t1": V(tok="default"), "def_t1.5": V(tok="default", t=1.5),
    "stem_t2": V(t=2), "stem_t3": V(t=3), "stem_t1.5_core": V(t=1.5, attrs="core"),
    "stem_t1.5_core_a2": V(t=1.5, attrs="core", a=2), "stem_t1_core_a2": V(attrs="core", a=2),
    "stem_t1.5_core_nocat": V(t=1.5, attrs="core", cat=False), "stem_t1.5_core_c0.5": V(t=1.5, attrs="core", c=0.5),
    "stem_t1.5_core_hy": V(t=1.5, attrs="core", hy=True), "stem_t1.5_hy": V(t=1.5, hy=True),
    "stem_t1.5_d0.5": V(t=1.5, d=0.5), "stem_t2_d0.5": V(t=2, d=0.5),
    # round 2
    "stem_t0.5": V(t=0.5), "stem_t0.75": V(t=0.75), "stem_body": V(body=True), "stem_t0.5_body": V(t=0.5, body=True),
    "stem_t0.25_body": V(t=0.25, body=True), "def_body": V(tok="default", body=True),
    "stem_core_a2_hy": V(attrs="core", a=2, hy=True), "stem_core_a3_hy": V(attrs="core", a=3, hy=True),
    "stem_core_a2_c0.5_hy": V(attrs="core", a=2, c=0.5, hy=True), "stem_core_a2_nocat_hy": V(attrs="core", a=2, cat=False, hy=True),
    "stem_all_a2_hy": V(a=2, hy=True), "stem_core_a1.5_hy": V(attrs="core", a=1.5, hy=True),
    "stem_t0.75_core_a2_hy": V(t=0.75, attrs="core", a=2, hy=True),
    # round 3
    "stem_t0.5_core_hy": V(t=0.5, attrs="core", hy=True), "stem_t0.5_core_a1.5_hy": V(t=0.5, attrs="core", a=1.5, hy=True),
    "stem_t0.5_core_a2_hy": V(t=0.5, attrs="core", a=2, hy=True), "stem_t0.5_core_a3_hy": V(t=0.5, attrs="core", a=3, hy=True),
    "stem_t0.25_core_hy": V(t=0.25, attrs="core", hy=True), "stem_t0.25_core_a2_hy": V(t=0.25, attrs="core", a=2, hy=True),
    "stem_t0.5_all_hy": V(t=0.5, hy=True), "stem_t0.25_body_core_a2_hy": V(t=0.25, attrs="core", a=2, hy=True, body=True),
    "stem_t0.5_body_core_a2_hy": V(t=0.5, attrs="core", a=2, hy=True, body=True),
    "stem_t0.5_core_a2_c0.5_hy": V(t=0.5, attrs="core", a=2, c=0.5, hy=True),
    # round 4
    "stem_t0.25_body_a2_hy": V(t=0.25, a=2, hy=True, body=True),
}


def cmd_sweep() -> dict:
    names = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] != "all" else list(BM25_VARIANTS)
    tvars = [] if len(sys.argv) > 3 and sys.argv[3] == "none" else (sys.argv[3].split(",") if len(sys.argv) > 3 else ["current"])
    data = {}
    for ds, task in TASKS:
        items = load(ds)
        qs = load_queries(DATA / ds / "queries" / f"{task}.jsonl")
        data[(ds, task)] = (items, qs, load_qrels(DATA / ds / "qrels" / f"{task}.tsv"))
    table = {}
    # 1) single sources
    for name in names:
        row = []
        for ds, task in TASKS:
            items, qs, qrels = data[(ds, task)]
            L = bm25_lists(ds, items, qs, f"{name}-{task}", **BM25_VARIANTS[name])
            row.append(ndcg({q: [d for d, _ in v[:10]] for q, v in L.items()}, qrels))
        table[f"bm25:{name}"] = row
        print(f"bm25:{name}", row, flush=True)
    for tv in tvars:
        row = []
        for ds, task in TASKS:
            items, qs, qrels = data[(ds, task)]
            L = dense_lists(ds, task, items, qs, tv if ds == "fashion" else "current")
            row.append(ndcg({q: [d for d, _ in v[:10]] for q, v in L.items()}, qrels))
        table[f"dense:{tv}"] = row
        print(f"dense:{tv}", row, flush=True)
    # 2) fusion
    cands = [int(c) for c in (sys.argv[4].split(",") if len(sys.argv) > 4 else ["100"])]
    best = []
    for name in names:
        for tv in tvars:
            lists = {}
            if len(names) * len(tvars) > 1 and tv != tvars[0] and False:
                pass
            for ds, task in TASKS:
                items, qs, qrels = data[(ds, task)]
                lists[task] = (bm25_lists(ds, items, qs, f"{name}-{task}", **BM25_VARIANTS[name]),
                               dense_lists(ds, task, items, qs, tv if ds == "fashion" else "current"), qrels)
            for cand in cands:
                for fu in FUSIONS:
                    row = [fuse_eval(B, T, qr, fu, cand) for B, T, qr in lists.values()]
                    key = f"{name}|{tv}|{fu[0]}{'' if fu[1] is None else fu[1]}|wb{fu[2]}|c{cand}"
                    table[key] = row
                    best.append((min(row[0] - 0.72, row[1] - 0.93, row[2] - 0.31), key, row))
    best.sort(reverse=True)
    for m, key, row in best[:25]:
        print(round(m, 4), key, row)
    (CACHE / f"sweep-{int(time.time())}.json").write_text(json.dumps(table))
    return {"best": best[0][1] if best else None, "ndcg@10": best[0][2] if best else None}


class CachedEncoder:
    """Wraps the MiniLM encoder with vectors cached by exact text (from `encode`), encoding only misses."""

    def __init__(self) -> None:
        from vitrine.encoders.text import SentenceTransformerEncoder
        self.inner = SentenceTransformerEncoder()
        self.name, self.dim = self.inner.name, self.inner.dim
        self.cache: dict[str, np.ndarray] = {}
        self.misses = 0

    def preload(self, texts: list[str], x: np.ndarray) -> None:
        self.cache.update(zip(texts, x))

    def encode_texts(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        miss = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if miss:
            self.misses += len(miss)
            self.cache.update(zip(miss, self.inner.encode_texts(miss, batch_size)))
        return np.vstack([self.cache[t] for t in texts]).astype(np.float32) if texts else np.zeros((0, self.dim), np.float32)


def cmd_build() -> dict:
    """Rebuilds runs/{ds}-Flat and runs/{ds}-auto with the current defaults (item_text, Bm25Config, AnnConfig)."""
    from vitrine.indexer.ann import AnnConfig
    from vitrine.indexer.bundle import IndexerConfig, build_bundle, item_text
    enc = CachedEncoder()
    out = {}
    for ds, cached in (("fashion", "title_core"), ("scifact", "current")):
        items = load(ds)
        p = CACHE / f"x-{ds}-{cached}.npy"
        if p.exists():  # vectors of the tuned text variant; a text that differs from item_text is re-encoded
            enc.preload([text_variant(it, cached) for it in items], np.load(p))
        before = enc.misses
        for name, cfg in (("Flat", IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False)),
                          ("auto", IndexerConfig(progress=False))):
            m = build_bundle(items, f"runs/{ds}-{name}", enc, cfg, force=True)
            out[f"{ds}-{name}"] = m.vectors["text"].factory
        out[f"{ds}-encoded"] = enc.misses - before
        assert all(item_text(it) in enc.cache for it in items)
        print(ds, out, flush=True)
    return out


def cmd_final() -> dict:
    """nDCG@10 of the built bundles through Searcher with the default SearchConfig (optionally nprobe/k_factor_rf)."""
    from vitrine.encoders.text import SentenceTransformerEncoder
    from vitrine.indexer.ann import AnnConfig
    from vitrine.indexer.bundle import Bundle
    from vitrine.ranking.pipeline import SearchConfig, Searcher, SearchRequest
    enc = SentenceTransformerEncoder()
    kinds = sys.argv[2].split(",") if len(sys.argv) > 2 else ["Flat", "auto"]
    ann = AnnConfig(**{k: int(v) for k, v in (kv.split("=") for kv in sys.argv[3].split(","))}) if len(sys.argv) > 3 else None
    res = {}
    for kind in kinds:
        for ds, task in TASKS:
            b = Bundle(f"runs/{ds}-{kind}", ann=ann)
            s = Searcher(b, enc, SearchConfig())
            qs = load_queries(DATA / ds / "queries" / f"{task}.jsonl")
            qrels = load_qrels(DATA / ds / "qrels" / f"{task}.tsv")
            run = {}
            for q in qs:
                r = s.search(SearchRequest(text=q["text"], k=10, exclude_ids=q.get("exclude_ids", [])))
                run[q["qid"]] = [h.id for h in r.hits]
            res[f"{kind}:{ds}/{task}"] = ndcg(run, qrels)
            b.close()
            print(kind, ds, task, res[f"{kind}:{ds}/{task}"], flush=True)
    return res


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "sweep"
    res = globals()[f"cmd_{mode}"]()
    print(json.dumps(res))

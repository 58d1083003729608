"""ONNX Runtime variants of the text encoder and the cross-encoder, the backend choice, and micro-batching."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vitrine.encoders import onnx
from vitrine.encoders.batching import Batcher, BatchingEncoder, DeadlineExceeded, QueueFull, deadline
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import IndexerConfig, build_bundle
from vitrine.indexer.variants import TEXT_VARIANTS
from vitrine.indexer.catalog import Item


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT with mean pooling and normalisation, saved as a sentence-transformers dir."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from vitrine.encoders.text import resolve_text_model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-st")
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    st = SentenceTransformer(modules=[models.Transformer(str(root / "bert"), max_seq_length=64),
                                      models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    st.save(str(root / "st"))
    return str(root / "st")


def catalog(n: int = 60) -> list[Item]:
    colours, kinds, extra = ["red", "blue", "black", "green", "white"], ["shirt", "dress", "shoe", "watch"], ["slim", "cotton", "casual"]
    return [Item(id=str(i), title=f"{colours[i % 5]} {extra[i % 3]} {kinds[i % 4]} model {i}") for i in range(n)]


@pytest.fixture(scope="module")
def text_bundle(tiny_text_model, tmp_path_factory):
    from vitrine.encoders.text import SentenceTransformerEncoder

    encoder = SentenceTransformerEncoder(tiny_text_model, device="cpu")
    out = tmp_path_factory.mktemp("onnx-bundles") / "b"
    manifest = build_bundle(catalog(), out, encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False))
    return out, manifest, encoder


def test_indexer_writes_checked_onnx_variants(text_bundle):
    from vitrine.encoders.text import OnnxTextEncoder

    out, manifest, encoder = text_bundle
    record = onnx.read_record(out / TEXT_VARIANTS)
    assert set(record["variants"]) == {"onnx", "onnx-int8"}
    assert record["source"] == encoder.version
    for name, v in record["variants"].items():
        assert (out / TEXT_VARIANTS / v["file"]).stat().st_size == v["bytes"]
        assert v["loss"] == pytest.approx(record["torch"]["ndcg@10"] - v["ndcg@10"], abs=1e-3)
        assert manifest.models["text"].variants[name]["loss"] == v["loss"]
    assert record["variants"]["onnx-int8"]["bytes"] < record["variants"]["onnx"]["bytes"]
    texts = ["red shirt", "a long description of a black casual cotton dress for evenings", "watch"]
    ref = encoder.encode_texts(texts)
    fp32 = OnnxTextEncoder(out / TEXT_VARIANTS, "onnx").encode_texts(texts)
    int8 = OnnxTextEncoder(out / TEXT_VARIANTS, "onnx-int8").encode_texts(texts)
    np.testing.assert_allclose(fp32, ref, atol=1e-5)  # same graph, padded in one batch
    assert (int8 * ref).sum(axis=1).min() > 0.95      # quantised weights move embeddings a little
    assert fp32.dtype == np.float32 and np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)


def test_choose_backend_prefers_the_fastest_within_the_loss():
    record = {"torch": {"ms_per_query": 10.0},
              "variants": {"onnx": {"loss": 0.0, "ms_per_query": 4.0}, "onnx-int8": {"loss": 0.02, "ms_per_query": 1.0}}}
    assert onnx.choose_backend(record, "auto", 0.005) == "onnx"          # int8 loses too much
    assert onnx.choose_backend(record, "auto", 0.05) == "onnx-int8"
    record["variants"]["onnx"]["ms_per_query"] = 12.0
    assert onnx.choose_backend(record, "auto", 0.005) == "torch"         # fp32 ONNX measured slower than torch
    assert onnx.choose_backend({}, "auto", 0.005) == "torch"             # nothing exported
    assert onnx.choose_backend(record, "onnx-int8", 0.0) == "onnx-int8"  # forced
    with pytest.raises(ValueError, match="'onnx' was not exported"):
        onnx.choose_backend({"variants": {}}, "onnx", 0.005)


def test_searcher_serves_the_chosen_backend(text_bundle):
    from vitrine.encoders.config import EncoderConfig
    from vitrine.encoders.text import OnnxTextEncoder, SentenceTransformerEncoder
    from vitrine.serving.assemble import open_served
    from vitrine.serving.config import VitrineConfig
    from vitrine.ranking.pipeline import SearchRequest

    out, _, _ = text_bundle
    record = onnx.read_record(out / TEXT_VARIANTS)
    flat = AnnConfig(factory="Flat")
    auto = open_served(str(out), VitrineConfig(index=flat))
    assert auto.backends["text"] == onnx.choose_backend(record, "auto", 0.005)
    forced = open_served(str(out), VitrineConfig(index=flat, encoders=EncoderConfig(backend="onnx-int8")))
    assert isinstance(forced.searcher.text_encoder.encoder, OnnxTextEncoder) and forced.backends["text"] == "onnx-int8"
    torch_ = open_served(str(out), VitrineConfig(index=flat, encoders=EncoderConfig(backend="torch")))
    assert isinstance(torch_.searcher.text_encoder.encoder, SentenceTransformerEncoder)
    for s in (forced.searcher, torch_.searcher):
        hits = s.search(SearchRequest(text="red cotton shirt", sources=["text"], k=5)).hits
        assert len(hits) == 5


def test_cross_encoder_variants_score_like_torch(tiny_cross_encoder_dir, tmp_path):
    import shutil

    from vitrine.ranking.rerank import ONNX_DIR, CrossEncoderReranker, RerankConfig, export_cross_onnx

    model = tmp_path / "ce"
    shutil.copytree(tiny_cross_encoder_dir, model)
    torch_ = CrossEncoderReranker(str(model), RerankConfig(cache_size=0), device="cpu")
    record = export_cross_onnx(torch_, model / ONNX_DIR)
    assert set(record["variants"]) == {"onnx", "onnx-int8"}
    docs = ["a red cotton shirt for men", "black leather shoes", "a blue dress " * 40]
    ref = torch_.score("red shirt", docs)
    fp32 = CrossEncoderReranker(str(model), RerankConfig(cache_size=0), backend="onnx").score("red shirt", docs)
    int8 = CrossEncoderReranker(str(model), RerankConfig(cache_size=0), backend="onnx-int8").score("red shirt", docs)
    np.testing.assert_allclose(fp32, ref, atol=1e-4)
    np.testing.assert_allclose(int8, ref, atol=0.1 * (np.abs(ref).max() + 1e-3) + 0.05)
    with pytest.raises(ValueError, match="no 'onnx' variant"):
        CrossEncoderReranker(tiny_cross_encoder_dir, backend="onnx")


def test_batcher_encodes_concurrent_requests_together():
    calls: list[int] = []

    def fn(xs: list[str]) -> np.ndarray:
        calls.append(len(xs))
        time.sleep(0.02)
        return np.array([[float(len(x))] for x in xs], dtype=np.float32)

    batcher = Batcher(fn, "test", window_ms=5.0, max_batch=16)
    results: dict[int, float] = {}

    def ask(i: int) -> None:
        results[i] = float(batcher.submit("x" * i)[0])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: float(i) for i in range(1, 13)}  # every caller got its own row
    assert sum(calls) == 12 and len(calls) < 12            # and fewer calls than requests


def test_batcher_bounds_the_queue_and_respects_deadlines():
    gate = threading.Event()

    def fn(xs: list[str]) -> np.ndarray:
        gate.wait(5)
        return np.zeros((len(xs), 1), np.float32)

    batcher = Batcher(fn, "test", window_ms=0.0, max_batch=1, max_queue=1)
    first = threading.Thread(target=batcher.submit, args=("a",))
    first.start()
    time.sleep(0.1)  # the worker now blocks on "a"
    errors: list[BaseException] = []

    def late() -> None:
        with deadline(0.05):
            try:
                batcher.submit("b")
            except DeadlineExceeded as exc:
                errors.append(exc)

    waiting = threading.Thread(target=late)
    waiting.start()
    time.sleep(0.1)
    with pytest.raises(QueueFull, match="already waiting"):
        batcher.submit("c")  # "b" holds the one queue slot
    gate.set()
    first.join()
    waiting.join()
    assert len(errors) == 1 and "deadline passed" in str(errors[0])  # "b" expired before its turn: never encoded


def test_batching_encoder_caches_repeated_texts(keyword_encoder):
    enc = BatchingEncoder(keyword_encoder, window_ms=0.0, cache_size=2)
    a = enc.encode_texts(["red shirt"])
    b = enc.encode_texts(["red shirt"])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, keyword_encoder.encode_texts(["red shirt"]))
    assert enc.stats()["cache_hits"] == 1 and enc.stats()["encoded"] == 1
    b[0, 0] = 42.0  # a caller changing its copy never changes the cache
    assert enc.encode_texts(["red shirt"])[0, 0] != 42.0
    many = enc.encode_texts(["red", "blue"])  # more than one text: straight to the encoder, no queue
    assert many.shape == (2, keyword_encoder.dim) and enc.name == keyword_encoder.name


def test_batcher_isolates_a_bad_input_and_stops_on_close():
    def fn(xs: list[str]) -> np.ndarray:
        time.sleep(0.02)
        if "bad" in xs:
            raise ValueError("cannot encode 'bad'")
        return np.array([[float(len(x))] for x in xs], dtype=np.float32)

    batcher = Batcher(fn, "test", window_ms=20.0, max_batch=8)
    out: dict[str, object] = {}

    def ask(x: str) -> None:
        try:
            out[x] = float(batcher.submit(x)[0])
        except ValueError as exc:
            out[x] = exc

    threads = [threading.Thread(target=ask, args=(x,)) for x in ("a", "bad", "ccc")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["a"] == 1.0 and out["ccc"] == 3.0 and isinstance(out["bad"], ValueError)
    batcher.close()
    batcher._thread.join(timeout=5)
    assert not batcher._thread.is_alive()


def test_short_titles_still_give_check_queries():
    """A catalog of two-word titles ("Red Shirt") got no ONNX variants: the 3-word check sample was empty and indexing
    it raised. It is checked with two words instead."""
    from vitrine.indexer.catalog import Item
    from vitrine.indexer.variants import check_queries

    items = [Item(id=str(i), title=f"{c} {k}") for i, (c, k) in enumerate([("Red", "Shirt"), ("Blue", "Shoe"), ("Tan", "Bag")])]
    queries = check_queries(items)
    assert sorted(t for _, t in queries) == [0, 1, 2] and all(len(q.split()) == 2 for q, _ in queries)
    assert check_queries([Item(id="x", description="no title")]) == []

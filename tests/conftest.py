"""Shared fixtures: a keyword one-hot encoder for exact assertions and a small bundle built with it, tiny models,
and the one place that says where the shared evaluation data lives (absent in a user's clean clone)."""
from __future__ import annotations

import os
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from vitrine.encoders.base import l2_normalize
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle, IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """$VITRINE_SHARED_DATA if set, else ../shared/data beside the repository, where CI keeps it.

    A user's clean clone has no such folder; point the variable at a path that does not exist to test as one.
    """
    return Path(os.environ.get("VITRINE_SHARED_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """`shared_data("yandex-clicks/testSample")` is that path in the shared data, or skips the test naming it.

    Only for tests whose point is the real data set; anything else builds its data in a fixture.
    """
    root = shared_data_root()

    def need(relative: str) -> Path:
        path = root / relative
        if not path.exists():
            pytest.skip(f"needs {path} (the shared data, absent in a clean clone; VITRINE_SHARED_DATA names its folder)")
        return path

    return need


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread everywhere: float sums then add up in one order on any machine, and two OpenMP threads
    on a 2-core box shared with other jobs spin on each other (the tiny models here ran ~10x slower)."""
    try:
        import torch
    except ImportError:  # the light client install has no torch
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)


VOCAB = ["shirt", "dress", "shoe", "watch", "bag", "red", "blue", "black", "green", "men", "women", "crimson", "azure"]
# Synonyms map onto the same dimension, so the fake dense source "understands" paraphrases BM25 misses.
SYNONYMS = {"crimson": "red", "azure": "blue", "tee": "shirt", "purse": "bag", "sneaker": "shoe"}


class KeywordEncoder:
    """Turns known keywords into one-hot dimensions; deterministic and exact."""

    name = "keyword-test-encoder"
    dim = len(VOCAB)

    def encode_texts(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                word = SYNONYMS.get(word, word.rstrip("s") if word.rstrip("s") in VOCAB else word)
                if word in VOCAB:
                    out[row, VOCAB.index(word)] += 1.0
        out[:, -1] += 1e-3  # no all-zero rows
        return l2_normalize(out)


def make_items() -> list[Item]:
    rows = [
        ("1", "Red Shirt for Men", "Apparel > Topwear > Shirts", {"color": "Red", "gender": "Men"}, 20.0),
        ("2", "Blue Shirt for Women", "Apparel > Topwear > Shirts", {"color": "Blue", "gender": "Women"}, 25.0),
        ("3", "Black Dress", "Apparel > Dress > Dresses", {"color": "Black", "gender": "Women"}, 60.0),
        ("4", "Red Dress", "Apparel > Dress > Dresses", {"color": "Red", "gender": "Women"}, 55.0),
        ("5", "Green Shoe", "Footwear > Shoes > Casual Shoes", {"color": "Green", "gender": "Men"}, 80.0),
        ("6", "Black Watch", "Accessories > Watches", {"color": "Black", "gender": "Men"}, None),
        ("7", "Blue Bag", "Accessories > Bags > Handbags", {"color": "Blue", "gender": "Women"}, 35.0),
        ("8", "Black Shoe for Women", "Footwear > Shoes > Heels", {"color": "Black", "gender": "Women"}, 70.0),
    ]
    return [Item(id=i, title=t, category=c, attributes=a, price=p) for i, t, c, a, p in rows]


@pytest.fixture(scope="session")
def keyword_encoder() -> KeywordEncoder:
    return KeywordEncoder()


@pytest.fixture(scope="session")
def small_bundle_path(tmp_path_factory, keyword_encoder) -> str:
    out = tmp_path_factory.mktemp("bundles") / "small"
    build_bundle(make_items(), out, keyword_encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False))
    return str(out)


@pytest.fixture()
def small_bundle(small_bundle_path):
    b = Bundle(small_bundle_path)
    yield b
    b.close()


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT cross-encoder (with MiniLM's tokenizer), saved as a CrossEncoder directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from vitrine.encoders.text import resolve_text_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    out = tmp_path_factory.mktemp("models") / "tiny-ce"
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory) -> str:
    """A random 1-layer BERT with MiniLM's tokenizer and mean pooling, as a sentence-transformers directory."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from vitrine.encoders.text import resolve_text_model

    root = tmp_path_factory.mktemp("tiny-st")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model("all-MiniLM-L6-v2"))
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    SentenceTransformer(modules=[Transformer(str(root / "hf")), Pooling(32, "mean")], device="cpu").save(str(root / "model"))
    return str(root / "model")


@pytest.fixture(scope="session")
def serve_process() -> Callable[..., tuple[subprocess.Popen, str]]:
    """Starts `vitrine serve --bundle B --port 0 ...` as its own process, as a shop runs it, and returns it with its
    HOST:PORT once it prints it (the caller stops it)."""
    from vitrine.serving.process import start_server

    return start_server

"""The model pool behind tenants: bundles naming one model share one copy; LoRA adapters share their base's weights."""
from __future__ import annotations

import numpy as np
import pytest

from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import IndexerConfig, build_bundle
from vitrine.serving.assemble import open_served
from vitrine.serving.pool import ModelPool
from tests.conftest import make_items


@pytest.fixture(scope="module")
def adapters(tiny_st, tmp_path_factory) -> list[str]:
    """Two LoRA adapters on the tiny base, with different (seeded) weights, saved as `vitrine train text --adapter lora` does."""
    import torch

    from vitrine.encoders.text import load_text_model
    from vitrine.trainer.text import add_lora, save_model

    out = []
    for seed in (1, 2):
        model = load_text_model(tiny_st, "cpu")
        add_lora(model, rank=4)
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in model[0].model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)   # a trained adapter moves away from the identity
        path = tmp_path_factory.mktemp(f"adapter{seed}")
        save_model(model, path, tiny_st, "lora")
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def adapter_bundles(adapters, tmp_path_factory) -> list[str]:
    from vitrine.encoders.text import SentenceTransformerEncoder

    out = []
    for n, adapter in enumerate(adapters):
        path = tmp_path_factory.mktemp("bundles") / f"lora{n}"
        build_bundle(make_items(), path, SentenceTransformerEncoder(adapter, device="cpu"),
                     IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False))
        out.append(str(path))
    return out


def test_adapters_share_the_base_weights_and_encode_like_their_own_model(adapters, adapter_bundles):
    from vitrine.encoders.text import SentenceTransformerEncoder

    pool = ModelPool()
    served_a, served_b = (open_served(path, pool=pool) for path in adapter_bundles)
    assert served_a.backends["text"] == served_b.backends["text"] == "torch+lora"
    a, b = served_a.searcher, served_b.searcher
    stats = {m["model"]: m for m in pool.stats()}
    base = [m for name, m in stats.items() if name.startswith("text base")]
    lora = [m for name, m in stats.items() if name.startswith("text adapter")]
    assert len(base) == 1 and base[0]["users"] == 2 and len(lora) == 2
    assert all(m["bytes"] < 0.1 * base[0]["bytes"] for m in lora)      # an adapter costs a small share of its base
    emb = lambda s: s.text_encoder.encoder.model[0].model.get_base_model().embeddings.word_embeddings.weight  # noqa: E731
    assert emb(a).data_ptr() == emb(b).data_ptr()                        # one copy of the base in memory
    texts = ["red shirt for men", "blue bag"]
    ea, eb = a.text_encoder.encode_texts(texts), b.text_encoder.encode_texts(texts)
    assert not np.allclose(ea, eb, atol=1e-3)                            # each tenant its own adapter
    np.testing.assert_allclose(ea, SentenceTransformerEncoder(adapters[0], device="cpu").encode_texts(texts), atol=1e-5)
    served_a.retire()
    assert [m["users"] for m in pool.stats() if m["model"].startswith("text base")] == [1]
    served_b.retire()
    assert pool.stats() == []


def test_bundles_of_one_model_share_it_unless_sharing_is_off(small_bundle_path, tiny_st, tmp_path):
    from vitrine.encoders.text import SentenceTransformerEncoder

    paths = []
    for n in range(2):
        paths.append(str(tmp_path / f"b{n}"))
        build_bundle(make_items()[n * 4:(n + 1) * 4], paths[-1], SentenceTransformerEncoder(tiny_st, device="cpu"),
                     IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False))
    pool = ModelPool()
    s1, s2 = (open_served(p, pool=pool) for p in paths)
    assert s1.searcher.text_encoder is s2.searcher.text_encoder and [m["users"] for m in pool.stats()] == [2]
    private = ModelPool(share=False)
    p1, p2 = (open_served(p, pool=private) for p in paths)
    assert p1.searcher.text_encoder is not p2.searcher.text_encoder and len(private.stats()) == 2
    for s in (s1, s2, p1, p2):
        s.retire()
    assert pool.stats() == private.stats() == []

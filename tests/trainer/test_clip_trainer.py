"""The CLIP trainer learns a separable toy task with a tiny architecture, and its checkpoints load and resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitrine.encoders.clip import ClipEncoder
from vitrine.indexer.catalog import Item
from vitrine.trainer.clip import ClipTrainConfig, ClipTrainer, Pairs, load_pairs

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ["square", "stripe"]

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 4, "image_size": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def toy_pairs(n: int = 160, seed: int = 0) -> Pairs:
    rng = np.random.default_rng(seed)
    ids, texts, pix, attrs = [], [], [], []
    for i in range(n):
        color = list(COLORS)[i % 4]
        shape = SHAPES[(i // 4) % 2]
        img = np.full((16, 16, 3), 255, np.uint8)
        if shape == "square":
            img[3:13, 3:13] = COLORS[color]
        else:
            img[6:10, :] = COLORS[color]
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        ids.append(str(i))
        texts.append(f"a {color} {shape}")
        pix.append(img)
        attrs.append({"color": color, "shape": shape})
    return Pairs(ids, texts, torch.from_numpy(np.stack(pix)).permute(0, 3, 1, 2).contiguous(), attributes=attrs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    cfg = ClipTrainConfig(epochs=12, batch_size=32, lr=3e-3, warmup_steps=5, holdout=32, patience=12, image_size=16,
                          freeze_text="none", hflip=False, attribute_fields=("color", "shape"), attribute_min_count=2)
    trainer = ClipTrainer(cfg, out, device="cpu", log=lambda s: None, model_cfg=TINY_CFG)
    result = trainer.fit(toy_pairs(), progress=False)
    return out, result


def test_trainer_learns_the_toy_task(trained):
    out, result = trained
    first, best = result["curve"][0], max(c["mean_r@1"] for c in result["curve"])
    assert result["curve"][-1]["train_loss"] < first["train_loss"] - 0.5
    enc = ClipEncoder(str(out), device="cpu")
    classes = [f"a {c} {s}" for c in COLORS for s in SHAPES]
    pairs = toy_pairs(64, seed=1)
    from PIL import Image
    imgs = [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pairs.pixels]
    sims = enc.encode_images(imgs) @ enc.encode_texts(classes).T
    accuracy = np.mean([classes[j] == t for j, t in zip(sims.argmax(1), pairs.texts)])
    assert accuracy >= 0.8, accuracy  # chance is 1/8
    assert best > first["mean_r@1"]


def test_attribute_heads_predict_what_the_photo_shows(trained):
    out, result = trained
    assert result["attributes"] == {"color": 4, "shape": 2}
    enc = ClipEncoder(str(out), device="cpu")
    pairs = toy_pairs(64, seed=1)
    from PIL import Image
    xq = enc.encode_images([Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pairs.pixels])
    predicted = enc.attribute_heads.predict(xq)
    for field in ("color", "shape"):
        accuracy = np.mean([p[field][0] == a[field] for p, a in zip(predicted, pairs.attributes)])
        assert accuracy >= 0.9, (field, accuracy)  # chance is 1/4 and 1/2
    assert all(0 < p["color"][1] <= 1 for p in predicted)


def test_checkpoint_dir_is_self_contained(trained):
    out, result = trained
    for name in ("open_clip_config.json", "model.safetensors", "training.json", "metrics.json", "data_fingerprint.txt",
                 "attribute_heads.safetensors", "attributes.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "training.json").read_text())
    assert meta["best_epoch"] == result["best_epoch"] and meta["config"]["lr"] == 3e-3
    enc = ClipEncoder(str(out), device="cpu")
    x = enc.encode_texts(["a red square", "a blue stripe"])
    assert x.shape == (2, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)


def test_training_json_lists_the_items_no_run_trained_on(trained, tmp_path):
    """The held-out ids are what the indexer's CLIP check queries; a fine-tune keeps only those its base never saw."""
    out, result = trained
    held = json.loads((out / "training.json").read_text())["heldout_ids"]
    assert len(held) == len(set(held)) == result["heldout_pairs"] == 16
    cfg = ClipTrainConfig(epochs=1, batch_size=32, holdout=32, image_size=16, freeze_text="none", warmup_steps=1, seed=5)
    tuned = ClipTrainer(cfg, tmp_path / "tuned", base=str(out), device="cpu", log=lambda s: None).fit(toy_pairs(),
                                                                                                     progress=False)
    own = {str(i) for i in np.random.default_rng(5).permutation(160)[:16]}   # this run's held-out pairs (seed 5)
    assert tuned["heldout_ids"] and set(tuned["heldout_ids"]) == own & set(held) != own


def test_resume_continues_from_checkpoint(tmp_path):
    def make(epochs):
        return ClipTrainer(ClipTrainConfig(epochs=epochs, batch_size=32, holdout=32, image_size=16, freeze_text="none",
                                           warmup_steps=2), tmp_path, device="cpu", log=lambda s: None, model_cfg=TINY_CFG)

    make(2).fit(toy_pairs(96), progress=False)
    result = make(3).fit(toy_pairs(96), resume=True, progress=False)
    assert [c["epoch"] for c in result["curve"]] == [1, 2, 3]


def test_broken_images_are_reported_by_id(tmp_path):
    from PIL import Image
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(good)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    items = [Item(id="g", title="red", image="good.png"), Item(id="b", title="x", image="bad.jpg"),
             Item(id="m", title="y", image="missing.jpg"), Item(id="t", title="text only")]
    pairs = load_pairs(items, tmp_path, 16, progress=False)
    assert pairs.ids == ["g"] and pairs.pixels.shape == (1, 3, 16, 16)
    assert {i for i, _ in pairs.broken} == {"b", "m"}


def test_config_validation():
    with pytest.raises(ValueError, match="freeze_text"):
        ClipTrainConfig(freeze_text="some")


def test_an_open_clip_model_by_name_trains_and_saves(tmp_path):
    """`--vision open_clip:NAME[:TAG]` brings both of open_clip's towers (a tag needs a hub; none here, so random)."""
    import open_clip

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "vitrine-tiny-test.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(tmp_path / "cfg")
    cfg = ClipTrainConfig(epochs=1, batch_size=16, holdout=8, vision="open_clip:vitrine-tiny-test", freeze_text="none",
                          warmup_steps=1)
    trainer = ClipTrainer(cfg, tmp_path / "out", device="cpu", log=lambda s: None)
    result = trainer.fit(toy_pairs(48), progress=False)
    assert result["tower"] == "open_clip:vitrine-tiny-test" and result["trainable_stages"] is None
    enc = ClipEncoder(str(tmp_path / "out"), device="cpu")
    assert enc.encode_texts(["a red square"]).shape == (1, 32)
    with pytest.raises(ValueError, match="no model config named"):
        ClipTrainer(ClipTrainConfig(vision="open_clip:no-such-model"), tmp_path / "x", device="cpu", log=lambda s: None)


def test_type_runs_put_one_article_type_together_and_keep_every_row():
    from vitrine.trainer.clip import batch_order

    rows = np.concatenate([np.arange(40), 100 + np.arange(10)])  # 40 shop rows, 10 general ones
    types = torch.tensor([i % 4 for i in range(40)] + [0] * 60)
    order = batch_order(rows, 100, types, 5, np.random.default_rng(0))
    assert sorted(order.tolist()) == sorted(rows.tolist())
    runs = [order[s:s + 5] for s in range(0, len(order), 5)]
    shop_runs = [r for r in runs if (r < 100).all()]
    assert len(shop_runs) == 8 and all(len({int(types[i]) for i in r}) == 1 for r in shop_runs)
    plain = batch_order(rows, 100, types, 0, np.random.default_rng(0))
    assert sorted(plain.tolist()) == sorted(rows.tolist())


def test_indexer_writes_clip_onnx_variants_that_match_torch(toy_shop, base_clip, tmp_path):
    from vitrine.encoders import onnx
    from vitrine.indexer.ann import AnnConfig
    from vitrine.indexer.bundle import CatalogSource, IndexerConfig, build_bundle
    from vitrine.indexer.catalog import read_catalog
    from vitrine.indexer.variants import CLIP_VARIANTS
    from vitrine.serving.assemble import open_served
    from vitrine.serving.config import VitrineConfig
    from vitrine.ranking.pipeline import SearchRequest

    items, _ = read_catalog(toy_shop["catalog"])
    clip = ClipEncoder(str(base_clip), device="cpu")
    manifest = build_bundle(items, tmp_path / "b", None, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False),
                            clip_encoder=clip, source=CatalogSource(dir=toy_shop["root"]))
    record = onnx.read_record(tmp_path / "b" / CLIP_VARIANTS)
    assert set(record["variants"]) == {"onnx", "onnx-int8"} and "loss" in manifest.models["clip"].variants["onnx"]
    fp32 = ClipEncoder(str(base_clip), device="cpu", variants=tmp_path / "b" / CLIP_VARIANTS, backend="onnx")
    int8 = ClipEncoder(str(base_clip), device="cpu", variants=tmp_path / "b" / CLIP_VARIANTS, backend="onnx-int8")
    texts = ["crimson square", "a blue stripe"]
    from PIL import Image

    photos = [Image.open(toy_shop["root"] / "images" / f"{i}.png").convert("RGB") for i in toy_shop["ids"][:3]]
    np.testing.assert_allclose(fp32.encode_texts(texts), clip.encode_texts(texts), atol=1e-4)
    np.testing.assert_allclose(fp32.encode_images(photos), clip.encode_images(photos), atol=1e-4)
    assert (int8.encode_texts(texts) * clip.encode_texts(texts)).sum(axis=1).min() > 0.95
    assert record["variants"]["onnx"]["loss"] == pytest.approx(0.0, abs=0.01)
    served = open_served(str(tmp_path / "b"), VitrineConfig(index=AnnConfig(factory="Flat")))
    assert served.backends["clip"] == onnx.choose_backend(record, "auto", 0.005)
    searcher = served.searcher
    image = (toy_shop["root"] / "images" / f"{toy_shop['ids'][0]}.png").read_bytes()
    assert searcher.search(SearchRequest(image=image, k=3)).hits


def test_onnx_text_tower_drops_padding_without_changing_embeddings(base_clip, tmp_path):
    from vitrine.encoders.clip import export_clip_onnx

    clip = ClipEncoder(str(base_clip), device="cpu")
    record = export_clip_onnx(clip, tmp_path / "v")
    fp32 = ClipEncoder(str(base_clip), device="cpu", variants=tmp_path / "v", backend="onnx")
    texts = ["crimson square", "a long blue stripe on a white background with more words than the other"]
    full = clip.tokenizer(texts).numpy()
    trimmed = fp32._trim(full)
    if record["text_dynamic_length"]:
        assert trimmed.shape[1] < full.shape[1] and (full[:, trimmed.shape[1]:] == 0).all()
    np.testing.assert_allclose(fp32.encode_texts(texts), clip.encode_texts(texts), atol=1e-4)
    np.testing.assert_allclose(fp32.encode_texts(texts[:1]), clip.encode_texts(texts[:1]), atol=1e-4)

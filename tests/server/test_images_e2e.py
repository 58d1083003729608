"""Image and composed queries over a real gRPC channel, with a tiny CLIP trained in a fixture on generated images."""
from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.trainer.test_clip_trainer import TINY_CFG
from vitrine.encoders.clip import ClipEncoder
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle, CatalogSource, IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item
from vitrine.ranking.pipeline import SearchConfig, Searcher, SearchRequest
from vitrine.server.app import create_server, single
from vitrine.serving.assemble import Served
from vitrine.server.client import VitrineClient
from vitrine.trainer.clip import ClipTrainConfig, ClipTrainer, load_pairs

COLORS = {"Red": (220, 30, 30), "Green": (30, 200, 40), "Blue": (30, 40, 220)}
KINDS = {"Square": (3, 13, 3, 13), "Stripe": (6, 10, 0, 16)}


def draw(color: str, kind: str, jitter: int) -> Image.Image:
    img = np.full((16, 16, 3), 255, np.uint8)
    r0, r1, c0, c1 = KINDS[kind]
    img[r0:r1, c0:c1] = COLORS[color]
    img = np.clip(img.astype(int) + jitter, 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgcat")
    (root / "images").mkdir()
    items = []
    i = 0
    for color in COLORS:
        for kind in KINDS:
            for j in range(8):
                draw(color, kind, j - 4).save(root / "images" / f"{i}.png")
                items.append(Item(id=str(i), title=f"{color} {kind}", attributes={"color": color, "kind": kind},
                                  image=f"images/{i}.png"))
                i += 1
    items.append(Item(id="text-only", title="Blue Square poster", attributes={"color": "Blue", "kind": "Square"}))
    items.append(Item(id="broken", title="Red Square", attributes={"color": "Red", "kind": "Square"}, image="images/missing.png"))
    return root, items


@pytest.fixture(scope="module")
def served(catalog, keyword_encoder, tmp_path_factory):
    root, items = catalog
    model_dir = tmp_path_factory.mktemp("tinyclip")
    cfg = ClipTrainConfig(epochs=15, batch_size=16, lr=3e-3, warmup_steps=3, holdout=8, patience=15, image_size=16,
                          freeze_text="none", hflip=False, attribute_fields=("color", "kind"), attribute_min_count=2)
    trainer = ClipTrainer(cfg, model_dir, device="cpu", log=lambda s: None, model_cfg=TINY_CFG)
    trainer.fit(load_pairs(items, root, 16, progress=False), progress=False)
    clip = ClipEncoder(str(model_dir), device="cpu")
    out = tmp_path_factory.mktemp("b") / "bundle"
    manifest = build_bundle(items, out, keyword_encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False),
                            clip_encoder=clip, source=CatalogSource(dir=root))
    served = create_server(single(Served(Searcher(Bundle(out), keyword_encoder, clip_encoder=clip))), "127.0.0.1:0")
    server, port = served.server, served.port
    yield f"127.0.0.1:{port}", manifest, items, out, clip, keyword_encoder
    server.stop(0)


def test_manifest_records_clip_and_broken_images(served):
    _, manifest, *_ = served
    assert manifest.models["clip"].dim == 32
    assert manifest.counts.images == 48 and manifest.counts.broken_images == 1
    assert manifest.broken_images[0].id == "broken"
    assert manifest.vectors["clip_image"].count == 50  # 48 images + 2 text-only stand-ins


def test_image_query_finds_same_colour_and_kind(served):
    target, _, items, *_ = served
    by_id = {it.id: it for it in items}
    with VitrineClient(target) as client:
        result = client.search(image=png(draw("Green", "Stripe", 2)), k=5, explain=True)
    assert all("clip_image" in h.sources for h in result.hits)
    top = [by_id[h.id].attributes for h in result.hits]
    assert top == [{"color": "Green", "kind": "Stripe"}] * 5
    # The photo's predicted attributes (green, stripe) boost the items that have them, and the explanation says so.
    assert all("attributes" in h.sources and "attributes the query photo shows" in h.explanation for h in result.hits)


def test_attribute_boost_is_off_with_a_zero_bonus(served):
    _, _, _, bundle_dir, clip, encoder = served
    assert clip.attribute_heads is not None and set(clip.attribute_heads.fields) == {"color", "kind"}
    query = SearchRequest(image=png(draw("Green", "Stripe", 2)), k=5)
    on = Searcher(Bundle(bundle_dir), encoder, SearchConfig(attribute_min_prob=0.3), clip_encoder=clip).search(query)
    off = Searcher(Bundle(bundle_dir), encoder, SearchConfig(attribute_bonus=0.0), clip_encoder=clip).search(query)
    assert on.predicted == {"color": ("green", on.predicted["color"][1]), "kind": ("stripe", on.predicted["kind"][1])}
    assert off.predicted == {} and all("attributes" not in h.scores_by_source for h in off.hits)
    assert [h.id for h in on.hits] == [h.id for h in off.hits]  # all five are green stripes either way
    assert all(a.score > b.score for a, b in zip(on.hits, off.hits))
    with pytest.raises(ValueError, match="search.attribute_min_prob"):
        SearchConfig.from_dict({"attribute_min_prob": 1.5})


def test_composed_query_changes_colour_with_hard_constraint(served):
    target, _, items, *_ = served
    by_id = {it.id: it for it in items}
    with VitrineClient(target) as client:
        result = client.search("the same but in red", image=png(draw("Blue", "Stripe", 0)), k=6, explain=True)
        soft = client.search("the same but in red", image=png(draw("Blue", "Stripe", 0)), k=6, constraint="soft")
    colors = [by_id[h.id].attributes["color"] for h in result.hits]
    assert colors == ["Red"] * 6
    assert by_id[soft.hits[0].id].attributes["color"] == "Red"


def test_text_only_items_reachable_by_text_through_clip(served):
    target, *_ = served
    with VitrineClient(target) as client:
        result = client.search("blue square", k=60, sources=["clip_text"])
    assert result.hits and "clip_text" in result.hits[0].sources


@pytest.mark.parametrize("data", [b"", b"GIF89a-truncated", png(Image.new("L", (1, 1))), png(Image.new("RGBA", (3, 3)))])
def test_odd_images_get_an_answer_or_invalid_argument(served, data):
    target, *_ = served
    with VitrineClient(target) as client:
        if not data:
            with pytest.raises(grpc.RpcError) as err:
                client.search(image=data)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("text")
            return
        try:
            assert client.search(image=data, k=3).hits
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and exc.details().startswith("image")

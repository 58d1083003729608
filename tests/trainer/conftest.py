"""A toy shop for the click loop: coloured-shape photos on disk, a tiny CLIP trained on them, and synonym queries.

The base CLIP learns "a red square" from the catalog; the shop's users type words it never saw ("crimson box"),
so only clicks can teach it those.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitrine.indexer.catalog import read_catalog
from vitrine.trainer.clip import ClipTrainConfig, ClipTrainer, load_pairs

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 4, "image_size": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ["square", "stripe"]
SYNONYM = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden", "square": "box", "stripe": "band"}
PER_CLASS = 6


def draw(color: str, shape: str, rng: np.random.Generator) -> np.ndarray:
    img = np.full((16, 16, 3), 255, np.uint8)
    if shape == "square":
        img[3:13, 3:13] = COLORS[color]
    else:
        img[6:10, :] = COLORS[color]
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def toy_shop(tmp_path_factory) -> dict:
    """A catalog folder, its queries and graded qrels (2: colour and shape match; 1: shape matches)."""
    root = tmp_path_factory.mktemp("toyshop")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    lines, classes = [], {}
    for c in COLORS:
        for s in SHAPES:
            for n in range(PER_CLASS):
                item_id = f"{c}-{s}-{n}"
                Image.fromarray(draw(c, s, rng)).save(root / "images" / f"{item_id}.png")
                lines.append({"id": item_id, "title": f"a {c} {s}", "attributes": {"color": c, "shape": s},
                              "image": f"images/{item_id}.png"})
                classes[item_id] = (c, s)
    (root / "catalog.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    queries, qrels = [], {}
    for c in COLORS:
        for s in SHAPES:
            qid = f"t-{c}-{s}"
            queries.append({"qid": qid, "text": f"{SYNONYM[c]} {SYNONYM[s]}"})
            qrels[qid] = {i: 2 if cls == (c, s) else 1 for i, cls in classes.items() if cls[1] == s}
            other = next(x for x in COLORS if x != c)  # composed: a photo of another colour + "in crimson"
            qid = f"c-{c}-{s}"
            queries.append({"qid": qid, "image": f"images/{other}-{s}-0.png", "text": f"in {SYNONYM[c]}",
                            "exclude_ids": [f"{other}-{s}-0"]})
            qrels[qid] = {i: 2 for i, cls in classes.items() if cls == (c, s)}
    return {"root": root, "catalog": root / "catalog.jsonl", "queries": queries, "qrels": qrels,
            "ids": list(classes)}


@pytest.fixture(scope="session")
def base_clip(toy_shop, tmp_path_factory) -> Path:
    """A tiny CLIP trained for a few seconds on the toy catalog's (image, title) pairs."""
    out = tmp_path_factory.mktemp("base-clip")
    items, _ = read_catalog(toy_shop["catalog"])
    pairs = load_pairs(items, toy_shop["root"], 16, progress=False)
    cfg = ClipTrainConfig(epochs=10, batch_size=24, lr=3e-3, warmup_steps=3, holdout=8, patience=10, image_size=16,
                          freeze_text="none", hflip=False)
    ClipTrainer(cfg, out, device="cpu", log=lambda s: None, model_cfg=TINY_CFG).fit(pairs, progress=False)
    return out


def write_log(path: Path, shop: dict, seed: int, sessions_per_query: int) -> Path:
    from vitrine.ranking.clicklog import ClickLogWriter
    from vitrine.trainer.simulate import SimulatorConfig, simulate_clicks

    config = SimulatorConfig(sessions_per_query=sessions_per_query, seed=seed, distractors=10)
    with ClickLogWriter(path) as writer:
        for s in simulate_clicks(shop["queries"], shop["qrels"], config, shop["ids"], image_root=shop["root"]):
            writer.write(s)
    return path


@pytest.fixture(scope="session")
def click_logs(toy_shop, tmp_path_factory) -> dict[str, Path]:
    """A training log and a later held-out log (new sessions of the same queries), simulated with PBM."""
    root = tmp_path_factory.mktemp("clicklogs")
    return {"train": write_log(root / "train.jsonl", toy_shop, seed=1, sessions_per_query=12),
            "heldout": write_log(root / "heldout.jsonl", toy_shop, seed=2, sessions_per_query=4)}


def fine_tune(shop: dict, base: Path, log: Path, out: Path, **overrides) -> dict:
    from vitrine.ranking.clicklog import read_click_log
    from vitrine.trainer.click_clip import (
        ClickClipTrainer,
        ClickTrainConfig,
        prepare_click_data,
    )

    settings = {"epochs": 6, "batch_size": 32, "lr": 3e-3, "freeze_text": "none", "general_fraction": 0.25,
                "holdout_fraction": 0.0, "warmup_steps": 3, "hflip": False, "general_holdout": 0} | overrides
    config = ClickTrainConfig(**settings)
    sessions, _ = read_click_log(log)
    items, _ = read_catalog(shop["catalog"])
    trainer = ClickClipTrainer(config, out, base=str(base), device="cpu", log=lambda s: None)
    data = prepare_click_data(sessions, items, shop["root"], log.parent, config, 16)
    return trainer.fit_clicks(data)


@pytest.fixture(scope="session")
def click_tuned(toy_shop, base_clip, click_logs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("click-tuned")
    return out, fine_tune(toy_shop, base_clip, click_logs["train"], out)


@pytest.fixture(scope="session")
def click_destroyed(toy_shop, base_clip, click_logs, tmp_path_factory) -> Path:
    """The deliberately destructive setting: a learning rate ~300x too high, no general pairs."""
    out = tmp_path_factory.mktemp("click-destroyed")
    fine_tune(toy_shop, base_clip, click_logs["train"], out, lr=1.0, epochs=2, general_fraction=0.0)
    return out

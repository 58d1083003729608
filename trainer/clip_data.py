"""What CLIP training reads: the recipe (ClipTrainConfig), (image, text) catalog pairs and general (photo, caption)
pairs decoded once into uint8 tensors, and the attribute labels the heads learn; no model here."""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vitrine.encoders.text import resolve_text_model
from vitrine.encoders.towers import OPENAI_MEAN, OPENAI_STD, tower_preset
from vitrine.indexer.bundle import clip_item_text
from vitrine.indexer.catalog import Item, resolve_image


def default_model_cfg(image_size: int = 96, vision: str = "efficientnet-lite0", embed_dim: int = 256) -> dict[str, Any]:
    text_dir = resolve_text_model("all-MiniLM-L6-v2")
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": tower_preset(vision).timm_name, "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir, "hf_proj_type": "linear",
                     "hf_pooler_type": "mean_pooler", "context_length": 32},
    }


@dataclass(frozen=True)
class ClipTrainConfig:
    """The recipe; its defaults were chosen by bench/images.py on a 2-core CPU (README "CLIP recipe")."""

    epochs: int = 7
    batch_size: int = 128
    lr: float = 1e-3                   # projections, attribute heads, temperature
    lr_tower: float = 3e-4             # the trainable blocks of a pretrained image tower
    weight_decay: float = 0.05
    warmup_steps: int = 50
    image_size: int = 96
    vision: str = "efficientnet-lite0"  # a preset of encoders/towers.py or any timm name (from scratch)
    embed_dim: int = 256
    # Last stages of an EfficientNet tower that train (with its head conv); the frozen stages before them run once
    # per image and are cached. -1 = the whole tower trains (and any non-EfficientNet tower does).
    train_blocks: int = 3
    freeze_text: str = "transformer"   # "none" | "transformer" (train the projection only) | "all"
    freeze_image: bool = False
    attribute_fields: tuple[str, ...] = ("article_type", "color", "gender")
    attribute_weight: float = 0.5      # weight of the attribute heads' cross-entropy beside InfoNCE
    attribute_min_count: int = 10      # values rarer than this in the training pairs are not taught
    general_heldout: int = 500         # general photos never trained on (where general recall is measured)
    # 0: batches are a plain shuffle. N: batches are made of runs of N pairs sharing an article type (the first
    # attribute field), so in-batch negatives include the same article type in other colours (hard negatives).
    type_runs: int = 0
    holdout: int = 500
    patience: int = 3
    seed: int = 0
    max_pairs: int | None = None
    hflip: bool = True

    def __post_init__(self) -> None:
        if self.freeze_text not in ("none", "transformer", "all"):
            raise ValueError(f"freeze_text must be none, transformer or all, got {self.freeze_text!r}.")
        for name in ("epochs", "batch_size", "image_size", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("lr", "lr_tower"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.train_blocks < -1:
            raise ValueError(f"train_blocks must be -1 (whole tower) or a number of stages, got {self.train_blocks}.")
        if self.attribute_weight < 0:
            raise ValueError(f"attribute_weight must be non-negative, got {self.attribute_weight}.")


@dataclass
class Pairs:
    ids: list[str]
    texts: list[str]
    pixels: torch.Tensor            # (N, 3, S, S) uint8
    broken: list[tuple[str, str]] = field(default_factory=list)
    attributes: list[dict[str, str]] = field(default_factory=list)  # per pair, the item's attributes (may be empty)


@dataclass
class GeneralPairs:
    """Photos with several captions each (flickr8k), outside the shop: what keeps the model's general knowledge."""

    photos: list[str]
    captions: list[list[str]]
    pixels: torch.Tensor            # (N, 3, S, S) uint8


@dataclass(frozen=True)
class ClipTask:
    """What one CLIP run learns from and is measured on: the shop's pairs, general pairs mixed into the batches, and
    general pairs held out for the general recall check (both optional)."""

    pairs: Pairs
    general: GeneralPairs | None = None
    general_eval: GeneralPairs | None = None


pair_text = clip_item_text  # the text an image is trained against; the indexer uses the same for text-only items


def load_square(path: str, size: int) -> np.ndarray:
    """Decodes an image, pads it to a square on white and resizes: (size, size, 3) uint8."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at the smallest scale still >= size (much faster)
        img = img.convert("RGB")
        w, h = img.size
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return np.asarray(canvas.resize((size, size), Image.BICUBIC))


def _decode_all(paths: Sequence[str], size: int, workers: int, progress: bool, desc: str) -> list[np.ndarray | str]:
    """Each path decoded (an array) or the reason it could not be (a string), in order, in parallel threads."""
    def work(path: str) -> np.ndarray | str:
        try:
            return load_square(path, size)
        except (OSError, ValueError) as exc:
            return str(exc)

    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(work, paths), total=len(paths), desc=desc, disable=not progress, mininterval=1.0))


def _stack(arrays: list[np.ndarray], size: int) -> torch.Tensor:
    if not arrays:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


def load_pairs(items: Sequence[Item], catalog_dir: Path, size: int, workers: int = 4, progress: bool = True) -> Pairs:
    """Decodes every item image once, in parallel threads; broken or missing images are reported by id."""
    candidates = [(it, resolve_image(it, catalog_dir)) for it in items if it.image and it.has_text()]
    decoded = _decode_all([p for _, p in candidates], size, workers, progress, "decode images")
    pairs = Pairs([], [], torch.zeros(0))
    arrays = []
    for (item, _), arr in zip(candidates, decoded):
        if isinstance(arr, str):
            pairs.broken.append((item.id, arr))
            continue
        pairs.ids.append(item.id)
        pairs.texts.append(pair_text(item))
        pairs.attributes.append({k: str(v) for k, v in item.attributes.items() if v})
        arrays.append(arr)
    pairs.pixels = _stack(arrays, size)
    return pairs


def general_split(captions_file: str | Path, heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training photos, held-out photos) of flickr8k's captions.txt, split by photo with a fixed seed.

    The same split (trainer/text_pairs.split_captions) serves the text trainer, the gate and bench/images.py, so
    general recall is always measured on photos no model trained on.
    """
    from vitrine.trainer.text_pairs import read_captions, split_captions

    return split_captions(read_captions(captions_file), heldout, seed)


def load_general(folder: str | Path, size: int, heldout: int, seed: int = 0, progress: bool = True,
                 part: str = "train") -> GeneralPairs:
    """One part ("train" or "heldout") of a flickr8k-layout folder (captions.txt, images/): photos decoded, all
    their captions."""
    from vitrine.trainer.text_pairs import read_captions

    folder = Path(folder)
    captions = read_captions(folder / "captions.txt")
    train, held = general_split(folder / "captions.txt", heldout, seed)
    photos = train if part == "train" else held
    decoded = _decode_all([str(folder / "images" / p) for p in photos], size, 4, progress, f"decode general photos ({part})")
    keep = [(p, a) for p, a in zip(photos, decoded) if not isinstance(a, str)]
    return GeneralPairs([p for p, _ in keep], [captions[p] for p, _ in keep], _stack([a for _, a in keep], size))


def fingerprint(pairs: Pairs) -> str:
    h = hashlib.sha256()
    for i, t in zip(pairs.ids, pairs.texts):
        h.update(f"{i}\t{t}\n".encode())
    h.update(hashlib.sha256(pairs.pixels.numpy().tobytes()).digest())
    return h.hexdigest()


def normalize_pixels(x: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    x = x.float() / 255.0  # (B, 3, S, S)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def attribute_vocab(attributes: Sequence[Mapping[str, str]], fields: Sequence[str], min_count: int) -> dict[str, list[str]]:
    """Per field, the values at least min_count pairs have (sorted); fields with fewer than two such values drop."""
    out = {}
    for f in fields:
        counts = Counter(a[f] for a in attributes if a.get(f))
        values = sorted(v for v, c in counts.items() if c >= min_count)
        if len(values) >= 2:
            out[f] = values
    return out


def attribute_labels(attributes: Sequence[Mapping[str, str]], vocab: Mapping[str, list[str]]) -> dict[str, torch.Tensor]:
    """Per field, a label index per pair; -100 (ignored by cross-entropy) where the value is missing or rare."""
    out = {}
    for f, values in vocab.items():
        index = {v: i for i, v in enumerate(values)}
        out[f] = torch.tensor([index.get(a.get(f, ""), -100) for a in attributes], dtype=torch.long)
    return out

"""Contrastive CLIP training on (image, text) catalog pairs: InfoNCE with in-batch negatives, learnable temperature.

The default recipe (chosen on this 2-core CPU, see README "CLIP recipe") pairs the offline MiniLM as a frozen HF
text tower (only its projection trains; its pooled outputs are computed once and cached) with the ImageNet
EfficientNet-Lite0 image tower: its early stages frozen and cached, its last stages fine-tuned at 96 px. Linear
heads on the image embedding learn the catalog's attributes, and general (photo, caption) pairs join the batches.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from vitrine.encoders.base import pick_device
from vitrine.encoders.clip import (
    HEAD_SCALE,
    build_model,
    is_checkpoint_dir,
    load_checkpoint_dir,
    make_tokenizer,
    save_attribute_heads,
    save_checkpoint_dir,
)
from vitrine.encoders.text import resolve_text_model
from vitrine.encoders.towers import OPENAI_MEAN, OPENAI_STD, TowerPreset, load_pretrained_trunk, tower_preset
from vitrine.indexer.bundle import clip_item_text
from vitrine.indexer.catalog import Item, resolve_image
from vitrine.trainer.distributed import broadcast, gather_rows, shard, world, wrap_ddp


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


def retrieval_recall(img: torch.Tensor, txt: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Image->text and text->image recall@k where pair i matches pair i; inputs are unit vectors (N, D)."""
    sims = img @ txt.T  # (N, N)
    target = torch.arange(len(img))
    kk = min(k, len(img))
    i2t = (sims.topk(kk, dim=1).indices == target[:, None]).any(1).float().mean().item()
    t2i = (sims.T.topk(kk, dim=1).indices == target[:, None]).any(1).float().mean().item()
    return {f"i2t_r@{k}": i2t, f"t2i_r@{k}": t2i, f"mean_r@{k}": (i2t + t2i) / 2}


def warmup_cosine(opt: torch.optim.Optimizer, warmup_steps: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to zero at step `total`."""
    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


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


HUB_PREFIX = "open_clip:"


def hub_model(spec: str, device: str) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """`open_clip:NAME[:TAG]`: both towers of an open_clip model, with TAG's pretrained weights (needs a hub, or
    open_clip's cache) or random ones without a tag. Returns (model, model_cfg, preprocess) like a checkpoint dir."""
    import open_clip

    _, name, *tag = spec.split(":", 2)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"vision {spec!r}: open_clip has no model config named {name!r}.")
    model = open_clip.create_model(name, pretrained=tag[0] if tag else None, device=device)
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg["vision_cfg"].get("image_size", 224)
    preprocess = {"image_size": size if isinstance(size, int) else size[0], "mean": list(pp.get("mean", OPENAI_MEAN)),
                  "std": list(pp.get("std", OPENAI_STD)), "resize_mode": "shortest", "tower": spec}
    return model, cfg, preprocess


class TowerSplit:
    """An EfficientNet trunk cut into a frozen prefix (run once per image, cached) and a trainable tail."""

    def __init__(self, trunk: torch.nn.Module, train_blocks: int) -> None:
        self.trunk = trunk
        self.cut = len(trunk.blocks) - train_blocks
        for module in (trunk.conv_stem, trunk.bn1, *trunk.blocks[:self.cut]):
            for p in module.parameters():
                p.requires_grad_(False)

    @staticmethod
    def supports(trunk: torch.nn.Module) -> bool:
        return all(hasattr(trunk, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head"))

    def prefix_eval(self) -> None:
        """The frozen stages keep ImageNet's batch-norm statistics."""
        for module in (self.trunk.conv_stem, self.trunk.bn1, *self.trunk.blocks[:self.cut]):
            module.eval()

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = t.bn1(t.conv_stem(x))
        for block in t.blocks[:self.cut]:
            x = block(x)
        return x  # (B, C, H', W')

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        for block in t.blocks[self.cut:]:
            x = block(x)
        return t.forward_head(t.bn2(t.conv_head(x)))  # (B, F) pooled


class ClipTrainer:
    """Trains a CLIP model on Pairs; resumable from out_dir/checkpoint.pt; keeps the best held-out model.

    Beside symmetric InfoNCE it teaches the catalog's attributes (article type, colour, gender) with linear heads on
    the image embedding, and mixes general (photo, caption) pairs into the batches.
    """

    def __init__(self, config: ClipTrainConfig, out_dir: Path, base: str | None = None, device: str | None = None,
                 log: Callable[[str], None] = print, model_cfg: dict[str, Any] | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = pick_device(device)
        self.log = log if world()[0] == 0 else _quiet  # in a process group, rank 0 speaks for all
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.tower = "checkpoint" if base else "custom" if model_cfg else config.vision
        self.base = base
        if base and is_checkpoint_dir(base):
            self.model, self.model_cfg, self.preprocess = load_checkpoint_dir(base, self.device)
        elif base:
            raise ValueError(f"--base {base}: fine-tuning from a hub tag needs its checkpoint saved locally first; "
                             f"give a Vitrine CLIP checkpoint directory.")
        elif model_cfg is None and config.vision.startswith(HUB_PREFIX):
            self.model, self.model_cfg, self.preprocess = hub_model(config.vision, self.device)
        else:
            preset = tower_preset(config.vision) if model_cfg is None else TowerPreset("custom")
            self.model_cfg = model_cfg or default_model_cfg(config.image_size, config.vision, config.embed_dim)
            self.model = build_model(self.model_cfg, pretrained_text=True)
            if preset.pretrained:
                load_pretrained_trunk(self.model.visual.trunk, preset)
            self.model = self.model.to(self.device)
            self.preprocess = {"image_size": config.image_size, "mean": list(preset.mean), "std": list(preset.std),
                               "resize_mode": "shortest", "tower": self.tower}
        self.tokenizer = make_tokenizer(self.model_cfg)
        text = getattr(self.model, "text", None)
        self.hf_text = text is not None and hasattr(text, "transformer") and hasattr(text, "pooler")
        trunk = getattr(self.model.visual, "trunk", None)
        self.split = None
        if config.train_blocks >= 0 and not config.freeze_image and trunk is not None and TowerSplit.supports(trunk):
            self.split = TowerSplit(trunk, min(config.train_blocks, len(trunk.blocks)))
        self.heads: torch.nn.ModuleDict | None = None
        self.vocab: dict[str, list[str]] = {}
        self._freeze()

    def _freeze(self) -> None:
        cfg = self.config
        if cfg.freeze_text in ("transformer", "all"):
            for name, p in self.model.named_parameters():
                if name.startswith("visual.") or name.startswith("logit_"):
                    continue  # not the text tower
                is_projection = name.startswith("text.proj") or name == "text_projection"
                if cfg.freeze_text == "all" or not is_projection:
                    p.requires_grad_(False)
        if cfg.freeze_image:
            for p in self.model.visual.parameters():
                p.requires_grad_(False)

    def _text_inputs(self, texts: list[str]) -> torch.Tensor:
        """Token ids, or, with a frozen HF transformer, its pooled outputs computed once (the slow part on a CPU)."""
        tokens = self.tokenizer(texts)
        if not (self.hf_text and self.config.freeze_text != "none"):
            return tokens
        pad = self.model.text.config.pad_token_id
        # Longest first, so each batch is cut to its own width: same outputs, far fewer padding tokens.
        order = torch.argsort((tokens != pad).sum(1), descending=True, stable=True)
        pooled = []
        with torch.no_grad():
            for s in range(0, len(tokens), 256):
                x = tokens[order[s:s + 256]].to(self.device)
                mask = (x != pad).long()
                width = int(mask.sum(1).max())  # drop all-padding columns: same outputs, less work
                x, mask = x[:, :width], mask[:, :width]
                out = self.model.text.transformer(input_ids=x, attention_mask=mask)
                pooled.append(self.model.text.pooler(out, mask).cpu())
        out = torch.cat(pooled) if pooled else torch.zeros(0)
        return out[torch.argsort(order)]  # (N, H) in the callers' order

    def _encode_text(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dtype == torch.long:
            return self.model.encode_text(inputs.to(self.device))
        return self.model.text.proj(inputs.to(self.device))

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalize_pixels(pixels, self.preprocess["mean"], self.preprocess["std"])

    def _image_inputs(self, pixels: torch.Tensor, progress: bool, train: bool = True) -> list[torch.Tensor]:
        """What the trainable image layers see, per orientation: [as is, flipped] with hflip, else [as is].

        With a split tower these are the frozen prefix's outputs, computed once here (fp16 to halve the memory);
        otherwise the uint8 pixels themselves.
        """
        views = [pixels, pixels.flip(-1)] if self.config.hflip and train else [pixels]
        if self.split is None:
            return views
        self.split.prefix_eval()
        out = []
        for n, view in enumerate(views):
            chunks = [self.split.prefix(self._normalize(view[s:s + 128]).to(self.device, memory_format=torch.channels_last))
                      .contiguous().half().cpu()
                      for s in tqdm(range(0, len(view), 128), desc=f"frozen stages ({n + 1}/{len(views)})",
                                    disable=not progress, mininterval=2.0)]
            out.append(torch.cat(chunks) if chunks else torch.zeros(0))
        return out

    def _encode_image(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings from _image_inputs rows: (B, D)."""
        if self.split is None:
            return self.model.encode_image(self._normalize(inputs).to(self.device))
        return self.model.visual.head(self.split.tail(inputs.to(self.device).float()))

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.hflip:
            flip = torch.rand(len(x)) < 0.5
            x = x.clone()
            x[flip] = x[flip].flip(-1)
        return x

    def _batch_images(self, views: list[torch.Tensor], idx: np.ndarray, augment: bool) -> torch.Tensor:
        if not augment or len(views) == 1:
            return views[0][idx]
        flip = torch.rand(len(idx)) < 0.5
        return torch.where(flip.view(-1, *[1] * (views[0].dim() - 1)), views[1][idx], views[0][idx])

    def _train_mode(self) -> None:
        self.model.train()
        if self.split is not None:
            self.split.prefix_eval()

    @torch.no_grad()
    def _step(self, opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor) -> float:
        """One optimiser step; the temperature stays within CLIP's bound (logit scale <= 100)."""
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss.backward()
        opt.step()
        sched.step()
        self.model.logit_scale.clamp_(0, math.log(100))
        return loss.item()

    @torch.no_grad()
    def _embed_images(self, views: list[torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        return torch.cat([F.normalize(self._encode_image(views[0][idx[s:s + 256]]), dim=-1).cpu()
                          for s in range(0, len(idx), 256)])

    @torch.no_grad()
    def _embed_texts(self, text_inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(self._encode_text(text_inputs[s:s + 256]), dim=-1).cpu()
                          for s in range(0, len(text_inputs), 256)])

    def evaluate(self, views: list[torch.Tensor], idx: np.ndarray, text_inputs: torch.Tensor,
                 labels: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Held-out image<->text recall (pair i matches text i) and, with heads, attribute accuracy."""
        self.model.eval()
        img, txt = self._embed_images(views, idx), self._embed_texts(text_inputs)
        out = {**retrieval_recall(img, txt, 10), **retrieval_recall(img, txt, 1)}
        if self.heads is not None and labels:
            self.heads.eval()
            for f, head in self.heads.items():
                y = labels[f][idx]
                known = y >= 0
                if known.any():
                    pred = head(HEAD_SCALE * img.to(self.device)).argmax(-1).cpu()
                    out[f"acc_{f}"] = (pred[known] == y[known]).float().mean().item()
        return out

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW with two groups: a pretrained tower's trainable blocks at lr_tower, everything new at lr."""
        cfg = self.config
        pretrained_tower = (self.tower == "checkpoint" or tower_preset(self.tower).pretrained
                            or self.tower.count(":") == 2)  # open_clip:NAME:TAG
        tower, rest = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (tower if pretrained_tower and name.startswith("visual.trunk.") else rest).append(p)
        if self.heads is not None:
            rest += list(self.heads.parameters())
        groups = [{"params": rest, "lr": cfg.lr}] + ([{"params": tower, "lr": cfg.lr_tower}] if tower else [])
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    def fit(self, pairs: Pairs, resume: bool = False, progress: bool = True, general: GeneralPairs | None = None,
            general_eval: GeneralPairs | None = None) -> dict[str, Any]:
        """Trains and keeps the best held-out epoch in out_dir; returns what training.json records.

        Inside a torch process group (`vitrine train clip --ray`) every rank runs this with the same seed, so all
        draw the same batches; each encodes its share of a batch, InfoNCE runs over every rank's rows (gathered)
        and DDP averages the gradients, so a step equals the single-process one. Rank 0 alone evaluates, decides
        the early stop (broadcast to the others) and writes out_dir.
        """
        cfg = self.config
        t_start = time.perf_counter()
        rank, size = world()
        main = rank == 0
        progress = progress and main
        n = len(pairs.ids)
        if n < 4:
            raise ValueError(f"need at least 4 (image, text) pairs to train, got {n}.")
        if cfg.batch_size % size:
            raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of the {size} workers; each worker takes "
                             f"an equal share of every batch.")
        order = np.random.default_rng(cfg.seed).permutation(n)
        if cfg.max_pairs:
            order = order[:cfg.max_pairs]
        holdout = min(cfg.holdout, max(2, len(order) // 10))
        val_idx, train_idx = order[:holdout], order[holdout:]
        n_general = len(general.photos) if general is not None else 0
        self.log(f"pairs: {len(train_idx)} train, {len(val_idx)} held out, {n_general} general photos; "
                 f"caching text tower outputs ...")
        used = np.sort(order)
        cached = self._text_inputs([pairs.texts[i] for i in used])
        text_all = cached.new_zeros((n, *cached.shape[1:]))
        text_all[torch.from_numpy(used)] = cached
        # General photos have several captions: all are cached, and each epoch pairs a photo with one of them.
        g_text, g_first = None, np.zeros(0, dtype=np.int64)
        if n_general:
            flat = [c for caps in general.captions for c in caps]
            g_text = self._text_inputs(flat)
            g_first = np.cumsum([0] + [len(c) for c in general.captions[:-1]])
        attrs = pairs.attributes if len(pairs.attributes) == n else [{}] * n
        self.vocab = attribute_vocab([attrs[i] for i in train_idx], cfg.attribute_fields, cfg.attribute_min_count) \
            if cfg.attribute_weight > 0 else {}
        labels = attribute_labels(attrs, self.vocab)
        if self.vocab:
            self.heads = torch.nn.ModuleDict({f: torch.nn.Linear(self.model_cfg["embed_dim"], len(v))
                                              for f, v in self.vocab.items()}).to(self.device)
            self.log("attribute heads: " + ", ".join(f"{f} ({len(v)} values)" for f, v in self.vocab.items()))
        views = self._image_inputs(pairs.pixels, progress)
        g_views = self._image_inputs(general.pixels, progress) if n_general else []
        evaluates = main and general_eval is not None  # only rank 0 evaluates
        ge_views = self._image_inputs(general_eval.pixels, progress, train=False) if evaluates else []
        ge_text = self._text_inputs([c[0] for c in general_eval.captions]) if evaluates else None
        opt = self._optimizer()
        steps_per_epoch = max(1, (len(train_idx) + n_general) // cfg.batch_size)
        sched = warmup_cosine(opt, cfg.warmup_steps, steps_per_epoch * cfg.epochs)
        state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "curve": [], "bad_epochs": 0}
        ckpt_path = self.out_dir / "checkpoint.pt"
        if resume and ckpt_path.is_file():
            ckpt = torch.load(ckpt_path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(ckpt["model"])
            if self.heads is not None and ckpt.get("heads"):
                self.heads.load_state_dict(ckpt["heads"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
            state = ckpt["state"]
            torch.set_rng_state(ckpt["rng"])
            self.log(f"resumed from {ckpt_path} after epoch {state['epoch']}")
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        best_dir = self.out_dir / ".best"
        batch_loss = wrap_ddp(_BatchLoss(self), self.device)  # the module itself in one process
        rng = np.random.default_rng(cfg.seed + state["epoch"])
        # Rows >= n are general photos (row - n); both kinds share every batch's in-batch negatives.
        rows = np.concatenate([train_idx, n + np.arange(n_general)])
        for epoch in range(state["epoch"], cfg.epochs):
            self._train_mode()
            if self.heads is not None:
                self.heads.train()
            perm = batch_order(rows, n, labels.get(cfg.attribute_fields[0]) if cfg.attribute_fields else None,
                               cfg.type_runs, rng)
            caption_pick = rng.integers(0, 1 << 30, size=n_general)
            losses = []
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, mininterval=2.0)
            for step in bar:
                batch = shard(perm[step * cfg.batch_size:(step + 1) * cfg.batch_size])  # this rank's share
                shop, gen = batch[batch < n], batch[batch >= n] - n
                parts_img = [self._batch_images(views, shop, cfg.hflip)]
                parts_txt = [text_all[shop]]
                if len(gen):
                    parts_img.append(self._batch_images(g_views, gen, cfg.hflip))
                    pick = g_first[gen] + caption_pick[gen] % np.array([len(general.captions[g]) for g in gen])
                    parts_txt.append(g_text[pick])
                loss = batch_loss(torch.cat(parts_img), torch.cat(parts_txt), len(shop),
                                  {f: y[shop] for f, y in labels.items()})
                losses.append(self._step(opt, sched, loss))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", T=f"{1 / self.model.logit_scale.exp().item():.3f}")
            if main:
                self._end_epoch(state, epoch, float(np.mean(losses)), t_start, best_dir, views, val_idx, text_all, labels,
                                ge_views, ge_text)
                torch.save({"model": self.model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "heads": self.heads.state_dict() if self.heads is not None else None,
                            "state": state, "rng": torch.get_rng_state()}, ckpt_path.with_suffix(".tmp"))
                ckpt_path.with_suffix(".tmp").replace(ckpt_path)
            state = broadcast(state)  # rank 0 evaluated and decided; every rank follows
            if state["bad_epochs"] >= cfg.patience:
                self.log(f"early stop: no held-out gain for {cfg.patience} epochs")
                break
        extra = {"general_photos": n_general, "tower": self.tower,
                 "trainable_stages": None if self.split is None else len(self.split.trunk.blocks) - self.split.cut,
                 "attributes": {f: len(v) for f, v in self.vocab.items()}, "workers": size,
                 "heldout_ids": self._heldout_ids([pairs.ids[i] for i in val_idx])}
        training = None
        if main:
            training = self._finish(best_dir, state, pairs, len(train_idx), len(val_idx), time.perf_counter() - t_start, extra)
        return broadcast(training)

    def _end_epoch(self, state: dict, epoch: int, train_loss: float, t_start: float, best_dir: Path,
                   views: list[torch.Tensor], val_idx: np.ndarray, text_all: torch.Tensor,
                   labels: Mapping[str, torch.Tensor], ge_views: list[torch.Tensor], ge_text: torch.Tensor | None) -> None:
        """Held-out metrics into the curve; the best epoch so far is saved to best_dir (updates `state`)."""
        metrics = self.evaluate(views, val_idx, text_all[val_idx], labels)
        if ge_text is not None:
            g = self.evaluate(ge_views, np.arange(len(ge_text)), ge_text)
            metrics.update({f"general_{k}": v for k, v in g.items() if k.startswith("t2i_r@10")})
        state["curve"].append({"epoch": epoch + 1, "train_loss": train_loss, **metrics,
                               "elapsed_s": round(time.perf_counter() - t_start, 1)})
        self.log(f"epoch {epoch + 1}: loss {train_loss:.3f}, held-out mean R@10 {metrics['mean_r@10']:.3f}"
                 + "".join(f", {k} {v:.3f}" for k, v in metrics.items() if k.startswith(("acc_", "general_"))))
        state["epoch"] = epoch + 1
        # R@10 saturates on small held-out sets; adding R@1 keeps the selection sensitive.
        score = metrics["mean_r@10"] + metrics["mean_r@1"]
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
            self._save(best_dir)
        else:
            state["bad_epochs"] += 1

    def _heldout_ids(self, ids: list[str]) -> list[str]:
        """The catalog items no training run of this model saw: this run's held-out pairs, less any its base
        checkpoint trained on (those outside the base's own held-out ids). The indexer's CLIP check
        (indexer/bundle.clip_check) queries with them, so its recall is measured on pairs the model never learned."""
        record = Path(self.base) / "training.json" if self.base else None
        before = json.loads(record.read_text()).get("heldout_ids") if record is not None and record.is_file() else None
        if before is None:   # no base, or a base that did not record them (its training pairs are unknown)
            return ids
        unseen = set(before)
        return [i for i in ids if i in unseen]

    def _save(self, out: Path) -> None:
        save_checkpoint_dir(self.model, self.model_cfg, self.preprocess, out)
        if self.heads is not None:
            save_attribute_heads(out, self.heads, self.vocab, HEAD_SCALE)

    def _finish(self, best_dir: Path, state: dict, pairs: Pairs, n_train: int, n_val: int, seconds: float,
                extra: dict[str, Any] | None = None) -> dict:
        # After a resume that found nothing better, the best model is already in out_dir.
        if best_dir.is_dir():
            for f in best_dir.iterdir():
                target = self.out_dir / f.name
                if target.is_dir():
                    shutil.rmtree(target)
                f.replace(target)
            best_dir.rmdir()
        best = next(c for c in state["curve"] if c["epoch"] == state["best_epoch"])
        version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        training = {"version": version, "config": asdict(self.config), "train_pairs": n_train, "heldout_pairs": n_val,
                    **(extra or {}), "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                    "seconds": round(seconds, 1), "curve": state["curve"], "device": self.device,
                    "broken_images": pairs.broken[:100]}
        (self.out_dir / "training.json").write_text(json.dumps(training, indent=2))
        (self.out_dir / "metrics.json").write_text(json.dumps({"heldout": best}, indent=2))
        (self.out_dir / "data_fingerprint.txt").write_text(fingerprint(pairs) + "\n")
        return training


def _quiet(message: str) -> None:
    pass


class _BatchLoss(torch.nn.Module):
    """A training batch's loss as one module call, so that DDP sees every trainable weight in one forward.

    InfoNCE runs over every rank's rows (gathered; this rank's own rows alone in one process), the attribute heads
    over this rank's shop rows (the first `n_shop` of the batch)."""

    def __init__(self, trainer: ClipTrainer) -> None:
        super().__init__()
        self.model, self.heads = trainer.model, trainer.heads
        self.encode_image, self.encode_text = trainer._encode_image, trainer._encode_text
        self.attribute_weight = trainer.config.attribute_weight

    def forward(self, images: torch.Tensor, texts: torch.Tensor, n_shop: int,
                labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        img = F.normalize(self.encode_image(images), dim=-1)  # (b, D)
        txt = F.normalize(self.encode_text(texts), dim=-1)  # (b, D)
        loss = info_nce(gather_rows(img), gather_rows(txt), self.model.logit_scale.exp())
        if self.heads is not None and n_shop:
            loss = loss + self.attribute_weight * attribute_loss(self.heads, img[:n_shop], labels)
        return loss


def train_clip(config: ClipTrainConfig, out_dir: Path, pairs: Pairs, base: str | None = None,
               general: GeneralPairs | None = None, general_eval: GeneralPairs | None = None, resume: bool = False,
               progress: bool = True, device: str | None = None, model_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ClipTrainer built and fitted in one call: what each Ray worker runs (trainer/distributed.py)."""
    trainer = ClipTrainer(config, out_dir, base=base, device=device, model_cfg=model_cfg)
    return trainer.fit(pairs, resume=resume, progress=progress, general=general, general_eval=general_eval)


def batch_order(rows: np.ndarray, n_shop: int, types: torch.Tensor | None, run: int, rng: np.random.Generator) -> np.ndarray:
    """The epoch's row order: a shuffle, or (run > 0) shuffled runs of `run` shop rows of one article type mixed with
    runs of general rows (rows >= n_shop), so that each batch holds hard negatives."""
    if run <= 0 or types is None:
        return rng.permutation(rows)
    shop, general = rows[rows < n_shop], rows[rows >= n_shop]
    t = types[torch.from_numpy(shop)].numpy()
    chunks = []
    for value in np.unique(t):
        members = rng.permutation(shop[t == value])
        chunks += [members[s:s + run] for s in range(0, len(members), run)]
    general = rng.permutation(general)
    chunks += [general[s:s + run] for s in range(0, len(general), run)]
    order = rng.permutation(len(chunks))
    return np.concatenate([chunks[i] for i in order]) if chunks else rows


def attribute_loss(heads: torch.nn.ModuleDict, img: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the attribute heads over the fields a batch has labels for; img is (B, D) unit vectors."""
    losses = []
    for f, head in heads.items():
        y = labels[f].to(img.device)
        if (y >= 0).any():
            losses.append(F.cross_entropy(head(HEAD_SCALE * img), y, ignore_index=-100))
    return torch.stack(losses).mean() if losses else img.sum() * 0


def info_nce(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch negatives; img and txt are (B, D) unit vectors."""
    logits = scale * img @ txt.T  # (B, B)
    target = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

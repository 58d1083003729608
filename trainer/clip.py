"""Contrastive CLIP training on (image, text) catalog pairs: InfoNCE with in-batch negatives, learnable temperature.

The default recipe (chosen on this 2-core CPU, see README "CLIP recipe") pairs the offline MiniLM as a
frozen HF text tower (only its projection trains; its pooled outputs are computed once and cached) with
a small timm CNN image tower trained from scratch at 64 px.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
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
from vitrine.encoders.clip import build_model, is_checkpoint_dir, load_checkpoint_dir, make_tokenizer, save_checkpoint_dir
from vitrine.encoders.text import resolve_text_model
from vitrine.indexer.bundle import clip_item_text
from vitrine.indexer.catalog import Item, resolve_image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def default_model_cfg(image_size: int = 64, vision: str = "resnet10t", embed_dim: int = 256) -> dict[str, Any]:
    text_dir = resolve_text_model("all-MiniLM-L6-v2")
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": vision, "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir, "hf_proj_type": "linear",
                     "hf_pooler_type": "mean_pooler", "context_length": 32},
    }


@dataclass(frozen=True)
class ClipTrainConfig:
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    image_size: int = 64
    vision: str = "resnet10t"
    embed_dim: int = 256
    freeze_text: str = "transformer"   # "none" | "transformer" (train the projection only) | "all"
    freeze_image: bool = False
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
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")


@dataclass
class Pairs:
    ids: list[str]
    texts: list[str]
    pixels: torch.Tensor            # (N, 3, S, S) uint8
    broken: list[tuple[str, str]] = field(default_factory=list)


pair_text = clip_item_text  # the text an image is trained against; the indexer uses the same for text-only items


def load_square(path: str, size: int) -> np.ndarray:
    """Decodes an image, pads it to a square on white and resizes: (size, size, 3) uint8."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return np.asarray(canvas.resize((size, size), Image.BICUBIC))


def load_pairs(items: Sequence[Item], catalog_dir: Path, size: int, workers: int = 4, progress: bool = True) -> Pairs:
    """Decodes every item image once, in parallel threads; broken or missing images are reported by id."""
    candidates = [(it, resolve_image(it, catalog_dir)) for it in items if it.image and it.has_text()]
    ids, texts, arrays, broken = [], [], [], []

    def work(pair: tuple[Item, str]) -> tuple[Item, np.ndarray | None, str]:
        try:
            return pair[0], load_square(pair[1], size), ""
        except (OSError, ValueError) as exc:
            return pair[0], None, str(exc)

    with ThreadPoolExecutor(workers) as pool:
        for item, arr, err in tqdm(pool.map(work, candidates), total=len(candidates), desc="decode images",
                                   disable=not progress, mininterval=1.0):
            if arr is None:
                broken.append((item.id, err))
                continue
            ids.append(item.id)
            texts.append(pair_text(item))
            arrays.append(arr)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays else torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return Pairs(ids, texts, pixels, broken)


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


class ClipTrainer:
    """Trains a CLIP model on Pairs; resumable from out_dir/checkpoint.pt; keeps the best held-out model."""

    def __init__(self, config: ClipTrainConfig, out_dir: Path, base: str | None = None, device: str | None = None,
                 log: Callable[[str], None] = print, model_cfg: dict[str, Any] | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = pick_device(device)
        self.log = log
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        if base and is_checkpoint_dir(base):
            self.model, self.model_cfg, self.preprocess = load_checkpoint_dir(base, self.device)
        elif base:
            raise ValueError(f"--base {base}: fine-tuning from a hub tag needs its checkpoint saved locally first; "
                             f"give a Vitrine CLIP checkpoint directory.")
        else:
            self.model_cfg = model_cfg or default_model_cfg(config.image_size, config.vision, config.embed_dim)
            self.model = build_model(self.model_cfg, pretrained_text=True).to(self.device)
            self.preprocess = {"image_size": config.image_size, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                               "resize_mode": "shortest"}
        self.tokenizer = make_tokenizer(self.model_cfg)
        text = getattr(self.model, "text", None)
        self.hf_text = text is not None and hasattr(text, "transformer") and hasattr(text, "pooler")
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
        pooled = []
        with torch.no_grad():
            for s in range(0, len(tokens), 256):
                x = tokens[s:s + 256].to(self.device)
                mask = (x != self.model.text.config.pad_token_id).long()
                width = int(mask.sum(1).max())  # drop all-padding columns: same outputs, less work
                x, mask = x[:, :width], mask[:, :width]
                out = self.model.text.transformer(input_ids=x, attention_mask=mask)
                pooled.append(self.model.text.pooler(out, mask).cpu())
        return torch.cat(pooled)  # (N, H)

    def _encode_text(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dtype == torch.long:
            return self.model.encode_text(inputs.to(self.device))
        return self.model.text.proj(inputs.to(self.device))

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.hflip:
            flip = torch.rand(len(x)) < 0.5
            x = x.clone()
            x[flip] = x[flip].flip(-1)
        return x

    @torch.no_grad()
    def _step(self, opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor) -> float:
        """One optimiser step; the temperature stays within CLIP's bound (logit scale <= 100)."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return loss.item()

    def evaluate(self, pixels: torch.Tensor, text_inputs: torch.Tensor) -> dict[str, float]:
        self.model.eval()
        img = torch.cat([F.normalize(self.model.encode_image(normalize_pixels(pixels[s:s + 256]).to(self.device)), dim=-1)
                         for s in range(0, len(pixels), 256)])
        txt = torch.cat([F.normalize(self._encode_text(text_inputs[s:s + 256]), dim=-1) for s in range(0, len(text_inputs), 256)])
        return {**retrieval_recall(img.cpu(), txt.cpu(), 10), **retrieval_recall(img.cpu(), txt.cpu(), 1)}

    def fit(self, pairs: Pairs, resume: bool = False, progress: bool = True) -> dict[str, Any]:
        cfg = self.config
        t_start = time.perf_counter()
        n = len(pairs.ids)
        if n < 4:
            raise ValueError(f"need at least 4 (image, text) pairs to train, got {n}.")
        order = np.random.default_rng(cfg.seed).permutation(n)
        if cfg.max_pairs:
            order = order[:cfg.max_pairs]
        holdout = min(cfg.holdout, max(2, len(order) // 10))
        val_idx, train_idx = order[:holdout], order[holdout:]
        self.log(f"pairs: {len(train_idx)} train, {len(val_idx)} held out; caching text tower outputs ...")
        used = np.sort(order)
        cached = self._text_inputs([pairs.texts[i] for i in used])
        text_all = cached.new_zeros((n, *cached.shape[1:]))
        text_all[torch.from_numpy(used)] = cached
        val_pix, val_txt = pairs.pixels[val_idx], text_all[val_idx]
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)
        total = steps_per_epoch * cfg.epochs

        sched = warmup_cosine(opt, cfg.warmup_steps, total)
        state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "curve": [], "bad_epochs": 0}
        ckpt_path = self.out_dir / "checkpoint.pt"
        if resume and ckpt_path.is_file():
            ckpt = torch.load(ckpt_path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
            state = ckpt["state"]
            torch.set_rng_state(ckpt["rng"])
            self.log(f"resumed from {ckpt_path} after epoch {state['epoch']}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        best_dir = self.out_dir / ".best"
        rng = np.random.default_rng(cfg.seed + state["epoch"])
        for epoch in range(state["epoch"], cfg.epochs):
            self.model.train()
            perm = rng.permutation(train_idx)
            losses = []
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, mininterval=2.0)
            for step in bar:
                idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                img = F.normalize(self.model.encode_image(normalize_pixels(self._augment(pairs.pixels[idx])).to(self.device)), dim=-1)  # (B, D)
                txt = F.normalize(self._encode_text(text_all[idx]), dim=-1)  # (B, D)
                loss = info_nce(img, txt, self.model.logit_scale.exp())
                losses.append(self._step(opt, sched, loss))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", T=f"{1 / self.model.logit_scale.exp().item():.3f}")
            metrics = self.evaluate(val_pix, val_txt)
            state["curve"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **metrics,
                                   "elapsed_s": round(time.perf_counter() - t_start, 1)})
            self.log(f"epoch {epoch + 1}: loss {np.mean(losses):.3f}, held-out mean R@10 {metrics['mean_r@10']:.3f}")
            state["epoch"] = epoch + 1
            # R@10 saturates on small held-out sets; adding R@1 keeps the selection sensitive.
            score = metrics["mean_r@10"] + metrics["mean_r@1"]
            if score > state["best"]:
                state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
                save_checkpoint_dir(self.model, self.model_cfg, self.preprocess, best_dir)
            else:
                state["bad_epochs"] += 1
            torch.save({"model": self.model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "state": state, "rng": torch.get_rng_state()}, ckpt_path.with_suffix(".tmp"))
            ckpt_path.with_suffix(".tmp").replace(ckpt_path)
            if state["bad_epochs"] >= cfg.patience:
                self.log(f"early stop: no held-out gain for {cfg.patience} epochs")
                break
        return self._finish(best_dir, state, pairs, len(train_idx), len(val_idx), time.perf_counter() - t_start)

    def _finish(self, best_dir: Path, state: dict, pairs: Pairs, n_train: int, n_val: int, seconds: float) -> dict:
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
                    "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "seconds": round(seconds, 1),
                    "curve": state["curve"], "device": self.device, "broken_images": pairs.broken[:100]}
        (self.out_dir / "training.json").write_text(json.dumps(training, indent=2))
        (self.out_dir / "metrics.json").write_text(json.dumps({"heldout": best}, indent=2))
        (self.out_dir / "data_fingerprint.txt").write_text(fingerprint(pairs) + "\n")
        return training


def info_nce(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch negatives; img and txt are (B, D) unit vectors."""
    logits = scale * img @ txt.T  # (B, B)
    target = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

"""The CLIP model a run trains, and its surgery: a Vitrine checkpoint, an open_clip hub model or the recipe's towers;
which weights freeze; an EfficientNet trunk cut into a cached frozen prefix and a trainable tail; and the inputs
the trainable layers see (ClipTowers, which the trainers build on)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitrine.encoders.base import pick_device
from vitrine.encoders.clip import build_model, is_checkpoint_dir, load_checkpoint_dir, make_tokenizer
from vitrine.encoders.towers import OPENAI_MEAN, OPENAI_STD, TowerPreset, load_pretrained_trunk, tower_preset
from vitrine.trainer.clip_data import ClipTrainConfig, default_model_cfg, normalize_pixels

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


def load_towers(config: ClipTrainConfig, base: str | None, model_cfg: dict[str, Any] | None, device: str,
                tower: str) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """(model, model_cfg, preprocess) on `device`: the checkpoint directory `base`, else the hub model `config.vision`
    names, else the recipe's towers (or `model_cfg`'s) with the preset's pretrained trunk; `tower` is recorded in
    preprocess."""
    if base and is_checkpoint_dir(base):
        return load_checkpoint_dir(base, device)
    if base:
        raise ValueError(f"--base {base}: fine-tuning from a hub tag needs its checkpoint saved locally first; "
                         f"give a Vitrine CLIP checkpoint directory.")
    if model_cfg is None and config.vision.startswith(HUB_PREFIX):
        return hub_model(config.vision, device)
    preset = tower_preset(config.vision) if model_cfg is None else TowerPreset("custom")
    model_cfg = model_cfg or default_model_cfg(config.image_size, config.vision, config.embed_dim)
    model = build_model(model_cfg, pretrained_text=True)
    if preset.pretrained:
        load_pretrained_trunk(model.visual.trunk, preset)
    model = model.to(device)
    preprocess = {"image_size": config.image_size, "mean": list(preset.mean), "std": list(preset.std),
                  "resize_mode": "shortest", "tower": tower}
    return model, model_cfg, preprocess


def freeze_towers(model: torch.nn.Module, config: ClipTrainConfig) -> None:
    """Stops gradients to what the recipe keeps fixed: the text transformer (or the whole text tower), the image tower."""
    if config.freeze_text in ("transformer", "all"):
        for name, p in model.named_parameters():
            if name.startswith("visual.") or name.startswith("logit_"):
                continue  # not the text tower
            is_projection = name.startswith("text.proj") or name == "text_projection"
            if config.freeze_text == "all" or not is_projection:
                p.requires_grad_(False)
    if config.freeze_image:
        for p in model.visual.parameters():
            p.requires_grad_(False)


def split_tower(model: torch.nn.Module, config: ClipTrainConfig) -> TowerSplit | None:
    """The image trunk cut at `train_blocks` when the recipe trains only its last stages and the trunk allows it."""
    trunk = getattr(model.visual, "trunk", None)
    if config.train_blocks >= 0 and not config.freeze_image and trunk is not None and TowerSplit.supports(trunk):
        return TowerSplit(trunk, min(config.train_blocks, len(trunk.blocks)))
    return None


class ClipTowers:
    """The model a run trains, cut and frozen as the recipe says, and what its trainable layers see: text and image
    inputs computed once (the frozen parts' outputs where there are any), then encoded batch by batch."""

    def __init__(self, config: ClipTrainConfig, base: str | None = None, device: str | None = None,
                 model_cfg: dict[str, Any] | None = None) -> None:
        self.config = config
        self.device = pick_device(device)
        self.tower = "checkpoint" if base else "custom" if model_cfg else config.vision
        self.base = base
        self.model, self.model_cfg, self.preprocess = load_towers(config, base, model_cfg, self.device, self.tower)
        self.tokenizer = make_tokenizer(self.model_cfg)
        text = getattr(self.model, "text", None)
        self.hf_text = text is not None and hasattr(text, "transformer") and hasattr(text, "pooler")
        self.split = split_tower(self.model, config)
        freeze_towers(self.model, config)

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
    def _embed_images(self, views: list[torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        return torch.cat([F.normalize(self._encode_image(views[0][idx[s:s + 256]]), dim=-1).cpu()
                          for s in range(0, len(idx), 256)])

    @torch.no_grad()
    def _embed_texts(self, text_inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(self._encode_text(text_inputs[s:s + 256]), dim=-1).cpu()
                          for s in range(0, len(text_inputs), 256)])

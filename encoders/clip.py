"""CLIP text and image encoding on open_clip: pretrained tags (where a hub is reachable) or Vitrine checkpoint dirs.

A checkpoint directory written by `vitrine train clip` is self-contained:
    open_clip_config.json   {"model_cfg": open_clip model config, "preprocess": {...}, "arch": name}
    model.safetensors       the whole model's weights
    text_tower/             the HF text tower's config and tokenizer (when the text tower is a HF model)
    attribute_heads.safetensors, attributes.json  (optional) linear heads predicting catalog attributes from the
                            image embedding, and their value lists
    training.json, metrics.json, data_fingerprint.txt  (written by the trainer)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrine.encoders.base import l2_normalize, pick_device
from vitrine.encoders.config import Backend, as_backend

if TYPE_CHECKING:
    import torch
    from PIL import Image

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_TOWER_DIR = "text_tower"
HEADS_FILE = "attribute_heads.safetensors"
HEADS_META = "attributes.json"
HEAD_SCALE = 10.0  # heads read the unit embedding times this, so their logits can be sharp without large weights
_TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def is_checkpoint_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def build_model(model_cfg: dict[str, Any], pretrained_text: bool = True) -> torch.nn.Module:
    """Builds an untrained open_clip model from a config dict (CustomTextCLIP when the text tower is a HF model)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    cfg = json.loads(json.dumps(model_cfg))
    text_cfg = CLIPTextCfg(**cfg["text_cfg"])
    if text_cfg.hf_model_name:
        text_cfg.hf_model_pretrained = pretrained_text
        return CustomTextCLIP(embed_dim=cfg["embed_dim"], vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]), text_cfg=text_cfg)
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]), text_cfg=text_cfg)


def make_tokenizer(model_cfg: dict[str, Any]):
    import open_clip

    text_cfg = model_cfg["text_cfg"]
    context_length = text_cfg.get("context_length", 77)
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def make_transform(preprocess: dict[str, Any], is_train: bool = False):
    import open_clip

    return open_clip.image_transform(preprocess["image_size"], is_train=is_train, mean=tuple(preprocess["mean"]),
                                     std=tuple(preprocess["std"]), resize_mode=preprocess.get("resize_mode", "shortest"))


def save_checkpoint_dir(model: torch.nn.Module, model_cfg: dict[str, Any], preprocess: dict[str, Any], out: Path,
                        arch: str = "vitrine-clip") -> None:
    """Writes weights, the open_clip config and the text tower's tokenizer so loading needs no other input."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(model_cfg))
    hf_name = cfg["text_cfg"].get("hf_model_name")
    if hf_name:
        src = Path(hf_name)
        dst = out / TEXT_TOWER_DIR
        if src.resolve() != dst.resolve():
            dst.mkdir(exist_ok=True)
            for name in _TOKENIZER_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, dst / name)
        cfg["text_cfg"]["hf_model_name"] = TEXT_TOWER_DIR
        cfg["text_cfg"]["hf_tokenizer_name"] = TEXT_TOWER_DIR
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps({"arch": arch, "model_cfg": cfg, "preprocess": preprocess}, indent=2))


def save_attribute_heads(out: Path, heads: torch.nn.ModuleDict, vocab: dict[str, list[str]], scale: float) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}, str(out / HEADS_FILE))
    (out / HEADS_META).write_text(json.dumps({"scale": scale, "fields": vocab}, indent=2))


def copy_attribute_heads(src: str | Path | None, dst: Path) -> None:
    """A model fine-tuned from src keeps src's attribute heads (its embedding moves little)."""
    if src and (Path(src) / HEADS_FILE).is_file():
        for name in (HEADS_FILE, HEADS_META):
            shutil.copy2(Path(src) / name, dst / name)


class AttributeHeads:
    """Linear heads over unit image embeddings: per field, softmax over the attribute values the trainer taught."""

    def __init__(self, path: str | Path) -> None:
        from safetensors.numpy import load_file

        meta = json.loads((Path(path) / HEADS_META).read_text())
        weights = load_file(str(Path(path) / HEADS_FILE))
        self.scale = float(meta["scale"])
        self.fields: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {
            f: (values, weights[f"{f}.weight"], weights[f"{f}.bias"]) for f, values in meta["fields"].items()}

    def predict(self, xq: np.ndarray) -> list[dict[str, tuple[str, float]]]:
        """Per row of xq (N, D), field -> (most likely value, its probability)."""
        out: list[dict[str, tuple[str, float]]] = [{} for _ in range(len(xq))]
        for f, (values, W, b) in self.fields.items():
            logits = self.scale * xq @ W.T + b  # (N, V)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            for row, j in enumerate(p.argmax(1)):
                out[row][f] = (values[j], float(p[row, j]))
        return out


def load_checkpoint_dir(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict, dict]:
    """Returns (model in eval mode, model_cfg with absolute paths, preprocess) from a Vitrine checkpoint dir."""
    from safetensors.torch import load_file

    path = Path(path).resolve()
    meta = json.loads((path / CONFIG_FILE).read_text())
    cfg = meta["model_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if cfg["text_cfg"].get(key) == TEXT_TOWER_DIR:
            cfg["text_cfg"][key] = str(path / TEXT_TOWER_DIR)
    model = build_model(cfg, pretrained_text=False)
    missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing {real_missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval(), cfg, meta["preprocess"]


class ClipEncoder:
    """Text and image encoding into one space: batched, L2-normalised float32, CUDA + fp16 autocast when present."""

    def __init__(self, name_or_dir: str, pretrained: str | None = None, device: str | None = None,
                 variants: str | Path | None = None, backend: Backend | str = Backend.TORCH, threads: int = 1) -> None:
        """`variants` (a directory written by `export_clip_onnx`) with `backend` "onnx" or "onnx-int8" runs both
        towers with ONNX Runtime; the torch model still supplies the tokenizer, preprocessing and attribute heads."""
        import torch

        self.device = pick_device(device)
        self.name = name_or_dir
        self.pretrained = pretrained   # with the name, what a Ray worker needs to build the same model
        if is_checkpoint_dir(name_or_dir):
            self.model, cfg, preprocess = load_checkpoint_dir(name_or_dir, self.device)
            self.tokenizer = make_tokenizer(cfg)
            self.preprocess = make_transform(preprocess)
            self.image_size = preprocess["image_size"]
            self.attribute_heads = AttributeHeads(name_or_dir) if (Path(name_or_dir) / HEADS_FILE).is_file() else None
            meta_path = Path(name_or_dir) / "training.json"
            self.version = json.loads(meta_path.read_text()).get("version", "") if meta_path.is_file() else ""
        else:
            import open_clip

            if Path(name_or_dir).exists():
                raise ValueError(f"{name_or_dir} is not a Vitrine CLIP checkpoint directory (no {CONFIG_FILE}).")
            # A hub tag, e.g. ViT-B-32 with pretrained="laion2b_s34b_b79k"; needs network on first use.
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(name_or_dir, pretrained=pretrained, device=self.device)
            self.model.eval()
            self.attribute_heads = None
            self.tokenizer = open_clip.get_tokenizer(name_or_dir)
            self.image_size = self.model.visual.image_size
            self.version = f"{name_or_dir}:{pretrained or 'random'}"
        with torch.no_grad():
            self.dim = int(self.model.encode_text(self.tokenizer(["probe"]).to(self.device)).shape[-1])
        self._channels_last = hasattr(getattr(self.model, "visual", None), "trunk")  # a timm CNN tower
        if self._channels_last:
            self.model.visual.to(memory_format=torch.channels_last)
        self.backend = backend = as_backend(backend)
        self._text_session = self._image_session = None
        self._text_trims = False
        if backend != Backend.TORCH:
            from vitrine.encoders import onnx

            record = onnx.read_record(variants) if variants else {}
            if backend not in record.get("variants", {}):
                raise ValueError(f"{variants} has no {str(backend)!r} CLIP variant; have: {', '.join(record.get('variants', {})) or 'none'}.")
            files = record["variants"][backend]["files"]
            self._text_session = onnx.session(Path(variants) / files["text"], threads)
            self._text_trims = bool(record.get("text_dynamic_length"))
            self.model = None  # both towers run on ONNX Runtime: the torch weights leave memory
            self._image_session = onnx.session(Path(variants) / files["image"], threads)

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def encode_texts(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad(), self._autocast():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start:start + batch_size]))
                if self._text_session is not None:
                    out.append(self._text_session.run(None, {"tokens": self._trim(tokens.numpy()).astype(np.int64)})[0])
                    continue
                out.append(self.model.encode_text(tokens.to(self.device)).float().cpu().numpy())  # (B, D)
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def _trim(self, tokens: np.ndarray) -> np.ndarray:
        """Drops the padding columns every row has (B, context_length) -> (B, longest): a HF text tower masks its pads
        and mean-pools over the mask, so the embedding is the same and a 4-token query costs 4 tokens, not 32."""
        pad = getattr(getattr(self.tokenizer, "tokenizer", None), "pad_token_id", None)
        if pad is None or not self._text_trims:
            return tokens
        used = (tokens != pad).any(axis=0).nonzero()[0]
        return tokens[:, : int(used[-1]) + 1] if len(used) else tokens[:, :1]

    def preprocess_images(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        return torch.stack([self.preprocess(img) for img in images])  # (B, 3, H, W)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        if self._image_session is not None:
            return l2_normalize(self._image_session.run(None, {"pixels": pixels.numpy().astype(np.float32)})[0])
        # Convolutional towers run markedly faster on CPU with channels-last activations (same outputs).
        pixels = pixels.to(self.device, memory_format=torch.channels_last) if self._channels_last else pixels.to(self.device)
        with torch.inference_mode(), self._autocast():
            return l2_normalize(self.model.encode_image(pixels).float().cpu().numpy())  # (B, D)

    def encode_images(self, images: list[Image.Image], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        out = [self.encode_pixels(self.preprocess_images(images[s:s + batch_size])) for s in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def export_clip_onnx(encoder: ClipEncoder, out_dir: str | Path) -> dict:
    """Writes both towers of `encoder` as ONNX to `out_dir`: the text tower in fp32 and int8 (dynamic quantisation of
    its matrix products), the image tower in fp32 (int8 convolutions run slower than fp32 on ONNX Runtime's CPU
    kernels), and a variants record naming the files of each variant ("onnx", "onnx-int8")."""
    import torch
    from open_clip.hf_model import HFTextEncoder

    from vitrine.encoders import onnx

    model = encoder.model.float().cpu()
    model.visual.to(memory_format=torch.contiguous_format)

    class Tower(torch.nn.Module):
        """One of the model's encode methods as a module, so torch.onnx can trace it."""

        def __init__(self, method: str) -> None:
            super().__init__()
            self.m, self.method = model, method

        def forward(self, x):  # noqa: ANN001, ANN201
            return getattr(self.m, self.method)(x)

    out_dir = Path(out_dir)
    # A HF text tower masks its padding (its poolers use the mask too), so it is exported with a dynamic sequence
    # length and serving drops the padding columns; open_clip's own text transformer keeps its fixed length.
    dynamic = isinstance(getattr(model, "text", None), HFTextEncoder)
    text = onnx.export(Tower("encode_text"), {"tokens": encoder.tokenizer(["a red shirt", "shoes"]).cpu()}, out_dir / "text", "embedding",
                       dynamic_sequence=dynamic)
    size = encoder.image_size if isinstance(encoder.image_size, int) else encoder.image_size[0]
    image = onnx.export(Tower("encode_image"), {"pixels": torch.zeros(2, 3, size, size)}, out_dir / "image", "embedding",
                        dynamic_sequence=False, quantize=False)
    if encoder._channels_last:
        model.visual.to(memory_format=torch.channels_last)
    model.to(encoder.device)
    files = {"onnx": {"text": f"text/{text['onnx']['file']}", "image": f"image/{image['onnx']['file']}"},
             "onnx-int8": {"text": f"text/{text['onnx-int8']['file']}", "image": f"image/{image['onnx']['file']}"}}
    variants = {name: {"files": f, "bytes": sum((out_dir / p).stat().st_size for p in f.values())} for name, f in files.items()}
    return onnx.write_record(out_dir, {"kind": "clip", "source": encoder.version or encoder.name, "name": encoder.name,
                                       "dim": encoder.dim, "text_dynamic_length": dynamic, "variants": variants})

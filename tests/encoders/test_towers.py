"""Image tower presets: the package's EfficientNet-Lite weights map onto timm's tower and give the same outputs."""
from __future__ import annotations

import pytest
import torch

from vitrine.encoders.towers import TOWERS, map_package_weights, package_model, tower_preset

pytest.importorskip("efficientnet_lite_pytorch")


def test_package_weights_map_onto_the_timm_tower_exactly():
    import timm

    torch.manual_seed(0)
    preset = TOWERS["efficientnet-lite0"]
    source = package_model(preset, random_init=True).eval()  # same architecture; no weight file needed
    target = timm.create_model(preset.timm_name, pretrained=False).eval()
    target.load_state_dict(map_package_weights(source.state_dict(), target.state_dict()))
    x = torch.randn(2, 3, preset.native_size, preset.native_size)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=1e-4, atol=1e-4)


def test_a_different_network_is_refused():
    import timm

    source = package_model(TOWERS["efficientnet-lite0"], random_init=True).state_dict()
    target = timm.create_model("resnet10t", pretrained=False).state_dict()
    with pytest.raises(ValueError, match="not the same network|does not fit"):
        map_package_weights(source, target)


def test_unknown_names_are_timm_towers_from_scratch():
    preset = tower_preset("resnet18")
    assert preset.timm_name == "resnet18" and not preset.pretrained
    assert TOWERS["efficientnet-lite0"].pretrained and TOWERS["efficientnet-lite0"].mean == (0.5, 0.5, 0.5)

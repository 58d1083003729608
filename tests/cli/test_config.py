from __future__ import annotations

import pytest

from vitrine.serving.config import VitrineConfig, load_config


def test_example_config_documents_the_defaults():
    """vitrine.example.toml must stay true: it parses and equals the built-in defaults."""
    assert load_config("vitrine.example.toml") == VitrineConfig()


@pytest.mark.parametrize("text,match", [
    ("[nope]\n", "Unknown section"),
    ("[index]\nnprobe = -1\n", "index.nprobe"),
    ("[encoders]\ndevice = 'tpu'\n", "encoders.device"),
    ("[server]\nmax_workers = 0\n", "server.max_workers"),
    ("[bm25]\nboosts = { price = 2.0 }\n", "bm25.boosts.price"),
    ("not toml = = =", "not valid TOML"),
])
def test_bad_config_names_field(tmp_path, text, match):
    p = tmp_path / "v.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(p)

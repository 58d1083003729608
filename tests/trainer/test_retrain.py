"""`vitrine retrain` end to end on the toy shop: train from clicks, gate, index beside, re-point, hot-swap a server."""
from __future__ import annotations

import json
import os
from pathlib import Path

from vitrine.cli.main import main
from vitrine.indexer.bundle import Bundle
from vitrine.ranking.pipeline import Searcher
from vitrine.serving.assemble import Served
from vitrine.server.app import create_server, single
from vitrine.server.client import VitrineClient


def _config(path, **gate) -> str:
    path.write_text("[gate]\n" + "".join(f"{k} = {v}\n" for k, v in gate.items()))
    return str(path)


def _bundle(toy_shop, base_clip, tmp_path):
    out = tmp_path / "bundles" / "shop@v0"
    assert main(["index", "--catalog", str(toy_shop["catalog"]), "--out", str(out), "--clip-model", str(base_clip),
                 "--no-text-vectors", "--quiet"]) == 0
    current = tmp_path / "bundles" / "current"
    os.symlink("shop@v0", current)
    return current


def test_retrain_promotes_indexes_beside_repoints_and_switches_a_running_server(toy_shop, base_clip, click_logs, tmp_path, capsys):
    current = _bundle(toy_shop, base_clip, tmp_path)
    from vitrine.encoders.clip import ClipEncoder
    from vitrine.ranking.pipeline import SearchConfig

    def loader(path, _r, _l):
        b = Bundle(path)
        return Served(Searcher(b, None, SearchConfig(), clip_encoder=ClipEncoder(b.manifest.models["clip"].name,
                                                                                 device="cpu")))

    served = create_server(single(loader(str(current.resolve()), None, None), loader=loader), "127.0.0.1:0")
    server, port = served.server, served.port
    try:
        before = VitrineClient(f"127.0.0.1:{port}").search("crimson box").bundle_version
        rc = main(["retrain", "--clicks", str(click_logs["train"]), "--bundle", str(current), "--target", f"127.0.0.1:{port}",
                   "--epochs", "6", "--lr", "3e-3", "--freeze-text", "none", "--heldout-fraction", "0.25", "--no-mlflow",
                   "--train-arg=--holdout-fraction=0", "--train-arg=--general-holdout=0",
                   "--config", _config(tmp_path / "v.toml", min_gain=0.05, max_general_drop=0.5)])
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 0, report
        assert [s["step"] for s in report["steps"]] == ["train", "gate", "index"] and report["ok"]
        assert report["promoted"]["version"] == "v0001"
        assert current.resolve().name == os.path.basename(report["new_bundle"])          # pointer re-pointed
        assert (tmp_path / "bundles" / "shop@v0" / "manifest.json").is_file()           # old bundle untouched
        after = VitrineClient(f"127.0.0.1:{port}").search("crimson box")
        assert after.bundle_version == report["reload"]["bundle_version"] != before
        assert after.model_versions["clip"] != ""
    finally:
        server.stop(0)


def test_retrain_stops_at_a_rejecting_gate_and_changes_nothing(toy_shop, base_clip, click_logs, tmp_path, capsys):
    current = _bundle(toy_shop, base_clip, tmp_path)
    rc = main(["retrain", "--clicks", str(click_logs["train"]), "--bundle", str(current), "--epochs", "1",
               "--heldout-fraction", "0.25", "--no-mlflow", "--config", _config(tmp_path / "v.toml", min_gain=0.9)])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 1 and not report["ok"] and "gate rejected" in report["stopped"]
    assert [s["step"] for s in report["steps"]] == ["train", "gate"]
    assert current.resolve().name == "shop@v0" and "new_bundle" not in report


def test_retrain_of_one_tenant_promotes_and_switches_that_tenant_only(toy_shop, base_clip, click_logs, tmp_path, capsys):
    """`vitrine retrain --tenant a --tenants DIR`: a's clicks, registry and pointer; b's directory and served bundle
    stay exactly as they were."""
    from vitrine.encoders.clip import ClipEncoder
    from vitrine.ranking.pipeline import SearchConfig
    from vitrine.server.admin import Reloader
    from vitrine.server.state import ServingState
    from vitrine.server.tenants import Tenant, Tenants

    root = tmp_path / "tenants"
    for name in ("a", "b"):
        assert main(["index", "--catalog", str(toy_shop["catalog"]), "--out", str(root / name / "bundle"), "--clip-model",
                     str(base_clip), "--no-text-vectors", "--quiet"]) == 0
    (root / "a" / "tenant.toml").write_text("read_only = true\n")
    (root / "a" / "logs").mkdir()
    os.symlink(click_logs["train"], root / "a" / "logs" / "clicks.jsonl")   # relative query images resolve beside the log

    def loader(path, _r, _l):
        b = Bundle(path)
        return Served(Searcher(b, None, SearchConfig(), clip_encoder=ClipEncoder(b.manifest.models["clip"].name,
                                                                                 device="cpu")))

    tenants = []
    for name in ("a", "b"):
        tenant = Tenant(name, ServingState(loader(str(root / name / "bundle"), None, None)))
        tenant.reloader = Reloader(tenant.state, loader)
        tenants.append(tenant)
    served = create_server(Tenants(tenants), "127.0.0.1:0")
    before_b = sorted((p.relative_to(root / "b"), p.stat().st_mtime_ns) for p in (root / "b").rglob("*"))
    try:
        versions = {n: VitrineClient(f"127.0.0.1:{served.port}", tenant=n).search("crimson box").bundle_version for n in "ab"}
        rc = main(["retrain", "--tenant", "a", "--tenants", str(root), "--target", f"127.0.0.1:{served.port}",
                   "--epochs", "6", "--lr", "3e-3", "--freeze-text", "none", "--heldout-fraction", "0.25", "--no-mlflow",
                   "--train-arg=--holdout-fraction=0", "--train-arg=--general-holdout=0",
                   "--config", _config(tmp_path / "v.toml", min_gain=0.05, max_general_drop=0.5)])
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 0 and report["ok"], report
        assert (root / "a" / "registry" / "v0001").is_dir() and (root / "a" / "current").resolve() == Path(report["new_bundle"])
        after = {n: VitrineClient(f"127.0.0.1:{served.port}", tenant=n).search("crimson box").bundle_version for n in "ab"}
        assert after["a"] != versions["a"] and after["b"] == versions["b"]
        assert sorted((p.relative_to(root / "b"), p.stat().st_mtime_ns) for p in (root / "b").rglob("*")) == before_b
    finally:
        served.stop(0)

"""The deployment helpers in deploy/: the bundle sync the Kubernetes pods run, the container health check, and the
requirements list the image build installs first."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from grpc_health.v1 import health_pb2

from vitrine.server.app import create_server, single

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_bundle(root: Path, name: str) -> Path:
    (root / name / "bm25").mkdir(parents=True)
    (root / name / "manifest.json").write_text(json.dumps({"bundle_version": name}))
    (root / name / "bm25" / "meta.json").write_text("{}")
    return root / name


def point(link: Path, target: str) -> None:
    tmp = link.with_name(".current.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def sync(src: Path, dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(DEPLOY / "sync-bundles.sh"), str(src), str(dst)], check=False, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_sync_bundles_copies_the_current_bundle_and_keeps_the_one_before(tmp_path):
    src, dst = tmp_path / "shared", tmp_path / "local"
    for name in ("v1", "v2", "v3"):
        fake_bundle(src, name)
    point(src / "current", "v1")  # relative, as `vitrine retrain` writes it
    assert sync(src, dst).returncode == 0
    assert os.readlink(dst / "current") == "v1"
    assert json.loads((dst / "current" / "manifest.json").read_text())["bundle_version"] == "v1"
    assert not (dst / "v1").is_symlink()  # a copy on local disk, not a link into the shared volume

    point(src / "current", "v2")
    assert sync(src, dst).returncode == 0
    assert os.readlink(dst / "current") == "v2" and (dst / "v1").is_dir()  # the previous one stays for the swap

    point(src / "current", "v3")
    assert sync(src, dst).returncode == 0
    assert os.readlink(dst / "current") == "v3"
    assert sorted(p.name for p in dst.iterdir()) == ["current", "v2", "v3"]

    (src / "broken").mkdir()
    point(src / "current", "broken")
    out = sync(src, dst)
    assert out.returncode != 0 and "not a Vitrine bundle" in out.stderr
    assert os.readlink(dst / "current") == "v3"  # a bad publish never replaces what is served


def test_healthcheck_follows_the_servers_health(capsys):
    healthcheck = load("healthcheck")
    served = create_server(single(None), "127.0.0.1:0")  # no bundle yet: NOT_SERVING, as while one loads
    target = f"127.0.0.1:{served.port}"
    try:
        assert healthcheck.main([target]) == 1
        assert "NOT_SERVING" in capsys.readouterr().err
        served.set_health(health_pb2.HealthCheckResponse.SERVING)
        assert healthcheck.main([target]) == 0
    finally:
        served.stop(0)
    assert healthcheck.main([target]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_requirements_expand_extras_that_name_the_project():
    requirements = load("requirements")
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    server = requirements.requirements(project, ["server"])
    train = requirements.requirements(project, ["train"])
    assert server[:len(project["dependencies"])] == project["dependencies"]
    assert any(r.startswith("torch==") for r in server) and not any(r.startswith("peft") for r in server)
    assert set(server) < set(train) and any(r.startswith("peft") for r in train)  # train names vitrine-search[server]
    assert not any(r.startswith("vitrine-search") for r in train)
    with pytest.raises(ValueError, match="extra 'nope' is not in pyproject.toml"):
        requirements.requirements(project, ["nope"])


def test_the_image_copies_every_package_the_distribution_installs():
    """`pip install .` in the Dockerfile needs every folder pyproject.toml maps to a package (serving/ was once left
    out, and the image would not build)."""
    root = Path(__file__).resolve().parents[1]
    folders = {d.split("/")[0] for d in tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()}
    copied = {line.split()[1] for line in (root / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")
              and "--from" not in line}
    assert folders <= copied, f"not copied into the image: {sorted(folders - copied)}"

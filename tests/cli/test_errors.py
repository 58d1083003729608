"""Every failure a user can cause at the command line is one line on stderr naming the cause and the fix, exit 2,
never a traceback; and nothing a user gave is dropped without a word (unknown catalog fields)."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vitrine.cli import index as index_cmd
from vitrine.cli.upsert import read_upserts
from vitrine.cli.main import main, missing_extra, os_error
from vitrine.cli.serve import bind_server
from vitrine.indexer.lock import BundleLocked

NOWHERE = "127.0.0.1:1"   # nothing listens: a command that got as far as sending would fail with UNAVAILABLE, exit 1


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def vitrine(*args: str, prelude: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`vitrine ARGS` in a fresh interpreter; `prelude` runs first (e.g. to hide a module, as a client install lacks it)."""
    code = f"import sys\n{prelude}\nfrom vitrine.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ----- catalogs: unknown fields, --strict, unreadable files ---------------------------------------------------------

def test_unknown_fields_are_counted_in_one_warning_each_and_strict_refuses_them(tmp_path, capsys):
    catalog = write_lines(tmp_path / "c.jsonl", [{"id": "a", "title": "Red shirt", "colour": "Red", "brand": "Acme"},
                                                 {"id": "b", "title": "Blue bag", "colour": "Blue"},
                                                 {"id": "c", "title": "Green shoe", "attributes": {"color": "Green"}}])
    assert main(["index", "--catalog", str(catalog), "--out", str(tmp_path / "b"), "--no-text-vectors", "--quiet"]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        'warning: 2 items have the unknown field "colour" (ignored; put shop fields under "attributes"; first on line 1)',
        'warning: 1 item has the unknown field "brand" (ignored; put shop fields under "attributes"; first on line 1)']
    assert json.loads(out.strip().splitlines()[-1])["items"] == 3

    assert main(["index", "--catalog", str(catalog), "--out", str(tmp_path / "b2"), "--no-text-vectors", "--strict"]) == 2
    line = one_line(capsys.readouterr().err)
    assert '"colour" (2 items, first on line 1)' in line and '"brand"' in line and "attributes" in line
    assert not (tmp_path / "b2").exists()


def test_a_catalog_that_is_a_directory_unreadable_or_not_utf8_is_one_line(tmp_path, capsys):
    assert main(["index", "--catalog", str(tmp_path), "--out", str(tmp_path / "b"), "--no-text-vectors"]) == 2
    assert "is a directory; give the catalog file" in one_line(capsys.readouterr().err)

    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"id": "a", "title": "ok"}\n{"id": "b", "title": "caf\xe9"}\n')
    assert main(["index", "--catalog", str(latin1), "--out", str(tmp_path / "b"), "--no-text-vectors"]) == 2
    assert "line 2: not UTF-8 text (byte 0xe9 at column 26); save the file as UTF-8" in one_line(capsys.readouterr().err)

    csv = tmp_path / "export.csv"
    csv.write_bytes(b"id,title\na,ok\nb,caf\xe9\n")
    assert main(["index", "--catalog", str(csv), "--out", str(tmp_path / "b"), "--no-text-vectors"]) == 2
    assert "line 3: column 'title' is not UTF-8 text; save the file as UTF-8" in one_line(capsys.readouterr().err)

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id": "a", "title": "ok"}\n')   # a BOM, as some editors write one, is fine
    assert main(["index", "--catalog", str(bom), "--out", str(tmp_path / "b"), "--no-text-vectors", "--quiet"]) == 0
    capsys.readouterr()


def test_a_config_that_is_not_utf8_or_a_directory_is_one_line(tmp_path, capsys):
    catalog = write_lines(tmp_path / "c.jsonl", [{"id": "a", "title": "ok"}])
    cfg = tmp_path / "vitrine.toml"
    cfg.write_bytes(b"[logs]\nclick_log = 'caf\xe9.jsonl'\n")
    assert main(["index", "--catalog", str(catalog), "--out", str(tmp_path / "b"), "--config", str(cfg)]) == 2
    assert f"config file {cfg} is not UTF-8 text (byte 0xe9" in one_line(capsys.readouterr().err)
    assert main(["index", "--catalog", str(catalog), "--out", str(tmp_path / "b"), "--config", str(tmp_path)]) == 2
    assert "is a directory" in one_line(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_catalog_is_one_line(tmp_path, capsys):
    catalog = write_lines(tmp_path / "c.jsonl", [{"id": "a", "title": "ok"}])
    catalog.chmod(0)
    assert main(["index", "--catalog", str(catalog), "--out", str(tmp_path / "b"), "--no-text-vectors"]) == 2
    assert "permission denied" in one_line(capsys.readouterr().err)


def test_os_errors_name_the_file_and_the_fix(monkeypatch, tmp_path, capsys):
    path = str(tmp_path / "c.jsonl")
    assert os_error(PermissionError(errno.EACCES, "Permission denied", path)) == (
        f"{path}: permission denied; check its owner and mode (ls -l), or choose a path this user may use")
    assert os_error(IsADirectoryError(errno.EISDIR, "Is a directory", path)) == f"{path} is a directory; give the path of a file"
    assert os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", path)) == f"{path} does not exist"
    assert os_error(FileNotFoundError("catalog x does not exist")) == "catalog x does not exist"
    assert os_error(FileExistsError(errno.EEXIST, "File exists", path)) == (
        f"{path} already exists and is not a directory; choose another path")

    def denied(args):  # noqa: ANN001, ANN202
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(index_cmd, "cmd_index", denied)
    assert main(["index", "--catalog", path, "--out", str(tmp_path / "b")]) == 2
    assert one_line(capsys.readouterr().err) == f"error: {os_error(PermissionError(errno.EACCES, 'x', path))}"


def test_a_locked_bundle_is_one_line(monkeypatch, tmp_path, capsys):
    message = (f"bundle {tmp_path} is already open for writing by pid 4242 on host (a writable server); run this one "
               f"with --read-only, or stop that process first (one writer per bundle).")

    def locked(args):  # noqa: ANN001, ANN202
        raise BundleLocked(message)

    monkeypatch.setattr(index_cmd, "cmd_index", locked)
    assert main(["index", "--catalog", "c.jsonl", "--out", str(tmp_path)]) == 2
    assert one_line(capsys.readouterr().err) == f"error: {message}"


# ----- upsert: patch errors name their field and line; duplicate ids refused before sending -------------------------

def test_patch_errors_name_the_line_and_field(tmp_path, capsys):
    patches = write_lines(tmp_path / "p.jsonl", [{"id": "1", "price": 9.5}, {"id": "2", "attributes": {"sale": "yes"}},
                                                 {"id": "3", "price": "cheap"}])
    assert main(["upsert", "--target", NOWHERE, "--catalog", str(patches), "--patch"]) == 2
    assert one_line(capsys.readouterr().err) == f'error: {patches}: line 3: price: expected a number, got "cheap"'
    for row, expected in [({"id": "1", "price": -2}, 'price: expected a finite non-negative number, got -2'),
                          ({"id": "1", "attributes": ["x"]}, 'attributes: expected an object of name -> value, got ["x"]'),
                          ({"id": "1", "attributes": {"size": [1]}}, 'attributes.size: expected a string or number'),
                          ({"price": 3}, "id: missing; every patch names the item it changes"),
                          ({"id": "1", "title": "x"}, "title: a patch changes only price and attributes; send the "
                                                      "whole item without --patch to change title"),
                          ("[1, 2]", "expected a JSON object {id, price?, attributes?}, got list")]:
        write_lines(patches, [row])
        assert main(["upsert", "--target", NOWHERE, "--catalog", str(patches), "--patch"]) == 2
        assert f"{patches}: line 1: {expected}" in one_line(capsys.readouterr().err)


def test_upsert_refuses_duplicate_ids_before_sending_anything(tmp_path, capsys):
    items = write_lines(tmp_path / "i.jsonl", [{"id": "a", "title": "one"}, {"id": "b", "title": "two"},
                                               {"id": "a", "title": "three"}])
    assert main(["upsert", "--target", NOWHERE, "--catalog", str(items)]) == 2   # 1 would mean it tried to send
    assert one_line(capsys.readouterr().err) == f"error: {items}: line 3: duplicate id 'a' (first seen on line 1)"
    patches = write_lines(tmp_path / "p.jsonl", [{"id": "a", "price": 1}, {"id": "a", "price": 2}])
    assert main(["upsert", "--target", NOWHERE, "--catalog", str(patches), "--patch"]) == 2
    assert "line 2: duplicate id 'a'" in one_line(capsys.readouterr().err)


def test_upsert_warns_about_unknown_fields(tmp_path, capsys):
    items = write_lines(tmp_path / "i.jsonl", [{"id": "a", "title": "one", "colour": "Red"}])
    requests = read_upserts(items, patch=False)
    assert [r.item.id for r in requests] == ["a"] and dict(requests[0].item.attributes) == {}
    assert one_line(capsys.readouterr().err).startswith('warning: 1 item has the unknown field "colour"')


# ----- serve: a port in use, a bad --watch ---------------------------------------------------------------------------

def test_serve_on_a_port_in_use_is_one_line_and_binds_nothing(small_bundle_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = vitrine("serve", "--bundle", small_bundle_path, "--port", str(port))
    assert proc.returncode == 2 and proc.stdout == ""
    assert one_line(proc.stderr) == (f"error: cannot listen on 127.0.0.1:{port}: the port is in use by another "
                                     f"process; stop it, or choose another port with --port (0 picks a free one).")


def test_a_port_taken_between_the_check_and_grpcs_bind_is_the_same_error():
    def grpc_bind():  # noqa: ANN202 - what grpc's add_insecure_port raises
        raise RuntimeError("Failed to bind to address 127.0.0.1:5; set GRPC_VERBOSITY=debug environment variable")

    with pytest.raises(ValueError, match="127.0.0.1:5: the port is in use by another process"):
        bind_server(grpc_bind, "127.0.0.1", 5)


def test_serve_watch_on_a_directory_is_refused_before_listening(small_bundle_path, tmp_path, capsys):
    proc = vitrine("serve", "--bundle", small_bundle_path, "--port", "0", "--read-only", "--watch", "1")
    assert proc.returncode == 2 and "listening" not in proc.stdout
    line = one_line(proc.stderr)
    assert "--watch needs --bundle to be a symlink" in line and "ln -sfn" in line
    current = tmp_path / "current"
    current.symlink_to(small_bundle_path)
    for args, expected in [(["--watch", "1"], "add --read-only"), (["--read-only", "--watch", "0"], "positive number")]:
        assert main(["serve", "--bundle", str(current), "--port", "0", *args]) == 2
        assert expected in one_line(capsys.readouterr().err)


# ----- a client-only install; --version -------------------------------------------------------------------------------

def test_a_missing_extra_names_the_extra_to_install(tmp_path):
    catalog = write_lines(tmp_path / "c.jsonl", [{"id": "a", "title": "ok"}])
    proc = vitrine("index", "--catalog", str(catalog), "--out", str(tmp_path / "b"), prelude="sys.modules['faiss'] = None")
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("error: vitrine index needs the server extra (module 'faiss' is not installed): "
                                     "pip install 'vitrine-search[server]'")
    proc = vitrine("demo", "--workdir", str(tmp_path / "demo"), prelude="sys.modules['PIL'] = None", cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("error: vitrine demo needs the server extra (module 'PIL' is not installed): "
                                     "pip install 'vitrine-search[server]'")


def test_missing_extra_maps_known_modules_and_keeps_other_messages():
    assert "pip install 'vitrine-search[train]'" in missing_extra(ModuleNotFoundError("x", name="mlflow.tracking"), "train")
    assert "pip install 'vitrine-search[ray]'" in missing_extra(ModuleNotFoundError("x", name="ray"), "index")
    own = ImportError("reading a Parquet catalog needs pyarrow: pip install 'vitrine-search[ray]' (or pyarrow)")
    assert missing_extra(own, "index") == str(own)


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"vitrine {version('vitrine-search')}"

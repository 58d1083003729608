"""The client-only install, checked as a shop backend would: `pip install .` into a fresh venv pulls no torch, and
`VitrineClient` (and `vitrine search`) from that venv search a server running from the full install.

    python bench/light_install.py [--keep DIR]

Prints what the light venv holds, its size, and the query's hits; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine, report  # noqa: E402

from vitrine.cli.demo import generate_catalog, start_server  # noqa: E402

QUERY = """
import json, sys
from vitrine.server.client import VitrineClient
with VitrineClient(sys.argv[1]) as client:
    result = client.search("red dress", k=3, fields=["title"])
heavy = sorted(m for m in ("torch", "numpy", "faiss", "tantivy", "sentence_transformers") if m in sys.modules)
print(json.dumps({"hits": [[h.id, h.fields.get("title")] for h in result.hits], "bundle": result.bundle_version,
                  "heavy_modules_loaded": heavy}))
"""


def du_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build the light venv here instead of a temporary directory")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="vitrine-light-"))
    venv = work / "venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "-c", str(ROOT / "constraints.txt"), str(ROOT)], check=True)
    install_s = time.perf_counter() - t0
    frozen = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "freeze"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    print(f"light venv ({du_mib(venv)} MiB): {' '.join(frozen)}", file=sys.stderr)

    catalog = generate_catalog(work / "catalog" / "catalog.jsonl", n=200)
    bundle = work / "bundle"
    subprocess.run([sys.executable, "-m", "vitrine.cli.main", "index", "--catalog", str(catalog), "--out", str(bundle),
                    "--quiet"], check=True, cwd=work)
    proc, target = start_server(bundle, ["--read-only"])
    try:
        out = subprocess.run([str(venv / "bin" / "python"), "-c", QUERY, target], capture_output=True, text=True,
                             check=True, cwd=work)
        cli = subprocess.run([str(venv / "bin" / "vitrine"), "search", "--target", target, "--text", "red dress", "--k", "3"],
                             capture_output=True, text=True, cwd=work)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    result = {"machine": machine(), "light_packages": frozen, "light_venv_mib": du_mib(venv),
              "torch_installed": any(p.lower().startswith("torch") for p in frozen), "install_s": round(install_s, 1),
              "cli_search_exit": cli.returncode, "cli_search_hits": len(cli.stdout.splitlines()), **answer}
    report("light_install", result)
    ok = answer["hits"] and not result["torch_installed"] and not answer["heavy_modules_loaded"] and cli.returncode == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

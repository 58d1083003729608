"""How long `make test`'s pytest run takes here against an earlier commit's, both in one run on the same venv.

    python bench/suite_time.py [--old 84aa12a] [--rounds 1]

The old commit is checked out into a temporary git worktree and its suite runs with that worktree first on
PYTHONPATH (its packages were top-level then); rounds alternate old/new so load drifts hit both. Prints each
run's wall time and pass/fail counts; the last line is one JSON object with the new/old ratio.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine, report  # noqa: E402


def run_suite(cwd: Path, env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?)", tail)}
    return {"seconds": round(seconds, 1), "exit": proc.returncode, **counts, "summary": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="84aa12a", help="the commit to compare with (default: before the house refactor)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vitrine-suite-"))
    old = work / "old"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.old], cwd=ROOT, check=True, capture_output=True)
    try:
        old_env = {**os.environ, "PYTHONPATH": str(old)}
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for r in range(args.rounds):
            for name, cwd, env in (("old", old, old_env), ("new", ROOT, dict(os.environ))):
                runs[name].append(run_suite(cwd, env))
                print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    mean = {k: sum(x["seconds"] for x in v) / len(v) for k, v in runs.items()}
    report("suite_time", {"bench": "suite_time", "machine": machine(), "old_commit": args.old, "runs": runs,
                          "old_s": round(mean["old"], 1), "new_s": round(mean["new"], 1),
                          "new_over_old": round(mean["new"] / mean["old"], 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Relevance regression check: nDCG@10 on fixed subsets of ../shared/data through `vitrine serve` and the batch client.

Fails (exit 1) when a task falls more than 0.01 below bench/baselines.json; `--update` rewrites that file.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_WORKDIR = ROOT / ".cache" / "regress"
DEFAULT_BASELINES = ROOT / "bench" / "baselines.json"
VITRINE = str(Path(sys.executable).with_name("vitrine"))
TOLERANCE = 0.01  # a task fails when its nDCG@10 is more than this below the baseline
K = 10

# The subset each data set is cut down to, recorded in the baseline file. Per query of the listed tasks,
# `per_query` keeps up to N judged items of each grade (None: every judged item); then `sample` more
# items are drawn from the rest of the catalog. Both picks order ids by sha256(f"{seed}:{id}"), so the
# subset depends only on the data files. Qrels are cut to the subset (a query is judged on what it can
# retrieve). Fashion needs quotas: its judgments cover 8,795 of 9,261 items (grade 1 = same article type).
SUBSET: dict = {
    "seed": 0,
    "sets": {
        "scifact": {"tasks": ["claims"], "per_query": None, "sample": 100},
        "fashion": {"tasks": ["text-literal", "text-paraphrase"], "per_query": {"2": 3, "1": 3}, "sample": 300},
    },
}

Qrels = dict[str, dict[str, int]]


def log(msg: str) -> None:
    print(f"[regress {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- metrics (the definitions of ranking/metrics.py: gain = grade, log2 discount, judged queries only) ----


def dcg(gains: Sequence[float]) -> float:
    return float(sum(g / math.log2(i + 2) for i, g in enumerate(gains)))


def ndcg_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int = K) -> float:
    gains = [max(judged.get(d, 0), 0) for d in ranked[:k]]
    idcg = dcg(sorted((g for g in judged.values() if g > 0), reverse=True)[:k])
    return dcg(gains) / idcg if idcg > 0 else 0.0


def mean_ndcg(run: Mapping[str, Sequence[str]], qrels: Qrels, k: int = K) -> tuple[float, int]:
    """Mean nDCG@k over the queries with a relevant judgment (a missing query scores 0), and their count."""
    qids = [q for q, judged in qrels.items() if any(g > 0 for g in judged.values())]
    vals = [ndcg_at_k(run.get(q, []), qrels[q], k) for q in qids]
    return (sum(vals) / len(vals) if vals else 0.0), len(qids)


# ---- data and subsets ----


def load_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or (lineno == 1 and not row[-1].lstrip("-").isdigit()):
                continue  # blank line or header
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def _order(seed: int, ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def make_subset(data: Path, name: str, spec: dict, seed: int, out: Path) -> dict:
    """Writes out/catalog.jsonl and out/qrels/<task>.tsv for one data set; returns what was kept."""
    lines = (data / name / "catalog.jsonl").read_text(encoding="utf-8").splitlines()
    items = {str(json.loads(line)["id"]): line for line in lines if line.strip()}
    qrels = {task: load_qrels(data / name / "qrels" / f"{task}.tsv") for task in spec["tasks"]}
    keep: set[str] = set()
    for task in spec["tasks"]:
        for _qid, judged in sorted(qrels[task].items()):
            present = {d: g for d, g in judged.items() if d in items}
            if spec["per_query"] is None:
                keep.update(d for d, g in present.items() if g > 0)
                continue
            for grade, n in spec["per_query"].items():
                keep.update(_order(seed, [d for d, g in present.items() if g == int(grade)])[:n])
    judged_items = len(keep)
    keep.update(_order(seed, [i for i in items if i not in keep])[:spec["sample"]])

    (out / "qrels").mkdir(parents=True, exist_ok=True)
    catalog_dir = (data / name).resolve()
    with open(out / "catalog.jsonl", "w", encoding="utf-8") as f:
        for item_id, line in items.items():  # catalog order, so doc numbers are stable
            if item_id not in keep:
                continue
            item = json.loads(line)
            image = item.get("image")
            if isinstance(image, str) and image and not image.startswith(("http://", "https://")) \
                    and not Path(image).is_absolute():
                item["image"] = str(catalog_dir / image)  # relative to the original catalog
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    for task, task_qrels in qrels.items():
        with open(out / "qrels" / f"{task}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, judged in task_qrels.items():
                for d, g in judged.items():
                    if d in keep:
                        f.write(f"{qid}\t{d}\t{g}\n")
    digest = hashlib.sha256("\n".join(sorted(keep)).encode()).hexdigest()[:16]
    return {"items": len(keep), "judged_items": judged_items, "of": len(items), "ids_sha256": digest}


# ---- processes ----


def run_vitrine(args: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([VITRINE, *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"`vitrine {' '.join(args)}` exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


class Server:
    """`vitrine serve --port 0 --read-only` in the background; `target` is HOST:PORT once it listens."""

    def __init__(self, bundle: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([VITRINE, "serve", "--bundle", str(bundle), "--port", "0", "--read-only"],
                                     cwd=bundle.parent, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.target: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # read to the end, so a chatty server never blocks on a full pipe
            if self.target is None and line.startswith("listening on "):
                self.target = line.split("listening on ", 1)[1].strip()
                self._ready.set()
        self._ready.set()  # exited

    def wait_ready(self, timeout_s: float) -> str:
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"server did not listen within {timeout_s:.0f} s (log: {self.log_path})")
        if self.target is None:
            raise RuntimeError(f"server exited with {self.proc.wait()} before listening:\n{self._tail()}")
        return self.target

    def _tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log(f"server {self.proc.pid} ignored SIGTERM for {timeout_s:.0f} s; killing it")
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops the servers


# ---- baseline file ----


def git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def compare(figures: dict, baseline: dict | None, subsets: dict) -> tuple[list[dict], list[str]]:
    """One row per task (baseline, new, diff, ok/FAIL), and the problems that fail the check as a whole."""
    problems = []
    base_tasks = (baseline or {}).get("tasks", {})
    if baseline is None:
        problems.append("no baseline file; create it with `python bench/regress.py --update`")
    else:
        for name, stats in subsets.items():
            old = baseline.get("subset", {}).get("sets", {}).get(name, {}).get("ids_sha256")
            if old != stats["ids_sha256"]:
                problems.append(f"{name}: the subset differs from the baseline's (ids {stats['ids_sha256']} vs {old}); "
                                f"the data or the subset definition changed, so re-baseline with --update")
    rows = []
    for task, fig in figures.items():
        base = base_tasks.get(task, {}).get("ndcg@10")
        new = round(fig["ndcg@10"], 4)
        diff = None if base is None else round(new - base, 4)
        status = "FAIL" if diff is None or diff < -TOLERANCE else "ok"
        rows.append({"task": task, "baseline": base, "new": new, "diff": diff, "status": status})
    return rows, problems


def print_table(rows: list[dict]) -> None:
    print(f"{'task':<26}{'baseline':>10}{'new':>10}{'diff':>10}  status   (nDCG@10, fails below baseline - {TOLERANCE})")
    for r in rows:
        base = "-" if r["baseline"] is None else f"{r['baseline']:.4f}"
        diff = "-" if r["diff"] is None else f"{r['diff']:+.4f}"
        print(f"{r['task']:<26}{base:>10}{r['new']:>10.4f}{diff:>10}  {r['status']}")


# ---- main ----


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as exc:
        print(f"relevance regression check: ERROR (not a relevance figure; exit 2): {exc}", flush=True)
        return 2


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="evaluation data (default ../shared/data)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="subsets, bundles, runs, server logs")
    parser.add_argument("--baselines", default=str(DEFAULT_BASELINES))
    parser.add_argument("--update", action="store_true", help="rewrite the baseline file with this run's figures")
    args = parser.parse_args(argv)
    data, work, baselines_path = Path(args.data), Path(args.workdir).resolve(), Path(args.baselines)
    if not data.is_dir():
        print(f"regress: skipped, no evaluation data at {data}", flush=True)
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    t_start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    subsets: dict[str, dict] = {}
    for name, spec in SUBSET["sets"].items():
        subsets[name] = make_subset(data, name, spec, SUBSET["seed"], work / name)
        log(f"{name}: subset of {subsets[name]['items']} items ({subsets[name]['judged_items']} judged + sample) "
            f"of {subsets[name]['of']}")

    bundles: dict[str, Path] = {}
    manifests: dict[str, dict] = {}
    for name in SUBSET["sets"]:
        t0 = time.perf_counter()
        bundles[name] = work / name / "bundle"
        log(f"{name}: indexing (default settings) ...")
        run_vitrine(["index", "--catalog", str(work / name / "catalog.jsonl"), "--out", str(bundles[name]),
                     "--force", "--quiet"], work, timeout_s=1800)
        manifests[name] = json.loads((bundles[name] / "manifest.json").read_text())
        seconds[f"index_{name}"] = round(time.perf_counter() - t0, 1)
        log(f"{name}: indexed in {seconds[f'index_{name}']} s "
            f"(text vectors: {manifests[name].get('vectors', {}).get('text', {}).get('factory')})")

    figures: dict[str, dict] = {}
    servers: dict[str, Server] = {}
    try:
        t0 = time.perf_counter()
        log("starting servers ...")
        for name in SUBSET["sets"]:
            servers[name] = Server(bundles[name], work / name / "serve.log")
        targets = {name: s.wait_ready(600) for name, s in servers.items()}
        seconds["servers_ready"] = round(time.perf_counter() - t0, 1)
        log(f"servers ready in {seconds['servers_ready']} s: {targets}")
        for name, spec in SUBSET["sets"].items():
            for task in spec["tasks"]:
                t0 = time.perf_counter()
                run_path = work / name / f"run-{task}.jsonl"
                proc = run_vitrine(["search", "--target", targets[name], "--queries",
                                    str(data / name / "queries" / f"{task}.jsonl"), "--k", "100",
                                    "--out", str(run_path)], work, timeout_s=1800)
                latency = json.loads(proc.stderr.strip().splitlines()[-1])
                run: dict[str, list[str]] = {}
                with open(run_path, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            row = json.loads(line)
                            run[str(row["qid"])] = [str(h["id"]) for h in row["hits"]]
                ndcg, judged = mean_ndcg(run, load_qrels(work / name / "qrels" / f"{task}.tsv"))
                key = f"{name}/{task}"
                figures[key] = {"ndcg@10": round(ndcg, 4), "queries": latency["queries"], "judged_queries": judged,
                                "p50_ms": latency["latency_ms"]["p50"]}
                seconds[f"search_{key}"] = round(time.perf_counter() - t0, 1)
                log(f"{key}: nDCG@10 {ndcg:.4f} over {judged} judged queries ({latency['queries']} sent, "
                    f"p50 {latency['latency_ms']['p50']} ms, {seconds[f'search_{key}']} s)")
    finally:
        for name, server in servers.items():
            server.stop()
        if servers:
            log("servers stopped")
    seconds["total"] = round(time.perf_counter() - t_start, 1)

    baseline = json.loads(baselines_path.read_text()) if baselines_path.is_file() else None
    rows, problems = compare(figures, baseline, subsets)
    factories = {name: m.get("vectors", {}).get("text", {}).get("factory") for name, m in manifests.items()}
    if args.update:
        new = {
            "metric": f"ndcg@{K}", "tolerance": TOLERANCE, **git_state(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": {"config": "defaults (no config file)", "text_vectors": factories, "k": 100},
            "subset": {"seed": SUBSET["seed"], "sets": {n: {**SUBSET["sets"][n], **subsets[n]} for n in SUBSET["sets"]}},
            "tasks": figures,
        }
        baselines_path.write_text(json.dumps(new, indent=2) + "\n")
        print_table([{**r, "status": "updated"} for r in rows])
        print(f"baseline written to {baselines_path} (previous figures in the baseline column)")
        print(json.dumps({"updated": str(baselines_path), "figures": figures, "seconds": seconds}))
        return 0

    print_table(rows)
    for p in problems:
        print(f"FAIL: {p}")
    failed = [r["task"] for r in rows if r["status"] == "FAIL"]
    ok = not failed and not problems
    print("relevance regression check: " + ("ok" if ok else f"FAIL ({', '.join(failed) or 'see above'})"))
    print(json.dumps({"ok": ok, "tolerance": TOLERANCE, "tasks": rows, "figures": figures, "problems": problems,
                      "baseline_commit": (baseline or {}).get("commit"), "text_vectors": factories, "seconds": seconds}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

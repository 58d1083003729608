"""Image, composed and text quality with a Vitrine-trained CLIP, through `vitrine serve` and the batch client.

    python bench/images.py [--clip-model DIR] [--data ../shared/data] [--bundles runs]

Without --clip-model it first trains one with the defaults of `vitrine train clip` on the fashion catalog (into
BUNDLES/clip-default, reused when present and trained at the same commit), so the figures are the defaults'.

Indexes fashion (text + CLIP) and flickr8k (CLIP only), serves each, sends every query of each task
with `vitrine search --queries` over gRPC, and reports nDCG@10, Recall@10 and client p50/p99 latency
per task, the images/s encoded while indexing, and the CLIP's training time. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from first_stage import fresh, run_batch, stamp  # noqa: E402
from machine import machine  # noqa: E402

from vitrine.cli.demo import start_server  # noqa: E402
from vitrine.ranking.evaluation import read_run  # noqa: E402
from vitrine.ranking.metrics import evaluate, load_qrels  # noqa: E402

TASKS = {"fashion": ["image", "composed", "text-paraphrase", "text-literal"], "flickr8k": ["caption"]}


def build(data: Path, name: str, clip: Path, out: Path, text: bool) -> dict:
    if not ((out / "manifest.json").is_file() and fresh(out)):
        cmd = [sys.executable, "-m", "vitrine.cli.main", "index", "--catalog", str(data / name / "catalog.jsonl"), "--out", str(out),
               "--clip-model", str(clip), "--force", "--quiet", *([] if text else ["--no-text-vectors"])]
        subprocess.run(cmd, check=True, cwd=ROOT)
        stamp(out)
    return json.loads((out / "manifest.json").read_text())


def train_default_clip(data: Path, bundles: Path) -> Path:
    """`vitrine train clip --catalog fashion --out BUNDLES/clip-default` with no other flag: the shipped defaults."""
    out = bundles / "clip-default"
    if (out / "training.json").is_file() and fresh(out):
        return out.resolve()
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "vitrine.cli.main", "train", "clip", "--catalog", str(data / "fashion" / "catalog.jsonl"),
           "--out", str(out), "--no-mlflow", "--quiet"]
    print("training the default CLIP:", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    stamp(out)
    return out.resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-model", help="CLIP checkpoint dir; default: train one with `vitrine train clip` defaults")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--bundles", default=str(ROOT / "runs"))
    parser.add_argument("--tag", default="clip")
    parser.add_argument("--variants", default="", help="extra ;-separated `name:flags` runs, e.g. 'soft:--constraint soft'")
    args = parser.parse_args(argv)
    data = Path(args.data)
    clip = Path(args.clip_model).resolve() if args.clip_model else train_default_clip(data, Path(args.bundles))
    training = json.loads((clip / "training.json").read_text()) if (clip / "training.json").is_file() else {}
    results: dict = {"machine": machine(), "clip_model": str(clip), "clip_training_s": training.get("seconds"),
                     "clip_heldout": json.loads((clip / "metrics.json").read_text()) if (clip / "metrics.json").is_file() else {},
                     "figures": {}}
    variants = {"default": []}
    for spec in filter(None, args.variants.split(";")):
        name, flags = spec.split(":", 1)
        variants[name] = flags.split()
    tmp = Path(tempfile.mkdtemp())
    for name, tasks in TASKS.items():
        out = Path(args.bundles) / f"{name}-{args.tag}"
        t0 = time.perf_counter()
        manifest = build(data, name, clip, out, text=(name == "fashion"))
        results[f"{name}_index"] = {"images_per_s": manifest["vectors"]["clip_image"].get("images_per_s"),
                                    "images": manifest["counts"].get("images"), "broken": manifest["counts"].get("broken_images"),
                                    "built_s": round(time.perf_counter() - t0, 1)}
        proc, target = start_server(out)
        try:
            for task in tasks:
                qrels = load_qrels(data / name / "qrels" / f"{task}.tsv")
                for variant, flags in variants.items():
                    run_path = tmp / f"{name}-{task}-{variant}.jsonl"
                    lat = run_batch(target, data / name / "queries" / f"{task}.jsonl", flags, run_path)
                    run = {qid: [d for d, _ in hits] for qid, hits in read_run(run_path).items()}
                    m = evaluate(run, qrels)
                    key = f"{name}/{task}/{variant}"
                    results["figures"][key] = {"ndcg@10": round(m["ndcg@10"], 4), "recall@10": round(m["recall@10"], 4),
                                               "p50_ms": lat["latency_ms"]["p50"], "p99_ms": lat["latency_ms"]["p99"]}
                    print(key, results["figures"][key], file=sys.stderr, flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / f"images-{args.tag}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

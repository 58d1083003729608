"""Image, composed and text quality with a Vitrine-trained CLIP, through `vitrine serve` and the batch client.

    python bench/images.py [--clip-model DIR] [--data ../shared/data] [--bundles runs]

Without --clip-model it first trains one with the defaults of `vitrine train clip` on the fashion catalog (into
BUNDLES/clip-default, reused when present and trained at the same commit), so the figures are the defaults'.

Indexes fashion (text + CLIP) and the held-out part of flickr8k (CLIP only: the photos `vitrine train clip` never
trains on, trainer/clip.general_split), serves each, sends every query of each task with `vitrine search --queries`
over gRPC, and reports nDCG@10, Recall@10 and client p50/p99 latency per task, the images/s encoded while
indexing, and the CLIP's training time. Last line: one JSON object.
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
# Per task, runs besides the default through the same server: text without CLIP (what CLIP must not lower).
TASK_VARIANTS = {"text-paraphrase": {"no-clip": ["--sources", "bm25,text"]}, "text-literal": {"no-clip": ["--sources", "bm25,text"]}}


def build(folder: Path, clip: Path, out: Path, text: bool) -> dict:
    if not ((out / "manifest.json").is_file() and fresh(out)):
        cmd = [sys.executable, "-m", "vitrine.cli.main", "index", "--catalog", str(folder / "catalog.jsonl"), "--out", str(out),
               "--clip-model", str(clip), "--force", "--quiet", *([] if text else ["--no-text-vectors"])]
        subprocess.run(cmd, check=True, cwd=ROOT)
        stamp(out)
    return json.loads((out / "manifest.json").read_text())


def flickr_heldout(data: Path, out: Path, heldout: int) -> Path:
    """A flickr8k-layout folder with only the photos no CLIP trained on (and their caption queries and qrels)."""
    from vitrine.trainer.clip import general_split

    src = data / "flickr8k"
    _, held = general_split(src / "captions.txt", heldout)
    keep = {Path(p).stem for p in held}
    (out / "queries").mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    lines = [json.loads(x) for x in (src / "catalog.jsonl").read_text().splitlines() if x.strip()]
    (out / "catalog.jsonl").write_text("".join(json.dumps({**x, "image": str(src / x["image"])}) + "\n"
                                               for x in lines if x["id"] in keep))
    qrels = load_qrels(src / "qrels" / "caption.tsv")
    qids = {q for q, judged in qrels.items() if set(judged) & keep}
    (out / "qrels" / "caption.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q in sorted(qids) for d, g in qrels[q].items() if d in keep))
    queries = [x for x in (src / "queries" / "caption.jsonl").read_text().splitlines() if x.strip()]
    (out / "queries" / "caption.jsonl").write_text("".join(x + "\n" for x in queries if json.loads(x)["qid"] in qids))
    return out


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
    parser.add_argument("--variants", default="", help="extra ;-separated `name:flags` runs of the composed task, "
                        "e.g. 'soft:--constraint soft'")
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
    heldout = training.get("config", {}).get("general_heldout", 500)
    folders = {"fashion": data / "fashion", "flickr8k": flickr_heldout(data, tmp / "flickr8k-heldout", heldout)}
    results["flickr8k_heldout_photos"] = sum(1 for _ in (folders["flickr8k"] / "catalog.jsonl").open())
    for name, tasks in TASKS.items():
        out = Path(args.bundles) / f"{name}-{args.tag}"
        t0 = time.perf_counter()
        manifest = build(folders[name], clip, out, text=(name == "fashion"))
        results[f"{name}_index"] = {"images_per_s": manifest["vectors"]["clip_image"].get("images_per_s"),
                                    "images": manifest["counts"].get("images"), "broken": manifest["counts"].get("broken_images"),
                                    "built_s": round(time.perf_counter() - t0, 1)}
        proc, target = start_server(out)
        try:
            for task in tasks:
                qrels = load_qrels(folders[name] / "qrels" / f"{task}.tsv")
                extra = variants if task == "composed" else {"default": []}  # the variants are composed-query flags
                for variant, flags in {**extra, **TASK_VARIANTS.get(task, {})}.items():
                    run_path = tmp / f"{name}-{task}-{variant}.jsonl"
                    lat = run_batch(target, folders[name] / "queries" / f"{task}.jsonl", flags, run_path)
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

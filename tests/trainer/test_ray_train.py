"""`vitrine train ... --ray auto --workers 2` on a local Ray cluster of two CPUs: the toy tasks of the
single-process tests are learned, the output directory matches a single-process run's and loads as the server
loads it, and rank 0 alone wrote it (one copy, no Ray leftovers)."""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

from tests.trainer.test_text_trainer import tiny_text_model, toy_text_shop, tuned  # noqa: F401 - fixtures
from vitrine.cli.main import main

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(argv)
    return rc, stdout.getvalue(), stderr.getvalue()


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_train_text_on_two_ray_workers_learns_and_writes_one_output(cluster, tiny_text_model, toy_text_shop, tuned,  # noqa: F811
                                                                     tmp_path):
    from vitrine.encoders.text import SentenceTransformerEncoder

    shop = toy_text_shop["root"]
    out = tmp_path / "tuned"
    # The arguments of the single-process `tuned` fixture, plus --ray.
    rc, stdout, stderr = run_cli([
        "train", "text", "--catalog", str(shop / "catalog.jsonl"), "--out", str(out), "--base", tiny_text_model,
        "--queries", str(shop / "queries.jsonl"), "--qrels", str(shop / "qrels" / "train.tsv"), "--forbid-qrels",
        str(shop / "qrels" / "test.tsv"), "--no-sibling-guard", "--general", str(shop / "captions.txt"),
        "--epochs", "15", "--patience", "15", "--lr", "3e-3", "--batch-size", "16", "--generators", "attributes",
        "--no-mlflow", "--quiet", "--seed", "0", "--ray", "auto", "--workers", "2"])
    assert rc == 0, stderr[-3000:]
    assert "training on 2 Ray workers (cpu, gloo)" in stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["workers"] == 2 and summary["ray"] == "auto"
    # (a) it learns the synonyms, as the single-process run does
    domain = summary["domain_cosine_ndcg@10"]
    assert domain["tuned"] > domain["base"] + 0.05, summary
    # (b) the same files as the single-process run, loadable by the server's encoder
    single = tuned[0]
    assert files(out) == files(single)
    training = json.loads((out / "training.json").read_text())
    assert training["workers"] == 2 and "azure-watch" not in training["training_qids"]
    q, red, blue = SentenceTransformerEncoder(str(out), device="cpu").encode_texts(
        ["crimson watch", "red watch for men", "blue watch for men"])
    assert float(q @ red) > float(q @ blue)
    # (c) one copy: nothing beside the output (no trainer work dir, no Ray run state), one set of weights
    assert [p.name for p in tmp_path.iterdir()] == ["tuned"]
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*.safetensors")] == [Path("tuned/model.safetensors")]


CLIP_ARGS = ["--image-size", "32", "--epochs", "8", "--patience", "8", "--batch-size", "8", "--holdout", "8",
             "--general", "none", "--no-mlflow", "--quiet", "--seed", "0"]


@pytest.fixture(scope="module")
def clip_single(toy_shop, tmp_path_factory) -> Path:
    """The default CLIP recipe (frozen MiniLM, EfficientNet-Lite0's last stages) on the toy shop, in one process."""
    out = tmp_path_factory.mktemp("clip-single") / "clip"
    rc, _, stderr = run_cli(["train", "clip", "--catalog", str(toy_shop["catalog"]), "--out", str(out), *CLIP_ARGS])
    assert rc == 0, stderr[-3000:]
    return out


def class_accuracy(model_dir: Path) -> float:
    """Fresh photos of the toy shop's eight (colour, shape) classes, each matched to the nearest class title."""
    import numpy as np
    from PIL import Image

    from tests.trainer.conftest import COLORS, SHAPES, draw
    from vitrine.encoders.clip import ClipEncoder

    enc = ClipEncoder(str(model_dir), device="cpu")
    classes = [(c, s) for c in COLORS for s in SHAPES]
    rng = np.random.default_rng(7)
    photos = [Image.fromarray(draw(c, s, rng)) for c, s in classes for _ in range(4)]
    sims = enc.encode_images(photos) @ enc.encode_texts([f"a {c} {s}" for c, s in classes]).T  # (32, 8)
    return float(np.mean(sims.argmax(1) == np.repeat(np.arange(len(classes)), 4)))


def test_train_clip_on_two_ray_workers_learns_and_writes_one_output(cluster, toy_shop, clip_single, tmp_path):
    out = tmp_path / "clip"
    rc, stdout, stderr = run_cli(["train", "clip", "--catalog", str(toy_shop["catalog"]), "--out", str(out), *CLIP_ARGS,
                                  "--ray", "--workers", "2"])
    assert rc == 0, stderr[-3000:]
    assert "training on 2 Ray workers (cpu, gloo)" in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["workers"] == 2 and summary["ray"] == "auto"
    # (a) it learns: the loss falls, held-out recall rises, fresh photos find their class (chance is 1/8)
    training = json.loads((out / "training.json").read_text())
    curve = training["curve"]
    assert training["workers"] == 2 and training["epochs_run"] == 8
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] - 0.5
    assert max(c["mean_r@1"] for c in curve) > curve[0]["mean_r@1"]
    assert class_accuracy(out) >= 0.5
    # (b) the same files as the single-process run (the checkpoint for --resume too), loadable by the server's encoder
    assert files(out) == files(clip_single)
    # (c) one copy: nothing beside the output, one set of weights
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("model.safetensors")] == [Path("clip/model.safetensors")]


def test_train_reranker_on_two_ray_workers_learns(cluster, tiny_cross_encoder_dir, tmp_path):
    """The cross-encoder trainer through the same Ray glue `vitrine train reranker --ray` uses."""
    from tests.ranking.test_rerank import _toy_task
    from vitrine.ranking.rerank import CrossEncoderReranker, RerankConfig
    from vitrine.trainer.distributed import RayOptions, run_distributed
    from vitrine.trainer.reranker import RerankerTask, RerankerTrainConfig, rerank_ndcg, train_reranker

    queries, qrels, docs, candidates = _toy_task()
    config = RerankerTrainConfig(epochs=3, batch_queries=4, negatives=3, lr=1e-3, holdout=0.25, max_length=32, patience=4,
                                 onnx=False)
    first = {q: [1.0 - j / 10 for j in range(len(c))] for q, c in candidates.items()}  # first stage: no signal
    out = tmp_path / "ce"
    summary = run_distributed(train_reranker, {
        "base": tiny_cross_encoder_dir, "out_dir": out, "task": RerankerTask(queries, qrels, docs, candidates, first),
        "config": config, "progress": False}, RayOptions("auto", 2), out, log=lambda m: None)
    assert summary["workers"] == 2 and len(summary["curve"]) == 3
    assert summary["heldout"]["ndcg@10"] > summary["heldout"]["first_stage_ndcg@10"] + 0.2
    model = CrossEncoderReranker(str(out), RerankConfig(max_length=32), device="cpu")
    again = rerank_ndcg(model.score, summary["heldout_qids"], queries, candidates, docs, qrels)
    assert again == pytest.approx(summary["heldout"]["ndcg@10"], abs=1e-6)
    assert {"training.json", "metrics.json", "model.safetensors"} <= files(out)
    assert [p.name for p in tmp_path.iterdir()] == ["ce"]


def test_ray_flags_are_checked_before_any_work(tmp_path, monkeypatch):
    base = ["train", "text", "--catalog", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o"), "--no-mlflow"]
    rc, _, stderr = run_cli([*base, "--workers", "2"])
    assert rc == 2 and "--workers needs --ray" in stderr
    rc, _, stderr = run_cli([*base, "--ray", "--device", "cpu"])
    assert rc == 2 and "--device does not apply with --ray" in stderr
    rc, _, stderr = run_cli([*base, "--ray", "--workers", "0"])
    assert rc == 2 and "positive integer" in stderr
    rc, _, stderr = run_cli([*base, "--ray", "--workers", "3", "--batch-size", "16"])
    assert rc == 2 and "not a multiple of the 3 workers" in stderr
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    with pytest.raises(SystemExit, match=r"pip install 'vitrine-search\[ray\]'"):
        main([*base, "--ray"])
    assert not (tmp_path / "o").exists()


def test_without_ray_the_train_commands_never_import_it():
    """Ray is an optional extra: the trainers and the train commands' parsers load without importing it."""
    code = ("import sys; from vitrine.cli.main import build_parser; import vitrine.trainer.clip, vitrine.trainer.text, "
            "vitrine.trainer.reranker, vitrine.trainer.distributed; "
            "args = build_parser().parse_args(['train', 'text', '--catalog', 'c', '--out', 'o']); "
            "assert args.ray is None and args.workers is None; "
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray was imported'")
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

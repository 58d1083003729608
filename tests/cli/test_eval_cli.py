from __future__ import annotations

import json

import pytest

from vitrine.cli.main import main
from vitrine.indexer.bundle import Bundle
from vitrine.ranking.evaluation import ranx_metrics, read_run
from vitrine.ranking.metrics import evaluate, load_qrels
from vitrine.ranking.pipeline import Searcher
from vitrine.server.app import create_server, single
from vitrine.serving.assemble import Served

QUERIES = [
    {"qid": "q1", "text": "red dress"},
    {"qid": "q2", "text": "crimson dress"},        # only the dense source knows crimson = red
    {"qid": "q3", "text": "blue bag", "exclude_ids": ["7"]},
    {"qid": "q4", "text": "black shoe women"},
]
QRELS = [("q1", "4", 2), ("q1", "3", 1), ("q2", "4", 2), ("q3", "2", 1), ("q4", "8", 2), ("q4", "5", 1)]


@pytest.fixture()
def eval_files(tmp_path):
    q = tmp_path / "queries.jsonl"
    q.write_text("".join(json.dumps(x) + "\n" for x in QUERIES))
    r = tmp_path / "qrels.tsv"
    r.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in QRELS))
    return str(q), str(r)


@pytest.fixture()
def target(small_bundle_path, keyword_encoder):
    bundle = Bundle(small_bundle_path)
    served = create_server(single(Served(Searcher(bundle, keyword_encoder))), "127.0.0.1:0")
    server, port = served.server, served.port
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()
    bundle.close()


def test_eval_ablate_json_matches_ranx_on_the_written_run(target, eval_files, tmp_path, capsys):
    queries, qrels = eval_files
    out = tmp_path / "run.jsonl"
    rc = main(["eval", "--target", target, "--queries", queries, "--qrels", qrels, "--ablate", "--json",
               "--check-ranx", "--out", str(out)])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by_name = {r["name"]: r for r in obj["reports"]}
    from vitrine.server.client import FUSION

    # every fusion method the client can send shows up without the harness naming it
    assert list(by_name) == ["default", "bm25 only", "text only", *(f"bm25+text {f}" for f in FUSION if f)]
    assert {"bm25+text rrf", "bm25+text weighted"} <= set(by_name)
    # sources the library knows but this bundle cannot serve are probed, reported and left out
    assert "not available" in obj["skipped_variants"]["clip_image only"]
    assert all(r["errors"] == 0 and r["queries"] == 4 for r in by_name.values())
    assert all(r["extra"]["ranx_max_abs_diff"] < 1e-9 for r in by_name.values())
    # BM25 cannot match "crimson"; the dense source can, so it is the better source on this set
    assert by_name["text only"]["metrics"]["mrr@10"] > by_name["bm25 only"]["metrics"]["mrr@10"]
    assert by_name["default"]["latency_ms"]["p99"] >= by_name["default"]["latency_ms"]["p50"] > 0
    # the run file the tool wrote scores the same with ranx, and the excluded id never appears
    run = {q: [d for d, _ in hits] for q, hits in read_run(out).items()}
    assert "7" not in run["q3"]
    theirs = ranx_metrics(run, load_qrels(qrels))
    for name, value in by_name["default"]["metrics"].items():
        assert value == pytest.approx(theirs[name], abs=1e-6), name
    assert evaluate(run, load_qrels(qrels))["ndcg@10"] == pytest.approx(by_name["default"]["metrics"]["ndcg@10"], abs=1e-6)
    assert (tmp_path / "run.bm25-only.jsonl").is_file()


def test_eval_table_and_markdown(target, eval_files, capsys):
    queries, qrels = eval_files
    assert main(["eval", "--target", target, "--queries", queries, "--qrels", qrels]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "variant" and "p99" in lines[0] and lines[2].startswith("default")
    assert main(["eval", "--target", target, "--queries", queries, "--qrels", qrels, "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| variant | ndcg@1 |")


def test_eval_with_bundle_serves_it_in_process(small_bundle_path, keyword_encoder, eval_files, monkeypatch, capsys):
    from vitrine.serving import assemble

    def fake_open_served(path, config, reranker=None, ranker=None):
        return assemble.Served(Searcher(Bundle(path), keyword_encoder))

    monkeypatch.setattr(assemble, "open_served", fake_open_served)
    queries, qrels = eval_files
    assert main(["eval", "--bundle", small_bundle_path, "--queries", queries, "--qrels", qrels, "--json"]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert obj["reports"][0]["metrics"]["recall@100"] == pytest.approx(1.0)


def test_eval_needs_queries_and_a_server(eval_files, capsys):
    queries, qrels = eval_files
    assert main(["eval", "--queries", queries, "--qrels", qrels]) == 2
    assert "--target HOST:PORT or --bundle DIR" in capsys.readouterr().err
    assert main(["eval", "--target", "127.0.0.1:1"]) == 2
    assert "needs --queries and --qrels" in capsys.readouterr().err


@pytest.fixture(scope="session")
def tiny_st_models(tmp_path_factory):
    """Two tiny random sentence-transformers models (BERT + mean pooling) saved as local directories."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from tests.conftest import VOCAB

    root = tmp_path_factory.mktemp("st-models")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys([*VOCAB, "for", "dress", "bag"])]
    vocab = {w: i for i, w in enumerate(words)}
    dirs = []
    for name, hidden in (("tiny-a", 32), ("tiny-b", 16)):
        torch.manual_seed(hidden)
        hf = root / f"{name}-hf"
        BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)).save_pretrained(hf)
        # transformers 5 takes the vocabulary itself; vocab_file= would map every word to [UNK]
        tokenizer = BertTokenizerFast(vocab=vocab)
        assert tokenizer("red dress")["input_ids"] == [2, vocab["red"], vocab["dress"], 3]
        tokenizer.save_pretrained(hf)
        model = SentenceTransformer(modules=[models.Transformer(str(hf)), models.Pooling(hidden, "mean")], device="cpu")
        model.save(str(root / name))
        dirs.append(str(root / name))
    return dirs


def test_eval_models_compares_candidates_and_plots(tiny_st_models, eval_files, tmp_path, capsys):
    from tests.conftest import make_items

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in make_items()))
    queries, qrels = eval_files
    png = tmp_path / "plot.png"
    rc = main(["eval", "models", "--catalog", str(catalog), "--queries", queries, "--qrels", qrels,
               "--candidates", ",".join(tiny_st_models), "--plot", str(png), "--json"])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    dims = [r["extra"]["dim"] for r in obj["reports"]]
    assert dims == [32, 16]
    for r in obj["reports"]:
        assert r["queries"] == 4 and 0 <= r["metrics"]["ndcg@10"] <= 1 and r["metrics"]["recall@100"] == pytest.approx(1.0)
        assert r["extra"]["encode_items_per_s"] > 0 and r["extra"]["index_bytes"] >= 8 * r["extra"]["vector_bytes"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_models_table(tiny_st_models, eval_files, tmp_path, capsys):
    from tests.conftest import make_items

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in make_items()))
    queries, qrels = eval_files
    assert main(["eval", "models", "--catalog", str(catalog), "--queries", queries, "--qrels", qrels,
                 "--candidates", tiny_st_models[1]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["model", "ndcg@10", "recall@100"] and out[1].split()[5] == "16"


def test_eval_models_general_check_and_size(tiny_st_models, eval_files, tmp_path, capsys):
    """With --general, each candidate gets the caption check of `vitrine train text`: here every photo's captions
    are one repeated phrase of known words, so any encoder finds a photo's other captions first (Recall@10 = 1)."""
    from tests.conftest import VOCAB, make_items

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in make_items()))
    words = list(dict.fromkeys(VOCAB))
    captions = tmp_path / "captions.txt"
    captions.write_text("image,caption\n" + "".join(f"p{i}.jpg,{words[i]} {words[i + 1]} {words[i + 2]}\n"
                                                    for i in range(6) for _ in range(5)))
    queries, qrels = eval_files
    assert main(["eval", "models", "--catalog", str(catalog), "--queries", queries, "--qrels", qrels,
                 "--candidates", tiny_st_models[0], "--general", str(captions), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reports"][0]
    assert report["extra"]["general_recall@10"] == pytest.approx(1.0)
    n_params = sum(p.numel() for p in __import__("sentence_transformers").SentenceTransformer(tiny_st_models[0]).parameters())
    assert report["extra"]["weights_mib"] == pytest.approx(n_params * 4 / 2**20, rel=1e-3)
    assert main(["eval", "models", "--catalog", str(catalog), "--queries", queries, "--qrels", qrels,
                 "--candidates", tiny_st_models[0], "--general", str(captions)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-4:] == ["weights", "MiB", "general", "R@10"]

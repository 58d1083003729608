"""`vitrine train text` on a toy shop whose users say "crimson" and "azure" where the catalog says red and blue:
a tiny random text model learns it, the output loads with plain sentence-transformers, the leakage guard holds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitrine.cli.main import main
from vitrine.trainer.text_pairs import caption_check, generate_pairs, split_captions

COLORS = {"red": "crimson", "blue": "azure", "black": "black", "green": "green"}
ARTICLES = ["shirt", "dress", "shoe", "bag", "watch"]
WORDS = ["red", "blue", "black", "green", "crimson", "azure", "shirt", "dress", "shoe", "bag", "watch", "men", "women",
         "for", "a", "photo", "of", "the", "same", "some"]


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory) -> str:
    """A 1-layer BERT with a word vocabulary and mean pooling, random weights: it knows no synonyms."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-text")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "hf")
    tokenizer = BertTokenizerFast(vocab=vocab)  # transformers 5 takes the vocabulary itself, not vocab_file
    assert tokenizer("crimson watch")["input_ids"] == [2, vocab["crimson"], vocab["watch"], 3]
    tokenizer.save_pretrained(root / "hf")
    model = SentenceTransformer(modules=[Transformer(str(root / "hf")), Pooling(32, "mean")], device="cpu")
    model.save(str(root / "model"))
    return str(root / "model")


@pytest.fixture(scope="module")
def toy_text_shop(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("text-shop")
    items, queries, train, test = [], [], [], []
    n = 0
    for color in COLORS:
        for article in ARTICLES:
            for gender in ("men", "women"):
                items.append({"id": f"i{n}", "title": f"{color} {article} for {gender}",
                              "attributes": {"color": color, "article_type": article, "gender": gender}})
                n += 1
    for color, synonym in COLORS.items():
        for article in ARTICLES:
            qid = f"{synonym}-{article}"
            queries.append({"qid": qid, "text": f"{synonym} {article}"})
            rows = [(qid, it["id"]) for it in items if it["attributes"]["color"] == color and it["attributes"]["article_type"] == article]
            (test if article == "watch" else train).extend(rows)
    (root / "catalog.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (root / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in queries))
    (root / "qrels").mkdir()
    for name, rows in (("train", train), ("test", test)):
        (root / "qrels" / f"{name}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows))
    captions = root / "captions.txt"
    captions.write_text("image,caption\n" + "".join(f"p{i}.jpg,a photo of the {w} {a}\np{i}.jpg,some {w} {a}\n"
                                                    for i, (w, a) in enumerate((w, a) for w in ("red", "blue") for a in ARTICLES)))
    return {"root": root, "items": items}


@pytest.fixture(scope="module")
def tuned(tiny_text_model, toy_text_shop, tmp_path_factory) -> tuple:
    """The tiny model tuned on the toy shop's judged train queries and attribute pairs; (dir, printed summary)."""
    import contextlib
    import io

    shop = toy_text_shop["root"]
    out = tmp_path_factory.mktemp("tuned-text") / "tuned"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["train", "text", "--catalog", str(shop / "catalog.jsonl"), "--out", str(out), "--base", tiny_text_model,
                   "--queries", str(shop / "queries.jsonl"), "--qrels", str(shop / "qrels" / "train.tsv"), "--forbid-qrels",
                   str(shop / "qrels" / "test.tsv"), "--no-sibling-guard", "--general", str(shop / "captions.txt"),
                   "--epochs", "15", "--patience", "15", "--lr", "3e-3", "--batch-size", "16", "--generators", "attributes",
                   "--no-mlflow", "--quiet", "--seed", "0"])
    assert rc == 0, stderr.getvalue()[-3000:]
    return out, json.loads(stdout.getvalue().strip().splitlines()[-1])


def test_train_text_learns_the_synonyms_and_the_output_loads(tiny_text_model, toy_text_shop, tuned, tmp_path):
    from sentence_transformers import SentenceTransformer

    shop = toy_text_shop["root"]
    out, summary = tuned
    domain = summary["domain_cosine_ndcg@10"]
    assert domain["tuned"] > domain["base"] + 0.05, summary
    training = json.loads((out / "training.json").read_text())
    assert training["pairs"]["judged"] > 0 and training["triplets"]["qrels"] > 0 and training["triplets"]["general"] > 0
    assert "azure-watch" not in training["training_qids"]  # test.tsv's queries stay out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"base", "tuned", "curve"} and "general_cosine_recall@10" in metrics["tuned"]
    # The held-out query type (watches) was never trained on: the synonym carries over to it.
    model = SentenceTransformer(str(out), device="cpu")
    q, red, blue = model.encode(["crimson watch", "red watch for men", "blue watch for men"], normalize_embeddings=True)
    assert float(q @ red) > float(q @ blue)
    base = SentenceTransformer(tiny_text_model, device="cpu")
    bq, bred, bblue = base.encode(["crimson watch", "red watch for men", "blue watch for men"], normalize_embeddings=True)
    assert float(q @ red) - float(q @ blue) > float(bq @ bred) - float(bq @ bblue)
    # Indexed with the tuned model, the bundle (and so Info and every response) names its version.
    assert main(["index", "--catalog", str(shop / "catalog.jsonl"), "--out", str(tmp_path / "bundle"), "--text-model",
                 str(out), "--quiet"]) == 0
    text_model = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["models"]["text"]
    assert text_model["name"] == str(out) and text_model["version"].startswith("tuned@")


def test_train_text_lora_adapter_learns_is_small_and_loads(tiny_text_model, toy_text_shop, tuned, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    from vitrine.encoders.text import SentenceTransformerEncoder

    shop = toy_text_shop["root"]
    out = tmp_path / "lora"
    assert main(["train", "text", "--catalog", str(shop / "catalog.jsonl"), "--out", str(out), "--base", tiny_text_model,
                 "--queries", str(shop / "queries.jsonl"), "--qrels", str(shop / "qrels" / "train.tsv"), "--forbid-qrels",
                 str(shop / "qrels" / "test.tsv"), "--no-sibling-guard", "--adapter", "lora", "--lora-rank", "4",
                 "--epochs", "15", "--patience", "15", "--lr", "3e-2", "--batch-size", "16", "--generators", "attributes",
                 "--no-mlflow", "--quiet", "--seed", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["domain_cosine_ndcg@10"]["tuned"] > summary["domain_cosine_ndcg@10"]["base"] + 0.05, summary
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert 0 < summary["weights_bytes"] < json.loads((tuned[0] / "training.json").read_text())["weights_bytes"]
    # Vitrine's text encoder puts the adapter on its base (named in the directory) and gives the tuned vectors;
    # the base's own weights are untouched.
    q, red, blue = SentenceTransformerEncoder(str(out), device="cpu").encode_texts(["crimson watch", "red watch for men",
                                                                                   "blue watch for men"])
    assert float(q @ red) > float(q @ blue)
    bq, bred, bblue = SentenceTransformer(tiny_text_model, device="cpu").encode(
        ["crimson watch", "red watch for men", "blue watch for men"], normalize_embeddings=True)
    assert float(q @ red) - float(q @ blue) > float(bq @ bred) - float(bq @ bblue)
    assert json.loads((out / "training.json").read_text())["config"]["adapter"] == "lora"


def test_train_text_refuses_a_query_from_the_test_judgments(tiny_text_model, toy_text_shop, tmp_path, capsys):
    shop = toy_text_shop["root"]
    leaky = shop / "qrels" / "leaky.tsv"
    leaky.write_text((shop / "qrels" / "train.tsv").read_text() + "azure-watch\ti3\t1\n")
    try:
        rc = main(["train", "text", "--catalog", str(shop / "catalog.jsonl"), "--out", str(tmp_path / "x"), "--base",
                   tiny_text_model, "--queries", str(shop / "queries.jsonl"), "--qrels", str(leaky), "--no-mlflow", "--quiet"])
    finally:
        leaky.unlink()
    assert rc == 2 and "leak the test set" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_pair_generators_use_only_the_catalog_and_are_seeded():
    from vitrine.indexer.catalog import Item

    items = [Item(id="1", title="Red Shirt for Men", attributes={"color": "Red", "gender": "Men", "article_type": "Shirts",
                                                                  "season": "Fall"}),
             Item(id="2", title="A study", description="First finding here. Second finding there. Third one too. Fourth.")]
    pairs = generate_pairs(items, ["attributes", "title", "cloze"], 1, seed=3)
    assert pairs == generate_pairs(items, ["attributes", "title", "cloze"], 1, seed=3)
    by = {(p.source, p.item_id): p for p in pairs}
    assert set(by) == {("attributes", "1"), ("title", "1"), ("title", "2"), ("cloze", "2")}
    assert "fall" not in by[("attributes", "1")].anchor  # context attributes are not product evidence
    assert by[("cloze", "2")].anchor not in by[("cloze", "2")].positive
    with pytest.raises(ValueError, match="unknown pair generator"):
        generate_pairs(items, ["synonyms"], 1, seed=0)


def test_caption_check_holds_out_whole_photos():
    captions = {f"p{i}": [f"c{i}-{j}" for j in range(5)] for i in range(10)}
    train, held = split_captions(captions, 3, seed=0)
    assert len(held) == 3 and not set(train) & set(held)
    queries, corpus, relevant = caption_check(captions, held)
    assert all(len(relevant[p]) == 4 and queries[p] == f"c{p[1:]}-0" for p in held)
    assert np.all([corpus[d].startswith(f"c{p[1:]}-") for p in held for d in relevant[p]])


def test_text_gate_promotes_the_tuned_model_and_rejects_a_destroyed_one(tiny_text_model, toy_text_shop, tuned, tmp_path,
                                                                       capsys):
    from sentence_transformers import SentenceTransformer

    shop = toy_text_shop["root"]
    out, _ = tuned
    destroyed = tmp_path / "destroyed"
    model = SentenceTransformer(str(out), device="cpu")
    for p in model.parameters():
        p.data.zero_()  # every text embeds the same: nothing is found any more
    model.save(str(destroyed))
    registry = tmp_path / "registry"
    common = ["--current", tiny_text_model, "--catalog", str(shop / "catalog.jsonl"), "--queries", str(shop / "queries.jsonl"),
              "--qrels", str(shop / "qrels" / "test.tsv"), "--general", str(shop / "captions.txt"), "--registry", str(registry),
              "--min-gain", "0.02", "--max-general-drop", "0.5"]
    assert main(["gate-text", "--candidate", str(destroyed), *common]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("gate: REJECT") and "[FAIL] text_ndcg@10" in printed
    assert not registry.exists() or not any(registry.iterdir())
    assert main(["gate-text", "--candidate", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("gate: PROMOTE") and json.loads(printed.strip().splitlines()[-1])["promoted_version"] == "v0001"


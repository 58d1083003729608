"""`vitrine judgments export` reports counts, agreement and disagreements, or one error line; and `--judgments DIR`
feeds eval (the same nDCG as hand-written files with the same grades), gate-text and the CLIP gate, whose verdict
then rests on the judged metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitrine.cli.main import main
from vitrine.ranking.judgments import Judgment, JudgmentStore, query_id

# (query text, item, {judge: grade}); the final grade is the median rounded down.
GRADES = [
    ("red dress", "4", {"alice": 2, "bob": 2}),
    ("red dress", "3", {"alice": 1, "bob": 2}),      # -> 1
    ("red dress", "1", {"alice": 0, "bob": 1}),      # -> 0
    ("crimson dress", "4", {"alice": 2}),
    ("crimson dress", "3", {"bob": 1}),
    ("blue bag", "7", {"alice": 2, "bob": 1}),       # -> 1
    ("blue bag", "2", {"alice": 1}),
    ("black shoe women", "8", {"alice": 2, "bob": 2}),
    ("black shoe women", "5", {"alice": 1, "bob": 0}),  # -> 0
]
FINAL = {("red dress", "4"): 2, ("red dress", "3"): 1, ("red dress", "1"): 0, ("crimson dress", "4"): 2,
         ("crimson dress", "3"): 1, ("blue bag", "7"): 1, ("blue bag", "2"): 1, ("black shoe women", "8"): 2,
         ("black shoe women", "5"): 0}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def make_store(folder: Path, tenant: str = "shop") -> JudgmentStore:
    store = JudgmentStore(folder)
    for text, item, by in GRADES:
        for who, grade in by.items():
            store.add(Judgment(ts="2026-12-06T09:00:00.123Z", tenant=tenant, who=who, qid=query_id(text, ""), text=text,
                               photo="", item=item, grade=grade, config={"label": "A"}))
    return store


@pytest.fixture()
def exported(tmp_path, capsys) -> Path:
    make_store(tmp_path / "bundle" / "judgments")
    out = tmp_path / "judged"
    assert main(["judgments", "export", "--from", str(tmp_path / "bundle"), "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def test_export_prints_the_report_and_writes_the_set(tmp_path, capsys):
    make_store(tmp_path / "bundle" / "judgments")
    (tmp_path / "bundle" / "manifest.json").write_text("{}")
    out = tmp_path / "judged"
    assert main(["judgments", "export", "--from", str(tmp_path / "bundle"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(": 4 queries, 9 judged pairs, 2 judge(s)")
    assert printed[1].startswith("  alice & bob: 6 shared pairs, Cohen's kappa ")
    assert "disagreements: 4" in printed
    assert "  'red dress'  item 1: alice 0, bob 1" in printed
    assert printed[-1] == f"next: vitrine eval --bundle {tmp_path / 'bundle'} --judgments {out}"
    assert (out / "queries.jsonl").is_file() and (out / "agreement.json").is_file()

    assert main(["judgments", "export", "--from", str(tmp_path / "bundle" / "judgments"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["queries"], summary["pairs"], summary["judges"], summary["disagreements"]) == (4, 9, 2, 4)
    assert summary["kappa"][0]["shared"] == 6 and summary["files"]["qrels"] == str(out / "qrels" / "test.tsv")


def test_export_errors_are_one_line_naming_the_path_and_the_fix(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["judgments", "export", "--from", str(missing), "--out", str(tmp_path / "o")]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: --from ") and str(missing) in line and "/ui page of `vitrine serve --http-port N`" in line
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "judgments.jsonl").write_text("")
    assert main(["judgments", "export", "--from", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "has no judgments; judgments are made on the /ui page" in one_line(capsys.readouterr().err)
    store = make_store(tmp_path / "mixed", tenant="shop-a")
    make_store(tmp_path / "mixed", tenant="shop-b")
    assert main(["judgments", "export", "--from", str(store.root), "--out", str(tmp_path / "o")]) == 2
    assert "choose one with --tenant NAME" in one_line(capsys.readouterr().err)
    assert main(["judgments", "export", "--from", str(store.root), "--out", str(tmp_path / "o"), "--tenant", "shop-b",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tenant"] == "shop-b"
    assert main(["judgments", "export", "--from", str(store.root), "--out", str(tmp_path / "o"), "--tenant", "x"]) == 2
    assert "of tenant 'x' (tenants here: 'shop-a', 'shop-b')" in one_line(capsys.readouterr().err)


def test_eval_with_judgments_scores_as_the_same_grades_written_by_hand(small_bundle_path, keyword_encoder, exported,
                                                                       tmp_path, monkeypatch, capsys):
    from vitrine.indexer.bundle import Bundle
    from vitrine.ranking.pipeline import Searcher
    from vitrine.serving import assemble

    monkeypatch.setattr(assemble, "open_served", lambda path, config, reranker=None, ranker=None:
                        assemble.Served(Searcher(Bundle(path), keyword_encoder)))
    texts = list(dict.fromkeys(t for t, _, _ in GRADES))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"qid": f"h{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    (tmp_path / "r.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"h{texts.index(t)}\t{item}\t{g}\n" for (t, item), g in FINAL.items()))

    assert main(["eval", "--bundle", small_bundle_path, "--judgments", str(exported), "--json"]) == 0
    judged = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reports"][0]
    assert main(["eval", "--bundle", small_bundle_path, "--queries", str(tmp_path / "q.jsonl"),
                 "--qrels", str(tmp_path / "r.tsv"), "--json"]) == 0
    by_hand = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reports"][0]
    assert judged["queries"] == by_hand["queries"] == 4
    assert 0 < judged["metrics"]["ndcg@10"] < 1
    assert judged["metrics"] == pytest.approx(by_hand["metrics"], abs=1e-12)

    assert main(["eval", "--bundle", small_bundle_path, "--judgments", str(exported), "--qrels", "x.tsv"]) == 2
    assert "drop --queries/--qrels/--image-root, or drop --judgments" in one_line(capsys.readouterr().err)
    assert main(["eval", "--bundle", small_bundle_path, "--judgments", str(tmp_path)]) == 2
    assert "is not an export of judgments" in one_line(capsys.readouterr().err)


def test_gate_text_and_eval_models_take_the_judged_set(exported, tmp_path, monkeypatch, capsys):
    from tests.conftest import make_items
    from vitrine.ranking.metrics import load_qrels
    from vitrine.trainer import text_gate
    from vitrine.trainer.gate import GateConfig, decide

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in make_items()))
    seen = {}

    def fake_gate(candidate, current, data, config, device=None):
        seen["data"] = data
        return decide({"text_ndcg@10": 0.5}, {"text_ndcg@10": 0.6}, text_gate.text_gate_config(config))

    monkeypatch.setattr(text_gate, "run_text_gate", fake_gate)
    assert main(["gate-text", "--candidate", "cand", "--current", "cur", "--catalog", str(catalog),
                 "--judgments", str(exported)]) == 0
    assert capsys.readouterr().out.startswith("gate: PROMOTE")
    assert {q["qid"] for q in seen["data"].queries} == {query_id(t, "") for t, _, _ in GRADES}
    assert seen["data"].qrels == load_qrels(exported / "qrels" / "test.tsv")
    assert seen["data"].qrels[query_id("blue bag", "")] == {"2": 1, "7": 1}

    assert main(["gate-text", "--candidate", "cand", "--current", "cur", "--catalog", str(catalog)]) == 2
    assert "needs --queries and --qrels, or --judgments DIR" in one_line(capsys.readouterr().err)
    assert main(["eval", "models", "--catalog", str(catalog), "--candidates", "x"]) == 2
    assert "vitrine eval models needs --queries and --qrels, or --judgments DIR" in one_line(capsys.readouterr().err)
    assert GateConfig.from_dict({"in_domain_metrics": ["judged_ndcg@10"]}).in_domain_metrics == ("judged_ndcg@10",)


def test_in_domain_config_always_gates_on_the_judged_set_when_given():
    from vitrine.trainer.gate import GateConfig, decide, in_domain_config

    default = GateConfig()
    assert in_domain_config(default, clicks=True, judged=False) is default  # unchanged without --judgments
    assert in_domain_config(default, clicks=True, judged=True).in_domain_metrics == (
        "judged_ndcg@10", "judged_recall@10", "click_ndcg@10", "click_recall@10")
    assert in_domain_config(default, clicks=False, judged=True).in_domain_metrics == ("judged_ndcg@10", "judged_recall@10")
    only_ndcg = GateConfig(in_domain_metrics=("click_ndcg@10", "judged_ndcg@10"))
    assert in_domain_config(only_ndcg, clicks=True, judged=True).in_domain_metrics == ("judged_ndcg@10", "click_ndcg@10")
    report = decide({"click_ndcg@10": 0.1}, {"click_ndcg@10": 0.9}, in_domain_config(default, True, True))
    assert not report.promote and "judged_ndcg@10: not measured (no judged set)" in report.reasons()[0]


def test_gate_with_judgments_decides_on_the_judged_metrics(exported, tmp_path, monkeypatch, capsys):
    from tests.conftest import make_items
    from vitrine.trainer import gate

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in make_items()))
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text(json.dumps({"query": {"text": "red dress"}, "shown": ["4", "3"], "clicked": ["4"],
                                  "ts": "2026-12-06T09:00:00Z"}) + "\n")
    # The candidate wins on clicks but not on what people judged: the judged set must be able to stop it.
    scores = {"cur": {"click_ndcg@10": 0.3, "click_recall@10": 0.3, "judged_ndcg@10": 0.5, "judged_recall@10": 0.5},
              "cand": {"click_ndcg@10": 0.6, "click_recall@10": 0.6, "judged_ndcg@10": 0.5, "judged_recall@10": 0.7}}
    seen = []

    def fake_measure(model_dir, data, config, device=None, k=10):
        seen.append(data)
        return scores[str(model_dir)]

    monkeypatch.setattr(gate, "measure", fake_measure)
    common = ["--candidate", "cand", "--current", "cur", "--catalog", str(catalog)]
    assert main(["gate", *common, "--clicks", str(clicks), "--judgments", str(exported)]) == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [c["metric"] for c in report["checks"] if c["kind"] == "in-domain"] == [
        "judged_ndcg@10", "judged_recall@10", "click_ndcg@10", "click_recall@10"]
    assert [c["passed"] for c in report["checks"]][:4] == [False, True, True, True]
    judged = seen[0].query_sets["judged"]
    assert judged.image_root == exported.resolve() and len(judged.queries) == 4 and len(seen[0].sessions) == 1

    scores["cand"]["judged_ndcg@10"] = 0.6
    assert main(["gate", *common, "--judgments", str(exported)]) == 0  # no --clicks: the judged set alone
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [c["metric"] for c in report["checks"] if c["kind"] == "in-domain"] == ["judged_ndcg@10", "judged_recall@10"]
    assert seen[-1].sessions == []

    assert main(["gate", *common]) == 2
    assert "needs --clicks LOG (held-out clicks), --judgments DIR" in one_line(capsys.readouterr().err)

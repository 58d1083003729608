"""The click simulator: PBM clicks fall with rank as 1/rank**eta, grades set click rates, cascade stops, seeds repeat."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vitrine.cli.main import main
from vitrine.ranking.clicklog import read_click_log
from vitrine.trainer.simulate import (
    ClickModel,
    RankingMode,
    SimulatorConfig,
    examination,
    simulate_clicks,
    simulate_session,
)

# 30 items per grade; shuffled rankings put every grade at every rank equally often.
QRELS = {"q": {f"g{g}-{i}": g for g in (0, 1, 2) for i in range(30)}}
QUERIES = [{"qid": "q", "text": "anything"}]


def sessions(**kw):
    cfg = SimulatorConfig(**({"sessions_per_query": 3000, "distractors": 0, "seed": 3} | kw))
    return list(simulate_clicks(QUERIES, QRELS, cfg))


def test_pbm_click_rate_falls_with_rank_as_examination_predicts():
    out = sessions(click_prob={0: 0.3, 1: 0.3, 2: 0.3})
    clicks_at = Counter(r for s in out for r in s.click_ranks())
    ctr = np.array([clicks_at[r] / len(out) for r in range(1, 11)])
    expected = 0.3 * np.array([examination(r, 1.0) for r in range(1, 11)])
    assert np.all(np.diff(ctr[[0, 1, 3, 9]]) < 0)
    np.testing.assert_allclose(ctr, expected, atol=0.02)
    steep = sessions(click_prob={0: 0.3, 1: 0.3, 2: 0.3}, eta=2.0, sessions_per_query=1000)
    assert sum(r == 3 for s in steep for r in s.click_ranks()) / 1000 < ctr[2] / 2


def test_clicks_follow_the_grades():
    out = sessions(eta=0.0)  # every rank examined: click rates are the grade probabilities themselves
    shown, clicked = Counter(), Counter()
    for s in out:
        shown.update(d.split("-")[0] for d in s.shown)
        clicked.update(d.split("-")[0] for d in s.clicked)
    rate = {g: clicked[g] / shown[g] for g in shown}
    assert rate["g0"] == pytest.approx(0.05, abs=0.015)
    assert rate["g1"] == pytest.approx(0.5, abs=0.03)
    assert rate["g2"] == pytest.approx(0.9, abs=0.03)


def test_cascade_stops_after_its_click_unless_told_to_continue():
    out = sessions(model=ClickModel.CASCADE, sessions_per_query=500)
    assert all(len(s.clicked) <= 1 for s in out)
    first = Counter(s.click_ranks()[0] for s in out if s.clicked)
    assert first[1] > first[3] > first[6]  # each rank is reached only when everything above was skipped
    several = sessions(model=ClickModel.CASCADE, cascade_continue=1.0, sessions_per_query=200)
    assert max(len(s.clicked) for s in several) > 1


def test_ordered_rankings_put_the_best_grades_first_and_distractors_are_unjudged():
    cfg = SimulatorConfig(ranking=RankingMode.ORDERED, judged_per_session=5, distractors=5, depth=10, sessions_per_query=20)
    catalog = [f"d{i}" for i in range(100)]
    for s in simulate_clicks(QUERIES, QRELS, cfg, catalog):
        grades = [QRELS["q"].get(d, 0) for d in s.shown]
        assert grades == sorted(grades, reverse=True)
        assert sum(d.startswith("d") for d in s.shown) == 5


def test_same_seed_same_log_and_a_given_run_is_shown(tmp_path):
    a, b, c = sessions(seed=7, sessions_per_query=20), sessions(seed=7, sessions_per_query=20), sessions(seed=8, sessions_per_query=20)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b] != [x.to_dict() for x in c]
    run = {"q": [f"g2-{i}" for i in range(12)]}
    out = list(simulate_clicks(QUERIES, QRELS, SimulatorConfig(sessions_per_query=2), run=run))
    assert all(s.shown == tuple(run["q"][:10]) for s in out)


def test_single_session_uses_the_grade_probabilities():
    cfg = SimulatorConfig(eta=0.0, click_prob={0: 0.0, 2: 1.0})
    clicked = simulate_session(["x", "y", "z"], {"y": 2, "z": 3}, cfg, np.random.default_rng(0))
    assert clicked == ["y", "z"]  # grade 3 is above the table's top grade and clicks like it


def test_config_from_dict_rejects_bad_values():
    assert SimulatorConfig.from_dict({"model": "cascade", "click_prob": {"2": 1}}).click_prob == {2: 1.0}
    with pytest.raises(ValueError, match="simulator.model' must be one of 'pbm', 'cascade'"):
        SimulatorConfig.from_dict({"model": "dbn"})
    with pytest.raises(ValueError, match=r"click_prob\[2\]"):
        SimulatorConfig.from_dict({"click_prob": {2: 1.5}})
    with pytest.raises(ValueError, match="Unknown key"):
        SimulatorConfig.from_dict({"sessions": 3})


def test_cli_writes_a_valid_log_with_absolute_query_images(toy_shop, tmp_path):
    qpath, rpath = tmp_path / "queries.jsonl", tmp_path / "qrels.tsv"
    qpath.write_text("".join(json.dumps(q) + "\n" for q in toy_shop["queries"]))
    rpath.write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, judged in toy_shop["qrels"].items() for d, g in judged.items()))
    out = tmp_path / "sim.jsonl"
    assert main(["simulate-clicks", "--queries", str(qpath), "--qrels", str(rpath), "--catalog", str(toy_shop["catalog"]),
                 "--out", str(out), "--sessions-per-query", "3", "--model", "cascade", "--seed", "5"]) == 0
    sessions, summary = read_click_log(out)
    assert summary.malformed == 0 and len(sessions) == 3 * len(toy_shop["queries"])
    images = {s.image for s in sessions if s.image}
    assert images and all(Path(p).is_absolute() and Path(p).is_file() for p in images)
    assert all(s.session.startswith("sim-") for s in sessions)
    with pytest.raises(SystemExit, match="click-prob"):
        main(["simulate-clicks", "--queries", str(qpath), "--qrels", str(rpath), "--catalog", str(toy_shop["catalog"]),
              "--out", str(out), "--click-prob", "2=0.9"])

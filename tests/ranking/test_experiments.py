"""Online experiments: sticky arms, team-draft interleaving, the log format, the reports' numbers, and simulated
comparisons in which the better ranker must win (and interleaving must need less traffic than A/B)."""
from __future__ import annotations

import json
import random
import statistics

import pytest

from vitrine.ranking.experiments import (
    ab_from_counts,
    ab_report,
    assign_arm,
    credit,
    experiment_record,
    format_report,
    interleave_from_counts,
    interleave_report,
    read_experiment_log,
    select_experiment,
    sessions_to_significance,
    sign_test,
    significance_path,
    team_draft,
    wilson_interval,
)
from vitrine.ranking.metrics import evaluate
from vitrine.trainer.ab_simulate import (
    candidate_pools,
    noisy_run,
    simulate_ab,
    simulate_interleave,
    smallest_powered_n,
)
from vitrine.trainer.simulate import SimulatorConfig

TS = "2024-05-01T12:00:00Z"


# ---- assignment and interleaving ------------------------------------------------------------------------------


def test_assign_arm_is_sticky_splits_as_asked_and_is_independent_across_experiments():
    sessions = [f"s{i}" for i in range(10_000)]
    arms = [assign_arm(s, "exp1") for s in sessions]
    assert arms == [assign_arm(s, "exp1") for s in sessions]
    assert 0.48 < arms.count("b") / len(arms) < 0.52
    share_b = sum(assign_arm(s, "exp1", split=0.2) == "b" for s in sessions) / len(sessions)
    assert 0.18 < share_b < 0.22
    agree = sum(a == assign_arm(s, "exp2") for s, a in zip(sessions, arms)) / len(sessions)
    assert 0.47 < agree < 0.53
    assert {assign_arm(s, "exp1", split=0.0) for s in sessions[:200]} == {"a"}
    assert {assign_arm(s, "exp1", split=1.0) for s in sessions[:200]} == {"b"}
    with pytest.raises(ValueError, match="split must be a share"):
        assign_arm("s", "exp1", split=1.5)


def test_team_draft_shows_k_unique_ids_each_from_its_team_with_balanced_picks():
    pool = [f"d{i}" for i in range(30)]
    for seed in range(200):
        rng = random.Random(seed)
        a, b = rng.sample(pool, 20), rng.sample(pool, 20)
        k = 5 + seed % 6
        shown, teams = team_draft(a, b, k, random.Random(f"req-{seed}"))
        assert len(shown) == k == len(set(shown)) == len(teams)
        assert all(d in (a if teams[d] == "a" else b) for d in shown)
        picks = sorted(list(teams.values()).count(t) for t in "ab")
        assert picks == [k // 2, k - k // 2]
        # a team always picks its highest-ranked id not yet shown: everything above a pick in its list is shown earlier
        for i, d in enumerate(shown):
            ranked = a if teams[d] == "a" else b
            assert set(ranked[:ranked.index(d)]) <= set(shown[:i])
    assert team_draft(pool, pool[::-1], 8, random.Random("r")) == team_draft(pool, pool[::-1], 8, random.Random("r"))


def test_team_draft_of_equal_lists_is_their_prefix_and_credits_both_teams_evenly():
    ranked = [f"d{i}" for i in range(10)]
    wins_a = 0
    for seed in range(2000):
        shown, teams = team_draft(ranked, ranked, 6, random.Random(seed))
        assert shown == ranked[:6]
        c = credit(teams, shown)  # clicks on everything shown credit each team its picks
        assert c == {"a": 3, "b": 3}
        wins_a += credit(teams, [ranked[0]])["a"]
    assert 0.46 < wins_a / 2000 < 0.54  # a user who always clicks the top id prefers neither ranker


def test_team_draft_fills_from_the_longer_list_without_credit_and_skips_duplicates():
    for seed in range(20):  # a has one id (twice): whoever picks first, a gets x, b gets y, and z, w are filler
        shown, teams = team_draft(["x", "x"], ["y", "z", "w", "v"], 4, random.Random(seed))
        assert set(shown[:2]) == {"x", "y"} and shown[2:] == ["z", "w"] and teams == {"x": "a", "y": "b"}
        assert credit(teams, ["z", "w", "y"]) == {"a": 0, "b": 1}
    assert team_draft([], [], 3, random.Random(0)) == ([], {})
    assert team_draft(["a"], ["b"], 0, random.Random(0)) == ([], {})
    with pytest.raises(ValueError, match="k must not be negative"):
        team_draft(["a"], ["b"], -1, random.Random(0))


def test_credit_counts_clicks_per_team_once_and_ignores_ids_without_a_team():
    teams = {"d1": "a", "d2": "b", "d3": "b"}
    assert credit(teams, ["d2", "d3", "d2", "filler", "d1"]) == {"a": 1, "b": 2}
    assert credit(teams, []) == {"a": 0, "b": 0}


# ---- the log -------------------------------------------------------------------------------------------------


def test_experiment_record_writes_the_documented_lines():
    ab = experiment_record("e", "s1", "r1", 10, arm="b", clicks=2, ts=TS)
    assert ab == {"experiment": "e", "kind": "ab", "arm": "b", "session": "s1", "request_id": "r1", "shown": 10,
                  "clicks": 2, "ts": TS}
    il = experiment_record("e", "s1", "r2", 10, credit={"a": 1, "b": 0}, ts=TS)
    assert il == {"experiment": "e", "kind": "interleave", "session": "s1", "request_id": "r2", "shown": 10,
                  "credit": {"a": 1, "b": 0}, "ts": TS}
    assert experiment_record("e", "s", "r", 3, arm="a", clicks=0)["ts"].endswith("Z")
    with pytest.raises(ValueError, match="either `arm` and `clicks`"):
        experiment_record("e", "s", "r", 3, arm="a", credit={"a": 0, "b": 0})
    with pytest.raises(ValueError, match="field 'arm' must be 'a' or 'b'"):
        experiment_record("e", "s", "r", 3, arm="c", clicks=0)
    with pytest.raises(ValueError, match="exceed the 3 ids shown"):
        experiment_record("e", "s", "r", 3, arm="a", clicks=4)


def test_read_experiment_log_names_the_line_of_a_bad_record(tmp_path):
    good = [experiment_record("e", "s", f"r{i}", 10, arm="a", clicks=1, ts=TS) for i in range(2)]
    path = tmp_path / "experiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + "\n")
    assert read_experiment_log(path) == good
    bad = dict(good[0], credit={"a": -1, "b": 0}, kind="interleave")
    path.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[1]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"line 3: field 'a' must be a non-negative integer"):
        read_experiment_log(path)
    path.write_text(json.dumps(good[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        read_experiment_log(path)
    path.write_text(json.dumps(dict(good[0], ts="yesterday")) + "\n")
    with pytest.raises(ValueError, match="line 1: field 'ts' is not an ISO-8601 timestamp"):
        read_experiment_log(path)


def test_select_experiment_defaults_to_the_last_line_and_names_the_known_ones():
    rows = [experiment_record(name, "s", "r", 5, arm="a", clicks=0, ts=TS) for name in ("old", "new", "old")]
    assert select_experiment(rows)[0] == "old" and len(select_experiment(rows)[1]) == 2
    assert select_experiment(rows, "new")[0] == "new"
    with pytest.raises(ValueError, match="'gone' is not in the log; it has new, old"):
        select_experiment(rows, "gone")
    with pytest.raises(ValueError, match="select one first"):
        ab_report(rows)


# ---- statistics ----------------------------------------------------------------------------------------------


def test_ab_report_matches_hand_computed_figures():
    # 100/1000 vs 150/1000: pooled p = 0.125, SE = sqrt(0.125 * 0.875 * 2/1000) = 0.014790, z = 0.05 / SE = 3.3806,
    # p = 2 * (1 - Phi(3.3806)) = 7.232e-4; 686 per arm for 80% power (the textbook figure for 10% vs 15%).
    r = ab_from_counts("e", 1000, 100, 1000, 150)
    assert r.z == pytest.approx(3.380617, abs=1e-5)
    assert r.p_value == pytest.approx(7.2323e-4, rel=1e-4)
    assert r.a.ci == pytest.approx((0.082909, 0.120152), abs=1e-6)  # Wilson
    assert r.diff_ci == pytest.approx((0.021095, 0.078905), abs=1e-6)  # 0.05 -+ 1.96 * sqrt(.09/1000 + .1275/1000)
    assert r.needed == 686 and r.significant and r.winner == "b"
    rows = [experiment_record("e", f"s{i}", f"r{i}", 10, arm=arm, clicks=int(i < clicked), ts=TS)
            for arm, clicked in (("a", 100), ("b", 150)) for i in range(1000)]
    assert ab_report(rows) == r
    assert ab_from_counts("e", 1000, 150, 1000, 100).winner == "a"
    flat = ab_from_counts("e", 500, 50, 500, 50)
    assert (flat.p_value, flat.significant, flat.winner, flat.needed) == (1.0, False, None, None)
    assert ab_from_counts("e", 0, 0, 10, 3).p_value == 1.0


def test_interleave_report_and_sign_test_match_hand_computed_figures():
    assert sign_test(40, 60) == pytest.approx(0.0568879, rel=1e-6)   # 2 * P(Bin(100, 1/2) <= 40), exact
    assert sign_test(900, 1100) == pytest.approx(8.457e-6, rel=0.05)  # normal approximation beyond 1000 non-ties
    assert sign_test(0, 0) == 1.0 and sign_test(5, 5) == 1.0
    r = interleave_from_counts("e", 40, 60, 100)
    assert (r.share_b, r.significant, r.winner) == (0.6, False, None)
    assert r.share_b_ci == pytest.approx(wilson_interval(60, 100))
    # m = ((1.95996 * 0.5 + 0.84162 * sqrt(0.24)) / 0.1)^2 = 193.85 non-ties; half the impressions are ties -> 388
    assert r.needed == 388
    rows = [experiment_record("e", "s", f"r{i}", 10, credit=c, ts=TS)
            for i, c in enumerate([{"a": 2, "b": 1}] * 40 + [{"a": 0, "b": 1}] * 60 + [{"a": 1, "b": 1}] * 100)]
    assert interleave_report(rows) == r
    assert interleave_from_counts("e", 10, 40, 0).winner == "b" and interleave_from_counts("e", 40, 10, 0).winner == "a"
    with pytest.raises(ValueError, match="alpha must be in"):
        interleave_from_counts("e", 1, 2, 3, alpha=0)


def test_format_report_says_significant_or_how_much_traffic_is_missing():
    text = format_report(ab_from_counts("e", 1000, 100, 1000, 150))
    assert "10.00%" in text and "15.00%" in text and text.endswith("significant at 95%: b is better")
    text = format_report(interleave_from_counts("e", 40, 60, 100))
    assert "b wins 60.0% of non-ties" in text
    assert text.endswith("not significant yet: about 188 more impressions needed (p = 0.0569)")
    assert "no difference observed" in format_report(ab_from_counts("e", 10, 1, 10, 1))


def test_significance_path_refuses_mixed_kinds():
    rows = [experiment_record("e", "s", "r", 5, arm="a", clicks=0, ts=TS),
            experiment_record("e", "s", "r", 5, credit={"a": 0, "b": 0}, ts=TS)]
    with pytest.raises(ValueError, match="mix kinds"):
        significance_path(rows, 1)
    with pytest.raises(ValueError, match="max_n must be at least check_every"):
        sessions_to_significance(lambda n: rows, 10, 5)


# ---- simulated comparisons -----------------------------------------------------------------------------------

# 40 queries with 3 grade-2 and 7 grade-1 items each, re-ranked with 20 distractors by two rankers of different noise.
QRELS = {f"q{i}": {f"q{i}-d{j}": 2 if j < 3 else 1 for j in range(10)} for i in range(40)}
CONFIG = SimulatorConfig()  # PBM, eta 1, click_prob {0: 0.05, 1: 0.5, 2: 0.9}, depth 10


@pytest.fixture(scope="module")
def rankers():
    pools = candidate_pools(QRELS, [f"x{i}" for i in range(300)], judged=10, distractors=20, seed=0)
    good, worse = noisy_run(pools, QRELS, 0.7, seed=1), noisy_run(pools, QRELS, 1.0, seed=2)
    assert evaluate(good, QRELS, [10])["ndcg@10"] > evaluate(worse, QRELS, [10])["ndcg@10"] + 0.05
    return worse.__getitem__, good.__getitem__  # a = control (worse), b = candidate (better)


def test_simulated_rows_are_log_lines_and_repeat_with_the_seed(rankers, tmp_path):
    rows = simulate_interleave(QRELS, *rankers, 50, CONFIG, seed=4)
    assert rows == simulate_interleave(QRELS, *rankers, 50, CONFIG, seed=4)
    path = tmp_path / "experiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + simulate_ab(QRELS, *rankers, 50, CONFIG, seed=4)))
    assert len(read_experiment_log(path)) == 100


def test_interleaving_picks_the_better_ranker_with_less_traffic_than_ab(rankers):
    # Ten seeds, two measures. The first significant check (peeking every 50) varies a lot from seed to seed, so
    # the median is compared; the smallest fixed size at which 8 of 10 seeds are significant for b is steadier.
    # Exploring 150 seeds of this setup: A/B needs ~1,000 impressions and interleaving ~300 for 80% power; the
    # median of 9 seeds never put interleaving behind, the fixed-size measure never in 15 blocks of 10 seeds.
    paths, firsts = {}, {}
    for method, simulate in (("ab", simulate_ab), ("interleave", simulate_interleave)):
        runs = [simulate(QRELS, *rankers, 3000, CONFIG, seed=seed) for seed in range(10)]
        paths[method] = [significance_path(rows, 50) for rows in runs]
        firsts[method] = [sessions_to_significance(lambda n, rows=rows: rows, 50, 3000) for rows in runs]
    assert all(n is not None for n in firsts["interleave"])
    assert all(next(w for _, w in path if w) == "b" for path in paths["interleave"])
    assert statistics.median(firsts["interleave"]) < statistics.median(n or 10**9 for n in firsts["ab"])
    n_ab, n_il = smallest_powered_n(paths["ab"]), smallest_powered_n(paths["interleave"])
    assert n_il is not None and n_ab is not None and n_il < n_ab
    assert interleave_report(simulate_interleave(QRELS, *rankers, 3000, CONFIG, seed=99)).winner == "b"


@pytest.mark.parametrize("method", ["ab", "interleave"])
def test_the_better_ranker_wins_at_the_traffic_the_report_says_is_needed(rankers, method):
    # `needed` is for 80% power at the pilot's *observed* difference, and a pilot of 2,000 impressions estimates that
    # difference with noise (a lucky pilot under-states the traffic). So: 1.5x the pilot's figure, 7 fresh seeds,
    # and a majority of them must be significant for b. Over 20 pilot seeds explored, the worst pilot still gave 4/7.
    simulate, report = (simulate_ab, ab_report) if method == "ab" else (simulate_interleave, interleave_report)
    pilot = report(simulate(QRELS, *rankers, 2000, CONFIG, seed=100))
    needed = 2 * pilot.needed if method == "ab" else pilot.needed  # A/B's figure is per arm
    n = int(1.5 * needed)
    winners = [report(simulate(QRELS, *rankers, n, CONFIG, seed=200 + s)).winner for s in range(7)]
    assert winners.count("b") >= 4 and "a" not in winners

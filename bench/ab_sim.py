"""A/B test vs team-draft interleaving on SIMULATED clicks: how many impressions each needs to tell two rankers apart.

    python bench/ab_sim.py [--qrels ../shared/data/fashion/qrels/text-literal.tsv] [--seeds 20] [--pilot 2000]

Both rankers re-rank the same candidate pools (judged items + unjudged distractors) by grade + Gaussian noise; the
worse one has more noise (a few nDCG@10 points lower). Clicks come from trainer/simulate.py's PBM model. For each
seed it records the first multiple of --check-every impressions at which each method is significant (alpha 0.05)
and which ranker it picked; then it runs a pilot, takes each report's `needed`, and checks on fresh seeds how often
that much traffic really is significant with the better ranker winning (the target is the 80% power asked for).
Writes bench/results/ab_sim.json; the last stdout line is the same JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine, report  # noqa: E402
from vitrine.ranking.experiments import (  # noqa: E402
    ab_from_counts,
    ab_report,
    format_report,
    interleave_from_counts,
    interleave_report,
    significance_path,
)
from vitrine.ranking.metrics import evaluate, load_qrels  # noqa: E402
from vitrine.trainer.ab_simulate import (  # noqa: E402
    candidate_pools,
    noisy_run,
    simulate_ab,
    simulate_interleave,
    smallest_powered_n,
)
from vitrine.trainer.simulate import SimulatorConfig  # noqa: E402

METHODS = {"ab": (simulate_ab, ab_report), "interleave": (simulate_interleave, interleave_report)}


def parse_click_prob(text: str) -> dict[int, float]:
    try:
        return {int(g): float(p) for g, p in (part.split(":") for part in text.split(","))}
    except ValueError:
        raise SystemExit(f"--click-prob must look like 0:0.05,1:0.5,2:0.9, got {text!r}") from None


def race(method: str, qrels: dict, worse: dict, good: dict, config: SimulatorConfig, seeds: range, check_every: int,
         max_n: int) -> dict:
    """Three answers to "how many impressions":

    - first significant check per seed (peeking, as a dashboard watcher would: it stops early and sometimes wrongly);
    - the smallest checked size from which on at least 80% of seeds are significant with the better ranker winning;
    - the report's `needed` on all seeds' impressions pooled (the rates known almost exactly).
    """
    simulate, make_report = METHODS[method]
    paths, first, totals = [], [], [0, 0, 0, 0]
    for seed in seeds:
        rows = simulate(qrels, worse.__getitem__, good.__getitem__, max_n, config, seed=seed)
        paths.append(significance_path(rows, check_every))
        first.append(next(((n, w) for n, w in paths[-1] if w), (None, None)))
        r = make_report(rows)
        counts = ((r.a.impressions, r.a.clicked, r.b.impressions, r.b.clicked) if method == "ab"
                  else (r.wins_a, r.wins_b, r.ties, 0))
        totals = [t + c for t, c in zip(totals, counts)]
    pooled = ab_from_counts("pooled", *totals) if method == "ab" else interleave_from_counts("pooled", *totals[:3])
    return {"first_significant_median": statistics.median(n or max_n + check_every for n, _ in first),
            "first_significant_reached_share": sum(n is not None for n, _ in first) / len(first),
            "first_significant_picked_better_share": sum(w == "b" for _, w in first) / len(first),
            "first_significant_picked_worse_share": sum(w == "a" for _, w in first) / len(first),
            "fixed_n_80pct_significant_for_b": smallest_powered_n(paths, "b", 0.8),
            "pooled_needed": 2 * pooled.needed if method == "ab" else pooled.needed,  # A/B's is per arm
            "first_significant": [n for n, _ in first]}


def pilot_check(method: str, qrels: dict, worse: dict, good: dict, config: SimulatorConfig, pilot: int,
                seeds: range) -> dict:
    """The pilot report's `needed`, then the share of fresh runs of that size that are significant with b winning."""
    simulate, make_report = METHODS[method]
    first = make_report(simulate(qrels, worse.__getitem__, good.__getitem__, pilot, config, seed=10_000))
    print(format_report(first), file=sys.stderr, flush=True)
    needed = first.needed if method == "interleave" else first.needed and 2 * first.needed  # A/B's is per arm
    if not needed:
        return {"pilot": pilot, "needed": None}
    wins = [make_report(simulate(qrels, worse.__getitem__, good.__getitem__, needed, config, seed=20_000 + s)).winner
            for s in seeds]
    return {"pilot": pilot, "pilot_p_value": first.p_value, "needed": needed,
            "share_significant_b_at_needed": sum(w == "b" for w in wins) / len(wins),
            "share_significant_a_at_needed": sum(w == "a" for w in wins) / len(wins)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qrels", default=str(ROOT.parent / "shared" / "data" / "fashion" / "qrels" / "text-literal.tsv"))
    parser.add_argument("--judged", type=int, default=30, help="judged items per candidate pool")
    parser.add_argument("--distractors", type=int, default=30, help="unjudged items per candidate pool")
    parser.add_argument("--noise-good", type=float, default=0.8)
    parser.add_argument("--noise-worse", type=float, default=1.0)
    parser.add_argument("--click-prob", default="0:0.05,1:0.5,2:0.9", help="grade:probability,... (the simulator's default)")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--check-every", type=int, default=100)
    parser.add_argument("--max-n", type=int, default=20_000, help="impressions simulated per seed and method")
    parser.add_argument("--pilot", type=int, default=2000, help="impressions of the pilot whose `needed` is checked")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    qrels = load_qrels(args.qrels)
    catalog_ids = sorted({d for judged in qrels.values() for d in judged})
    pools = candidate_pools(qrels, catalog_ids, args.judged, args.distractors, seed=0)
    good, worse = noisy_run(pools, qrels, args.noise_good, seed=1), noisy_run(pools, qrels, args.noise_worse, seed=2)
    config = SimulatorConfig(click_prob=parse_click_prob(args.click_prob))
    ndcg = {"better (b)": round(evaluate(good, qrels, [10])["ndcg@10"], 4),
            "worse (a)": round(evaluate(worse, qrels, [10])["ndcg@10"], 4)}
    print(f"nDCG@10: {ndcg}", file=sys.stderr, flush=True)
    seeds = range(args.seeds)
    figures: dict = {"ndcg@10": ndcg}
    for method in METHODS:
        r = race(method, qrels, worse, good, config, seeds, args.check_every, args.max_n)
        figures[method] = r | pilot_check(method, qrels, worse, good, config, args.pilot, seeds)
        print(f"{method}: first significant check after a median of {r['first_significant_median']:,} impressions "
              f"(reached in {r['first_significant_reached_share']:.0%} of {args.seeds} runs; picked the better ranker in "
              f"{r['first_significant_picked_better_share']:.0%}, the worse in {r['first_significant_picked_worse_share']:.0%}); "
              f"80% of runs significant for b from a fixed {r['fixed_n_80pct_significant_for_b']} impressions on; pooled rates say {r['pooled_needed']:,} needed; the pilot of "
              f"{args.pilot:,} said {figures[method]['needed']} needed, and that many was significant for b in "
              f"{figures[method].get('share_significant_b_at_needed', 0):.0%} of fresh runs", file=sys.stderr, flush=True)
    ratios = {"first_significant_median": figures["ab"]["first_significant_median"] / figures["interleave"]["first_significant_median"]}
    for key in ("fixed_n_80pct_significant_for_b", "pooled_needed"):
        if figures["ab"][key] and figures["interleave"][key]:
            ratios[key] = figures["ab"][key] / figures["interleave"][key]
    print("A/B needed " + ", ".join(f"{v:.1f}x ({k})" for k, v in ratios.items()) + " the impressions of interleaving",
          file=sys.stderr, flush=True)
    config_out = {k: v for k, v in vars(args).items()} | {"click_model": "pbm", "eta": config.eta, "depth": config.depth}
    report("ab_sim", {"machine": machine(), "config": config_out, "figures": figures | {"ab_over_interleave": {k: round(v, 2) for k, v in ratios.items()}},
                      "seconds": round(time.perf_counter() - t0, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

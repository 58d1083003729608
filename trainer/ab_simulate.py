"""SIMULATED online comparisons (not real traffic): A/B and team-draft interleaving of two rankers over graded qrels.

Clicks come from trainer/simulate.py's click models; the rows are experiment-log lines (ranking/experiments.py),
so the reports and `vitrine ab report` read them exactly as they read a tenant's log. Arm "a" is the control,
"b" the candidate.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from vitrine.ranking.experiments import assign_arm, credit, experiment_record, team_draft
from vitrine.trainer.simulate import ClickModel, SimulatorConfig, examination, simulate_session

Qrels = dict[str, dict[str, int]]
Ranker = Callable[[str], Sequence[str]]  # qid -> ranked doc ids, best first


def candidate_pools(qrels: Qrels, catalog_ids: Sequence[str], judged: int = 30, distractors: int = 30,
                    seed: int = 0) -> dict[str, list[str]]:
    """Per query, what a first stage would hand both rankers: up to `judged` judged ids plus unjudged distractors."""
    rng = np.random.default_rng(seed)
    pools = {}
    for qid in sorted(qrels):
        ids = sorted(qrels[qid])
        pool = [ids[i] for i in rng.permutation(len(ids))[:judged]]
        others = [catalog_ids[i] for i in rng.choice(len(catalog_ids), min(len(catalog_ids), 3 * distractors),
                                                     replace=False)] if catalog_ids else []
        pool += [d for d in others if d not in qrels[qid]][:distractors]
        pools[qid] = pool
    return pools


def noisy_run(pools: Mapping[str, Sequence[str]], qrels: Qrels, noise: float, seed: int = 0) -> dict[str, list[str]]:
    """A ranker of the given quality: each pool sorted by grade + noise * N(0, 1); more noise, a worse ranker.

    Use the run's `__getitem__` as the Ranker; two runs from the same pools differ only in their ordering.
    """
    if noise < 0:
        raise ValueError(f"noise must not be negative, got {noise}.")
    rng = np.random.default_rng(seed)
    run = {}
    for qid in sorted(pools):
        pool = list(pools[qid])
        scores = np.array([max(qrels[qid].get(d, 0), 0) for d in pool], dtype=float) + noise * rng.standard_normal(len(pool))
        run[qid] = [pool[i] for i in np.argsort(-scores, kind="stable")]
    return run


def _clicks(lists: Sequence[Sequence[str]], grades: Sequence[Mapping[str, int]], config: SimulatorConfig,
            rng: np.random.Generator) -> list[list[str]]:
    """Clicked ids for each shown list. PBM is drawn in one (n, depth) matrix; cascade goes list by list."""
    if config.model is not ClickModel.PBM:
        return [simulate_session(shown, judged, config, rng) for shown, judged in zip(lists, grades)]
    exam = np.array([examination(r, config.eta) for r in range(1, config.depth + 1)])
    p = np.zeros((len(lists), config.depth))
    for i, (shown, judged) in enumerate(zip(lists, grades)):
        p[i, :len(shown)] = [config.p_click(judged.get(d, 0)) for d in shown[:config.depth]]
    hit = rng.random(p.shape) < p * exam  # (n, depth)
    return [[shown[j] for j in np.flatnonzero(row)] for shown, row in zip(lists, hit)]


def _impressions(qrels: Qrels, n: int, config: SimulatorConfig, queries: Sequence[str] | None,
                 rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
    """(qid, session, ts) of n impressions: a random query each, from a random one of n sessions."""
    qids = sorted(queries if queries is not None else qrels)
    if not qids:
        raise ValueError("There are no queries to simulate impressions of.")
    t0 = datetime.fromisoformat(config.start_ts)
    t0 = t0 if t0.tzinfo else t0.replace(tzinfo=UTC)
    picks, sessions = rng.integers(len(qids), size=n), rng.integers(max(n, 1), size=n)
    ts = [(t0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z") for i in range(n)]
    return [qids[i] for i in picks], [f"s{s}" for s in sessions], ts


def simulate_ab(qrels: Qrels, control: Ranker, candidate: Ranker, n: int, config: SimulatorConfig | None = None,
                experiment: str = "sim", queries: Sequence[str] | None = None, seed: int | None = None) -> list[dict]:
    """n A/B log rows: each session sees its sticky arm's ranking (a = control, b = candidate), cut to depth.

    `seed` (default: config.seed) seeds the queries, sessions and clicks.
    """
    config = config or SimulatorConfig()
    seed = config.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    qids, sessions, ts = _impressions(qrels, n, config, queries, rng)
    arms = [assign_arm(s, experiment) for s in sessions]
    shown = [list((candidate if arm == "b" else control)(q))[:config.depth] for q, arm in zip(qids, arms)]
    clicked = _clicks(shown, [qrels[q] for q in qids], config, rng)
    return [experiment_record(experiment, s, f"{experiment}-{seed}-{i}", len(sh), arm=arm, clicks=len(c), ts=t)
            for i, (s, arm, sh, c, t) in enumerate(zip(sessions, arms, shown, clicked, ts))]


def simulate_interleave(qrels: Qrels, control: Ranker, candidate: Ranker, n: int, config: SimulatorConfig | None = None,
                        experiment: str = "sim", queries: Sequence[str] | None = None,
                        seed: int | None = None) -> list[dict]:
    """n interleaving log rows: each impression shows the team-draft list of both (a = control, b = candidate).

    The team draft of each request is seeded from its request id, as the server seeds it.
    """
    config = config or SimulatorConfig()
    seed = config.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    qids, sessions, ts = _impressions(qrels, n, config, queries, rng)
    request_ids = [f"{experiment}-{seed}-{i}" for i in range(n)]
    drafts = [team_draft(control(q), candidate(q), config.depth, random.Random(rid)) for q, rid in zip(qids, request_ids)]
    clicked = _clicks([d[0] for d in drafts], [qrels[q] for q in qids], config, rng)
    return [experiment_record(experiment, s, rid, len(shown), credit=credit(teams, c), ts=t)
            for s, rid, (shown, teams), c, t in zip(sessions, request_ids, drafts, clicked, ts)]


def smallest_powered_n(paths: Sequence[Sequence[tuple[int, str | None]]], winner: str = "b",
                       power: float = 0.8) -> int | None:
    """The smallest checked size from which on at least `power` of the seeds' significance paths (one per seed,
    from significance_path on equally long simulations) name `winner`: the fixed sample size a power calculation
    would promise, measured instead of computed. None when no size gets there."""
    if not paths:
        raise ValueError("smallest_powered_n needs at least one significance path.")
    shares = [sum(path[i][1] == winner for path in paths) / len(paths) for i in range(min(map(len, paths)))]
    return next((paths[0][i][0] for i in range(len(shares)) if min(shares[i:]) >= power), None)

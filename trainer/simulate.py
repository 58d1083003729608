"""A click SIMULATOR (not real user data): position-based or cascade clicks on rankings, driven by graded qrels.

For tests, benchmarks and demos of the click loop. The position-based model (PBM) examines rank r with
probability 1 / r**eta; the cascade model scans down the list and stops after a click (or continues with
`cascade_continue`). An examined item is clicked with `click_prob[grade]`, so irrelevant items (grade 0)
get noise clicks and partially relevant ones fewer clicks than fully relevant ones.
"""
from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.serving.schema import config_from_dict
from vitrine.ranking.clicklog import ClickSession, parse_ts

Qrels = dict[str, dict[str, int]]


class ClickModel(enum.StrEnum):
    PBM = "pbm"
    CASCADE = "cascade"


class RankingMode(enum.StrEnum):
    SHUFFLED = "shuffled"   # judged items and distractors in random order: every grade reaches every rank
    ORDERED = "ordered"     # by grade, ties shuffled: a good ranker


@dataclass(frozen=True)
class SimulatorConfig:
    model: ClickModel = ClickModel.PBM
    eta: float = 1.0                        # PBM examination 1 / rank**eta
    click_prob: Mapping[int, float] = field(default_factory=lambda: {0: 0.05, 1: 0.5, 2: 0.9})
    cascade_continue: float = 0.0           # cascade: probability of scanning on after a click
    depth: int = 10                         # items shown per session
    sessions_per_query: int = 10
    distractors: int = 20                   # random catalog items mixed into rankings built from qrels
    judged_per_session: int = 0             # 0: every judged item may be shown; N: N sampled per session
    ranking: RankingMode = RankingMode.SHUFFLED
    seed: int = 0
    start_ts: str = "2024-01-01T00:00:00Z"

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"eta must be non-negative, got {self.eta}.")
        for grade, p in self.click_prob.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"click_prob[{grade}] must be a probability in [0, 1], got {p}.")
        if not 0.0 <= self.cascade_continue <= 1.0:
            raise ValueError(f"cascade_continue must be a probability in [0, 1], got {self.cascade_continue}.")
        for name in ("depth", "sessions_per_query"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("distractors", "judged_per_session"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}.")
        parse_ts(self.start_ts)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> SimulatorConfig:
        obj = dict(obj) if isinstance(obj, Mapping) else obj
        if isinstance(obj, dict) and "click_prob" in obj:  # TOML and JSON keys are strings; grades are integers
            try:
                obj["click_prob"] = {int(g): float(p) for g, p in dict(obj["click_prob"]).items()}
            except (TypeError, ValueError):
                raise ValueError(f"Field 'simulator.click_prob' must map grades to probabilities, "
                                 f"got {obj['click_prob']!r}.") from None
        return config_from_dict(cls, obj, "simulator")

    def p_click(self, grade: int) -> float:
        """Click probability of an examined item; ungraded or negative grades use grade 0's."""
        if grade in self.click_prob:
            return self.click_prob[grade]
        if grade > 0 and self.click_prob:
            return self.click_prob[max(g for g in self.click_prob)]
        return self.click_prob.get(0, 0.0)


def examination(rank: int, eta: float) -> float:
    """PBM examination propensity of a 1-based rank: 1 / rank**eta."""
    return float(rank) ** -eta


def simulate_session(shown: Sequence[str], judged: Mapping[str, int], config: SimulatorConfig,
                     rng: np.random.Generator) -> list[str]:
    """Clicked ids, in rank order, for one session over `shown`."""
    clicked = []
    if config.model is ClickModel.PBM:
        for rank, doc_id in enumerate(shown, start=1):
            if rng.random() < examination(rank, config.eta) and rng.random() < config.p_click(judged.get(doc_id, 0)):
                clicked.append(doc_id)
        return clicked
    for doc_id in shown:  # cascade: examine top-down until satisfied
        if rng.random() < config.p_click(judged.get(doc_id, 0)):
            clicked.append(doc_id)
            if rng.random() >= config.cascade_continue:
                break
    return clicked


def ranking_from_qrels(judged: Mapping[str, int], catalog_ids: Sequence[str], config: SimulatorConfig,
                       rng: np.random.Generator, exclude: Sequence[str] = ()) -> list[str]:
    """A shown list for one session: judged items (all, or a sample) plus random distractors, cut to depth."""
    skip = set(exclude)
    pool = [d for d in judged if d not in skip]
    if config.judged_per_session and len(pool) > config.judged_per_session:
        pool = list(rng.choice(pool, config.judged_per_session, replace=False))
    if config.distractors and catalog_ids:
        taken = set(pool) | set(judged) | skip
        picks = rng.choice(len(catalog_ids), min(len(catalog_ids), config.distractors * 3), replace=False)
        pool += [catalog_ids[i] for i in picks if catalog_ids[i] not in taken][:config.distractors]
    order = rng.permutation(len(pool))
    pool = [pool[i] for i in order]
    if config.ranking is RankingMode.ORDERED:
        pool.sort(key=lambda d: -judged.get(d, 0))  # stable: ties keep their shuffled order
    return pool[:config.depth]


def simulate_clicks(queries: Sequence[Mapping[str, Any]], qrels: Qrels, config: SimulatorConfig,
                    catalog_ids: Sequence[str] = (), run: Mapping[str, Sequence[str]] | None = None,
                    image_root: Path | None = None) -> Iterator[ClickSession]:
    """Sessions for each query (dicts with qid, text?, image?, exclude_ids?) that has qrels.

    With `run` (qid -> ranked ids) every session of a query is shown that ranking's top `depth`;
    without it each session gets a fresh ranking from the qrels (see ranking_from_qrels). Relative query
    image paths are resolved against `image_root` and logged as absolute paths.
    """
    rng = np.random.default_rng(config.seed)
    t0 = datetime.fromisoformat(config.start_ts)
    if t0.tzinfo is None:
        t0 = t0.replace(tzinfo=timezone.utc)
    n = 0
    for q in queries:
        qid = str(q["qid"])
        judged = qrels.get(qid)
        if not judged or (run is not None and qid not in run):
            continue
        image = q.get("image")
        if image and image_root is not None and not image.startswith(("http://", "https://")) and not Path(image).is_absolute():
            image = str((image_root / image).resolve())
        for i in range(config.sessions_per_query):
            if run is not None:
                shown = [d for d in run[qid] if d not in set(q.get("exclude_ids", ()))][:config.depth]
            else:
                shown = ranking_from_qrels(judged, catalog_ids, config, rng, q.get("exclude_ids", ()))
            clicked = simulate_session(shown, judged, config, rng)
            ts = (t0 + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
            n += 1
            yield ClickSession(shown=tuple(shown), clicked=tuple(clicked), ts=ts, text=q.get("text") or "",
                               image=image or None, session=f"sim-{qid}-{i}")

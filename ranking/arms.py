"""Which arm answers a search: sticky A/B assignment, team-draft interleaving of both arms' rankings, and the credit
a click earns a team. Pure functions; the log they feed is ranking/experiment_log.py, its reports ranking/experiments.py.
"""
from __future__ import annotations

import enum
import hashlib
import random
from collections.abc import Mapping, Sequence


class ExperimentKind(enum.StrEnum):
    AB = "ab"                    # each session sees one arm
    INTERLEAVE = "interleave"    # every response interleaves both arms' rankings


class Arm(enum.StrEnum):
    """An experiment's arm (A/B) or team (interleaving): "a" serves the current models, "b" the candidate."""

    A = "a"
    B = "b"


ARMS = tuple(Arm)


def assign_arm(session: str, experiment: str, split: float = 0.5) -> Arm:
    """Sticky arm of a session: "b" for a `split` share of sessions, from sha256(f"{experiment}:{session}")."""
    if not 0.0 <= split <= 1.0:
        raise ValueError(f"split must be a share in [0, 1], got {split}.")
    digest = hashlib.sha256(f"{experiment}:{session}".encode()).digest()
    return Arm.B if int.from_bytes(digest[:8], "big") / 2**64 < split else Arm.A


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: random.Random) -> tuple[list[str], dict[str, Arm]]:
    """Team-draft interleaving (Radlinski et al. 2008): the shown list (at most k unique ids) and id -> team.

    The team with fewer picks picks next (a coin flip on a tie), taking its highest-ranked id not yet shown. When the
    team due to pick has run out, the other list fills the rest *without a team*, so clicks on the filler credit
    nobody and the teams stay balanced (Radlinski et al. stop there instead, showing fewer than k). Seed `rng` from
    the request id (random.Random(request_id)) so the same request always gets the same list and teams.
    """
    if k < 0:
        raise ValueError(f"k must not be negative, got {k}.")
    shown: list[str] = []
    teams: dict[str, Arm] = {}
    seen: set[str] = set()
    pos = dict.fromkeys(ARMS, 0)
    lists = {Arm.A: a, Arm.B: b}
    picks = dict.fromkeys(ARMS, 0)

    def next_id(team: Arm) -> str | None:
        ids = lists[team]
        while pos[team] < len(ids) and ids[pos[team]] in seen:
            pos[team] += 1
        return ids[pos[team]] if pos[team] < len(ids) else None

    while len(shown) < k:
        heads = {t: next_id(t) for t in ARMS}
        if heads[Arm.A] is None and heads[Arm.B] is None:
            break
        if picks[Arm.A] != picks[Arm.B]:
            team = Arm.A if picks[Arm.A] < picks[Arm.B] else Arm.B
        else:
            team = (Arm.A if rng.random() < 0.5 else Arm.B) if None not in heads.values() else None
        if team is not None and heads[team] is not None:
            doc_id = heads[team]
            teams[doc_id] = team
            picks[team] += 1
        else:  # the team due to pick is spent: the other fills uncredited, which would otherwise unbalance the teams
            doc_id = heads[Arm.A] if heads[Arm.A] is not None else heads[Arm.B]
        shown.append(doc_id)
        seen.add(doc_id)
    return shown, teams


def credit(teams: Mapping[str, str], clicked: Sequence[str]) -> dict[Arm, int]:
    """Clicks per team; a repeated click on one id counts once, and clicks on ids without a team are ignored."""
    out = dict.fromkeys(ARMS, 0)
    for doc_id in dict.fromkeys(clicked):
        team = teams.get(doc_id)
        if team in out:
            out[team] += 1
    return out

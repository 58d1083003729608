"""Online comparison of two ranker versions for one tenant: the reports on its experiment log (CTR per arm for A/B,
wins per team for interleaving), their intervals and significance, and the traffic a verdict needs.

Which arm answers a search is ranking/arms.py; the log's lines and how they are read back, ranking/experiment_log.py.
Their names stay importable from here too, for the simulator, the configuration, the benchmarks and the tests.
The unit of analysis is the impression (one search = one line), not the session: a session that searches often
weighs more, and its impressions are not independent, so intervals are slightly too narrow when sessions repeat.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from vitrine.ranking.arms import ARMS, Arm, ExperimentKind, assign_arm, credit, team_draft
from vitrine.ranking.experiment_log import (
    Assignment,
    experiment_record,
    join_events,
    parse_record,
    read_experiment_log,
    select_experiment,
)

__all__ = [  # the reports, and the assignment and log names re-exported from their modules
    "ARMS", "AbReport", "Arm", "ArmStats", "Assignment", "ExperimentKind", "InterleaveReport", "ab_from_counts",
    "ab_needed", "ab_report", "assign_arm", "credit", "experiment_record", "format_report", "interleave_from_counts",
    "interleave_report", "join_events", "parse_record", "read_experiment_log", "select_experiment",
    "sessions_to_significance", "sign_test", "significance_path", "team_draft", "wilson_interval",
]

EXACT_SIGN_TEST_MAX = 1000
_NORMAL = NormalDist()


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n at confidence 1 - alpha; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided sign (binomial, p = 1/2) test: exact with math.comb up to 1000 non-ties, else normal with continuity."""
    n = wins_a + wins_b
    if n == 0:
        return 1.0
    if n <= EXACT_SIGN_TEST_MAX:
        tail = sum(math.comb(n, i) for i in range(min(wins_a, wins_b) + 1))
        return min(1.0, 2 * tail / 2**n)  # big-int true division is correctly rounded
    z = max(0.0, abs(wins_b - n / 2) - 0.5) / (math.sqrt(n) / 2)
    return min(1.0, 2 * _NORMAL.cdf(-z))


def _check_levels(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}.")


def _confidence(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


@dataclass(frozen=True)
class ArmStats:
    impressions: int
    clicked: int                  # impressions with at least one click
    ctr: float
    ci: tuple[float, float]


@dataclass(frozen=True)
class AbReport:
    """A/B on CTR (share of impressions with >= 1 click); `needed` is impressions per arm for `power`."""

    experiment: str
    a: ArmStats
    b: ArmStats
    diff: float                   # ctr(b) - ctr(a)
    diff_ci: tuple[float, float]  # normal approximation, unpooled standard error
    z: float                      # two-proportion z statistic, pooled standard error
    p_value: float
    alpha: float
    power: float
    significant: bool
    winner: Arm | None
    needed: int | None            # None when no difference has been observed

    def more_needed(self) -> int | None:
        """Impressions still missing, both arms together, to reach `needed` in each; None when `needed` is."""
        if self.needed is None:
            return None
        return max(0, self.needed - self.a.impressions) + max(0, self.needed - self.b.impressions)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": ExperimentKind.AB, **asdict(self), "more_needed": self.more_needed()}


@dataclass(frozen=True)
class InterleaveReport:
    """Team-draft interleaving: per impression the team with more credited clicks wins, else a tie.

    `needed` (impressions, ties included) = m / q, with q the observed non-tie rate and m the non-ties a two-sided
    sign test needs for `power` at the observed b share p: m = ((z_{1-alpha/2} * 0.5 + z_power * sqrt(p(1-p))) / (p - 0.5))².
    """

    experiment: str
    impressions: int
    wins_a: int
    wins_b: int
    ties: int
    share_b: float                # b's share of the non-ties
    share_b_ci: tuple[float, float]
    p_value: float
    alpha: float
    power: float
    significant: bool
    winner: str | None
    needed: int | None

    def more_needed(self) -> int | None:
        """Impressions still missing to reach `needed`; None when `needed` is."""
        return None if self.needed is None else max(0, self.needed - self.impressions)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": ExperimentKind.INTERLEAVE, **asdict(self), "more_needed": self.more_needed()}


def ab_needed(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Impressions per arm for a two-sided two-proportion test to detect p1 vs p2 with `power`; None if p1 == p2."""
    if p1 == p2:
        return None
    pbar = (p1 + p2) / 2
    root = (_NORMAL.inv_cdf(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar))
            + _NORMAL.inv_cdf(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2)))
    return math.ceil(root**2 / (p1 - p2) ** 2)


def ab_from_counts(experiment: str, n_a: int, clicked_a: int, n_b: int, clicked_b: int, alpha: float = 0.05,
                   power: float = 0.8) -> AbReport:
    """The A/B report from counts: impressions and impressions with >= 1 click per arm."""
    _check_levels(alpha, power)
    arms = [ArmStats(n, c, c / n if n else 0.0, wilson_interval(c, n, alpha))
            for n, c in ((n_a, clicked_a), (n_b, clicked_b))]
    p1, p2 = arms[0].ctr, arms[1].ctr
    diff, z, p_value, diff_ci = p2 - p1, 0.0, 1.0, (-1.0, 1.0)
    if n_a and n_b:
        pooled = (clicked_a + clicked_b) / (n_a + n_b)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
        if se > 0:
            z = diff / se
            p_value = 2 * _NORMAL.cdf(-abs(z))
        half = _NORMAL.inv_cdf(1 - alpha / 2) * math.sqrt(p1 * (1 - p1) / n_a + p2 * (1 - p2) / n_b)
        diff_ci = (diff - half, diff + half)
    significant = p_value < alpha
    needed = ab_needed(p1, p2, alpha, power) if n_a and n_b else None
    return AbReport(experiment, arms[0], arms[1], diff, diff_ci, z, p_value, alpha, power, significant,
                    (Arm.B if diff > 0 else Arm.A) if significant else None, needed)


def interleave_from_counts(experiment: str, wins_a: int, wins_b: int, ties: int, alpha: float = 0.05,
                           power: float = 0.8) -> InterleaveReport:
    """The interleaving report from counts: impressions b lost, won and tied."""
    _check_levels(alpha, power)
    decided = wins_a + wins_b
    impressions = decided + ties
    share = wins_b / decided if decided else 0.5
    p_value = sign_test(wins_a, wins_b)
    significant = p_value < alpha
    needed = None
    if decided and share != 0.5:
        root = _NORMAL.inv_cdf(1 - alpha / 2) * 0.5 + _NORMAL.inv_cdf(power) * math.sqrt(share * (1 - share))
        needed = math.ceil((root / (share - 0.5)) ** 2 * impressions / decided)
    return InterleaveReport(experiment, impressions, wins_a, wins_b, ties, share, wilson_interval(wins_b, decided, alpha),
                            p_value, alpha, power, significant, (Arm.B if share > 0.5 else Arm.A) if significant else None,
                            needed)


def _one_experiment(rows: Iterable[Mapping[str, Any]], kind: ExperimentKind) -> tuple[str, list[Mapping[str, Any]]]:
    chosen = [r for r in rows if r["kind"] == kind]
    names = {r["experiment"] for r in chosen}
    if not chosen:
        raise ValueError(f"There are no {kind.value!r} rows to report on.")
    if len(names) > 1:
        raise ValueError(f"The rows span {len(names)} experiments ({', '.join(sorted(names))}); select one first.")
    return names.pop(), chosen


def _tally(counts: dict[str, int], row: Mapping[str, Any]) -> None:
    """Adds one row: A/B counts impressions ("a", "b") and clicked ones; interleaving counts wins ("a", "b") and ties."""
    if row["kind"] == ExperimentKind.AB:
        counts[row["arm"]] += 1
        counts["clicked_" + row["arm"]] += row["clicks"] > 0
    else:
        ca, cb = row["credit"][Arm.A], row["credit"][Arm.B]
        counts[Arm.A if ca > cb else Arm.B if cb > ca else "tie"] += 1


def _counts(rows: Iterable[Mapping[str, Any]], kind: ExperimentKind) -> tuple[str, dict[str, int]]:
    name, chosen = _one_experiment(rows, kind)
    counts = dict.fromkeys(("a", "b", "clicked_a", "clicked_b", "tie"), 0)
    for r in chosen:
        _tally(counts, r)
    return name, counts


def ab_report(rows: Iterable[Mapping[str, Any]], alpha: float = 0.05, power: float = 0.8) -> AbReport:
    """CTR per arm over the A/B rows (one experiment); other kinds of rows are left out."""
    name, c = _counts(rows, ExperimentKind.AB)
    return ab_from_counts(name, c["a"], c["clicked_a"], c["b"], c["clicked_b"], alpha, power)


def interleave_report(rows: Iterable[Mapping[str, Any]], alpha: float = 0.05, power: float = 0.8) -> InterleaveReport:
    """Wins per team over the interleaving rows (one experiment); other kinds of rows are left out."""
    name, c = _counts(rows, ExperimentKind.INTERLEAVE)
    return interleave_from_counts(name, c["a"], c["b"], c["tie"], alpha, power)


def _verdict(report: AbReport | InterleaveReport) -> str:
    level = _confidence(report.alpha)
    if report.significant:
        return f"significant at {level}: {report.winner} is better"
    more = report.more_needed()
    if more is None:
        return f"not significant yet: no difference observed so far (p = {report.p_value:.3g})"
    if more == 0:
        return (f"not significant at {level} (p = {report.p_value:.3g}), although the traffic the observed difference "
                f"needs ({report.needed:,}) is reached: the true difference is likely smaller than observed")
    return f"not significant yet: about {more:,} more impressions needed (p = {report.p_value:.3g})"


def format_report(report: AbReport | InterleaveReport) -> str:
    """A plain-text table of either report, ending with the verdict."""
    level = _confidence(report.alpha)
    if isinstance(report, AbReport):
        lines = [f"experiment {report.experiment}: A/B on CTR (impressions with >= 1 click), unit = impression",
                 f"{'arm':<4} {'impressions':>11} {'clicked':>8} {'CTR':>8}   {level} interval"]
        for arm, s in ((Arm.A, report.a), (Arm.B, report.b)):
            lines.append(f"{arm:<4} {s.impressions:>11,} {s.clicked:>8,} {s.ctr:>8.2%}   [{s.ci[0]:.2%}, {s.ci[1]:.2%}]")
        lo, hi = report.diff_ci
        lines.append(f"b - a: {report.diff * 100:+.2f} points, {level} interval [{lo * 100:+.2f}, {hi * 100:+.2f}]; "
                     f"z = {report.z:.2f}, p = {report.p_value:.3g}")
        per_arm = "-" if report.needed is None else f"{report.needed:,}"
        lines.append(f"impressions per arm for {report.power:.0%} power at these rates: {per_arm}")
    else:
        lo, hi = report.share_b_ci
        lines = [f"experiment {report.experiment}: team-draft interleaving, unit = impression",
                 f"{'impressions':>11} {'wins a':>8} {'wins b':>8} {'ties':>8}",
                 f"{report.impressions:>11,} {report.wins_a:>8,} {report.wins_b:>8,} {report.ties:>8,}",
                 (f"b wins {report.share_b:.1%} of non-ties, {level} interval [{lo:.1%}, {hi:.1%}]; "
                  f"sign test p = {report.p_value:.3g}")]
        total = "-" if report.needed is None else f"{report.needed:,}"
        lines.append(f"impressions for {report.power:.0%} power at this preference: {total}")
    return "\n".join([*lines, _verdict(report)])


def significance_path(rows: Sequence[Mapping[str, Any]], check_every: int, alpha: float = 0.05) -> list[tuple[int, Arm | None]]:
    """(n, winner) at every multiple n of check_every: the report on the first n rows; winner None = not significant.

    The rows are impressions of one kind; counts accumulate in one pass, so a long path costs one pass over the rows.
    """
    if check_every < 1:
        raise ValueError(f"check_every must be at least 1, got {check_every}.")
    kinds = {r["kind"] for r in rows}
    if len(kinds) > 1:
        raise ValueError(f"The rows mix kinds {sorted(map(str, kinds))}; report on one method at a time.")
    counts = dict.fromkeys(("a", "b", "clicked_a", "clicked_b", "tie"), 0)
    path: list[tuple[int, Arm | None]] = []
    for i, r in enumerate(rows, start=1):
        _tally(counts, r)
        if i % check_every == 0:
            report = (ab_from_counts("", counts["a"], counts["clicked_a"], counts["b"], counts["clicked_b"], alpha)
                      if r["kind"] == ExperimentKind.AB
                      else interleave_from_counts("", counts["a"], counts["b"], counts["tie"], alpha))
            path.append((i, report.winner))
    return path


def sessions_to_significance(simulate: Callable[[int], list[dict]], check_every: int, max_n: int,
                             alpha: float = 0.05) -> int | None:
    """Smallest n (a multiple of check_every, up to max_n) whose first n rows of simulate(max_n) are significant.

    For measuring simulations only: peeking at every check and stopping at the first significant one inflates the
    false-positive rate well above alpha (and finds significance early), so it is no stopping rule for a real test.
    """
    if max_n < check_every:
        raise ValueError(f"max_n must be at least check_every, got {max_n} and {check_every}.")
    path = significance_path(simulate(max_n)[:max_n], check_every, alpha)
    return next((n for n, winner in path if winner is not None), None)

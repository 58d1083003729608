"""`vitrine ab report` on small experiment logs: both arms and the verdict in the table, --json, tenants, mistakes."""
from __future__ import annotations

import argparse
import json

import pytest

from vitrine.cli import ab
from vitrine.ranking.experiments import experiment_record

TS = "2024-05-01T12:00:00Z"


def ab_rows(name: str, clicked_a: int, clicked_b: int, n: int = 1000) -> list[dict]:
    return [experiment_record(name, f"s{i}", f"{name}-{arm}-{i}", 10, arm=arm, clicks=int(i < clicked), ts=TS)
            for arm, clicked in (("a", clicked_a), ("b", clicked_b)) for i in range(n)]


def interleave_rows(name: str, wins_a: int, wins_b: int, ties: int) -> list[dict]:
    credits = [{"a": 1, "b": 0}] * wins_a + [{"a": 0, "b": 2}] * wins_b + [{"a": 0, "b": 0}] * ties
    return [experiment_record(name, f"s{i}", f"{name}-{i}", 10, credit=c, ts=TS) for i, c in enumerate(credits)]


def write_log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vitrine")
    ab.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ab", "report", *argv])
    return args.handler(args)


def test_report_prints_both_arms_and_a_significant_verdict(tmp_path, capsys):
    log = write_log(tmp_path / "experiment.jsonl", ab_rows("ranker-v2", 100, 150))
    assert run(["--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "experiment ranker-v2" in out
    lines = out.splitlines()
    assert any(line.startswith("a ") and "10.00%" in line for line in lines)
    assert any(line.startswith("b ") and "15.00%" in line for line in lines)
    assert "significant at 95%: b is better" in out


def test_default_experiment_is_the_last_lines_and_both_kinds_are_reported(tmp_path, capsys):
    rows = ab_rows("old", 100, 150) + ab_rows("new", 100, 104) + interleave_rows("new", 40, 60, 100)
    log = write_log(tmp_path / "experiment.jsonl", rows)
    assert run(["--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "experiment new: A/B" in out and "experiment new: team-draft interleaving" in out and "old" not in out
    assert out.count("not significant yet: about") == 2 and "significant at 95%" not in out
    assert "b wins 60.0% of non-ties" in out
    assert run(["--log", str(log), "--experiment", "old", "--alpha", "0.01"]) == 0
    assert "significant at 99%: b is better" in capsys.readouterr().out


def test_json_output_parses_and_carries_the_figures(tmp_path, capsys):
    tenants = tmp_path / "tenants"
    write_log(tenants / "shop1" / "logs" / "experiment.jsonl", ab_rows("e", 100, 150) + interleave_rows("e", 40, 60, 100))
    assert run(["--tenant", "shop1", "--tenants", str(tenants), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["experiment"] == "e" and out["log"].endswith("shop1/logs/experiment.jsonl")
    by_kind = {r["kind"]: r for r in out["reports"]}
    assert by_kind["ab"]["a"]["ctr"] == 0.1 and by_kind["ab"]["significant"] is True and by_kind["ab"]["winner"] == "b"
    assert by_kind["ab"]["needed"] == 686
    assert by_kind["interleave"]["significant"] is False and by_kind["interleave"]["more_needed"] == 188


def test_mistakes_raise_value_errors_that_name_them(tmp_path):
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    with pytest.raises(ValueError, match="Unknown tenant 'nobody'"):
        run(["--tenant", "nobody", "--tenants", str(tenants)])
    with pytest.raises(ValueError, match="plain tenant name"):
        run(["--tenant", "../etc", "--tenants", str(tenants)])
    with pytest.raises(ValueError, match="needs --tenants"):
        run(["--tenant", "shop1"])
    (tenants / "shop1").mkdir()
    with pytest.raises(FileNotFoundError, match="experiment.jsonl does not exist"):
        run(["--tenant", "shop1", "--tenants", str(tenants)])
    log = write_log(tmp_path / "x.jsonl", ab_rows("e", 1, 2, n=3))
    with pytest.raises(ValueError, match="'other' is not in the log; it has e"):
        run(["--log", str(log), "--experiment", "other"])
    with pytest.raises(ValueError, match="--alpha must be between 0 and 1"):
        run(["--log", str(log), "--alpha", "5"])
    log.write_text(log.read_text() + '{"experiment": "e", "kind": "ab"}\n')
    with pytest.raises(ValueError, match="line 7: "):
        run(["--log", str(log)])

"""SIGKILL the server at random moments during acknowledged writes, restart it, and find every acked change whole."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from crash_cycles import run_cycles  # noqa: E402


def test_a_few_kill_9_cycles_lose_no_acknowledged_write(tmp_path):
    summary = run_cycles(3, tmp_path, seed=1, max_delay_s=0.8)
    assert summary["acked_writes"] > 0
    assert summary["acked_writes_lost_or_wrong"] == 0, summary["errors"]
    assert not summary["errors"] and summary["clean_final_shutdown"]


@pytest.mark.slow
def test_fifty_kill_9_cycles_lose_no_acknowledged_write(tmp_path):
    summary = run_cycles(50, tmp_path, seed=2)
    assert summary["acked_writes"] > 1000
    assert summary["acked_writes_lost_or_wrong"] == 0, summary["errors"]
    assert not summary["errors"] and summary["clean_final_shutdown"]

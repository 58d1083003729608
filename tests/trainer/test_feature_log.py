"""The ranker reads the server's feature log through the one JSONL reader: known queries kept, others counted,
a malformed line named by its number."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitrine.ranking.features import FEATURES, SCHEMA_VERSION, features_to_dict
from vitrine.trainer.ranker import read_feature_log


def record(text: str, ids: list[str], schema: int = SCHEMA_VERSION) -> str:
    rows = {i: np.arange(len(FEATURES), dtype=np.float64) + n for n, i in enumerate(ids)}
    return json.dumps({"schema_version": schema, "query": {"text": text},
                       "candidates": [{"id": i, "features": features_to_dict(x)} for i, x in rows.items()]}) + "\n"


def test_feature_log_keeps_known_queries_and_names_a_bad_line(tmp_path):
    log = tmp_path / "features.jsonl"
    log.write_text(record("red  shirt", ["a", "b"]) + "\n" + record("something else", ["c"]))
    groups, skipped = read_feature_log(log, {"red shirt": "q1"})
    assert skipped == 1 and [g.qid for g in groups] == ["q1"] and groups[0].ids == ["a", "b"]
    assert groups[0].X.shape == (2, len(FEATURES)) and groups[0].X[1, 0] == 1.0
    log.write_text(record("red shirt", ["a"]) + record("red shirt", ["a"], schema=SCHEMA_VERSION + 1))
    with pytest.raises(ValueError, match=r"features.jsonl: line 2: not a feature-log record: schema version"):
        read_feature_log(log, {"red shirt": "q1"})

"""The shop features over a real gRPC server: the proto fields reach the pipeline and come back, and bad ones get
INVALID_ARGUMENT naming the field."""
from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from vitrine.ranking.pipeline import Searcher
from vitrine.server.app import create_server, single
from vitrine.server.client import VitrineClient
from vitrine.serving.assemble import Served


@pytest.fixture()
def target(small_bundle, keyword_encoder):
    served = create_server(single(Served(Searcher(small_bundle, keyword_encoder))), "127.0.0.1:0")
    yield f"127.0.0.1:{served.port}"
    served.server.stop(0)


def test_browse_with_facets_sort_and_rules_over_grpc(target):
    with VitrineClient(target) as client:
        result = client.search(where=[{"field": "color", "any_of": ["black", "blue"]}], sort="-price", k=3,
                               facets=["color", {"field": "price", "ranges": [30, 60]}], pins={"2": 2, "1": 1},
                               fields=["price"], explain=True)
    # By price descending; item 2 pinned at 2; item 1 (red) is pinned too, but the filter leaves it out.
    assert [h.id for h in result.hits] == ["8", "2", "3"]
    assert result.hits[1].rules == ["pinned at 2"] and "pinned at 2" in result.hits[1].explanation
    assert result.hits[0].sort_value == 70.0 and "by price descending" in result.hits[0].explanation
    assert result.facet_scope == "catalog" and result.total_candidates == 5
    color, price = result.facets
    assert color["disjunctive"] and {v["value"]: v["count"] for v in color["values"]}["Red"] == 2
    assert [b["count"] for b in price["buckets"]] == [1, 1, 2] and price["missing"] == 1


def test_highlights_like_and_boosts_over_grpc(target):
    with VitrineClient(target) as client:
        hl = client.search("black dresses", k=8, highlight=True)
        like = client.search(like_id="3", k=3)
        boosted = client.search("black", boosts=[{"field": "color", "value": "green", "add": 5}], k=3)
    first = next(h for h in hl.hits if h.id == "3")
    assert first.lexical_match and first.highlights[0]["html"] == "<b>Black</b> <b>Dress</b>"
    assert any(h.lexical_match is False and not h.highlights for h in hl.hits)
    assert "3" not in [h.id for h in like.hits] and like.hits
    assert boosted.hits[0].id == "5" and boosted.hits[0].rules == ["boost color=green +5"]


@pytest.mark.parametrize("kwargs,field", [
    ({"where": [{"field": "material", "any_of": ["silk"]}]}, "where.material"),
    ({"text": "x", "where": [{"field": "color", "min": 3}]}, "where.color"),
    ({"text": "x", "facets": ["nope"]}, "facets[0].field"),
    ({"text": "x", "sort": "color"}, "sort.field"),
    ({"text": "x", "boosts": [{"field": "color", "value": "red", "factor": -2}]}, "boosts[0].factor"),
    ({"like_id": "missing"}, "like_id"),
    ({"where": [{"field": " ", "any_of": ["red"]}]}, "where.field"),
    ({"where": [{"field": "price", "min": "NaN"}]}, "where.price"),
    ({"text": "x", "boosts": [{"field": "brand", "value": "acme", "factor": 2}]}, "boosts[0].field"),
])
def test_bad_shop_fields_name_the_field(target, kwargs, field):
    with VitrineClient(target) as client, pytest.raises(grpc.RpcError) as err:
        client.search(**kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()


def test_cli_search_flags_reach_the_server(target):
    out = subprocess.run([sys.executable, "-m", "vitrine.cli.main", "search", "--target", target, "--any",
                          "gender=women", "--range", "price=..60", "--sort", "price", "--facet", "color", "--k", "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in rows[:2]] == ["2", "7"] and rows[0]["sort_value"] == 25.0
    assert {v["value"] for v in rows[-1]["facets"][0]["values"]} == {"Black", "Blue", "Red"}
    bad = subprocess.run([sys.executable, "-m", "vitrine.cli.main", "search", "--target", target, "--pin", "x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--pin" in bad.stderr and "Traceback" not in bad.stderr

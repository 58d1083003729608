"""Click-driven CLIP fine-tuning: examples, weights and hard negatives; it learns the shop's words; MLflow tracking."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vitrine.encoders.clip import ClipEncoder
from vitrine.ranking.clicklog import read_click_log, session_from_dict
from vitrine.trainer.click_clip import (
    ClickTrainConfig,
    click_examples,
    ipw_weight,
    split_by_query,
)
from vitrine.trainer.gate import GateConfig, GateData, measure


def make(text: str, shown: list[str], clicked: list[str], image: str | None = None):
    return session_from_dict({"query": {"text": text, "image": image}, "shown": shown, "clicked": clicked,
                              "ts": "2024-01-01T00:00:00Z"})


def test_examples_weigh_clicks_by_inverse_propensity_and_take_skipped_items_above():
    sessions = [make("a", ["x1", "x2", "x3", "x4", "x5"], ["x2", "x5", "elsewhere"]), make("b", ["y1", "y2"], ["y1"])]
    cfg = ClickTrainConfig(hard_negatives=2, eta=1.0, max_weight=4.0)
    examples, skipped = click_examples(sessions, Path("."), cfg, known=lambda d: d != "x3")
    assert [(e.item_id, e.rank) for e in examples] == [("x2", 2), ("x5", 5), ("y1", 1)]
    raw = [ipw_weight(2, 1.0, 4.0), ipw_weight(5, 1.0, 4.0), ipw_weight(1, 1.0, 4.0)]
    assert raw == [2.0, 4.0, 1.0]  # rank 5 is clipped at max_weight
    np.testing.assert_allclose([e.weight for e in examples], np.array(raw) / np.mean(raw))
    # x5's skipped items above it, nearest first; x2 was clicked and x3 is not in the catalog
    assert examples[1].hard_negatives == ("x4", "x1") and examples[0].hard_negatives == ("x1",)
    assert skipped == {"unknown_item": 0, "unshown_click": 1}
    flat = click_examples(sessions, Path("."), ClickTrainConfig(max_weight=1.0), known=lambda d: True)[0]
    assert {e.weight for e in flat} == {1.0}


def test_split_keeps_every_session_of_a_query_on_one_side():
    sessions = [make(f"q{i % 10}", ["a", "b"], ["a"]) for i in range(50)]
    train, held = split_by_query(sessions, 0.2, seed=0)
    assert len(held) == 10 and len(train) == 40
    assert not {s.query_key for s in train} & {s.query_key for s in held}
    assert split_by_query(sessions, 0.0, seed=0)[1] == []


def test_config_from_dict_names_the_field():
    assert ClickTrainConfig.from_dict({"lr": 1, "hard_negatives": 0}).lr == 1.0
    with pytest.raises(ValueError, match="general_fraction"):
        ClickTrainConfig.from_dict({"general_fraction": 1.0})
    with pytest.raises(ValueError, match="click_train.epochs' must be an integer"):
        ClickTrainConfig.from_dict({"epochs": "3"})
    with pytest.raises(ValueError, match="Unknown key"):
        ClickTrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="freeze_text"):
        ClickTrainConfig(freeze_text="half")


def test_fine_tuning_on_clicks_improves_click_retrieval(toy_shop, base_clip, click_logs, click_tuned):
    out, result = click_tuned
    assert result["clicks"]["examples"] > 150 and result["curve"][0]["epoch"] == 0
    assert result["curve"][-1]["train_loss"] < result["curve"][1]["train_loss"]
    from vitrine.indexer.catalog import read_catalog
    held, _ = read_click_log(click_logs["heldout"])
    items, _ = read_catalog(toy_shop["catalog"])
    data = GateData(held, click_logs["heldout"].parent, items, toy_shop["root"])
    before = measure(base_clip, data, GateConfig(general_items=48))
    after = measure(out, data, GateConfig(general_items=48))
    assert after["click_ndcg@10"] > before["click_ndcg@10"] + 0.1, (before, after)
    assert after["click_recall@10"] > before["click_recall@10"] + 0.1
    meta = json.loads((out / "training.json").read_text())
    assert meta["clicks"]["config"]["general_fraction"] == 0.25 and "base_metrics" in meta["clicks"]


def test_cli_fine_tunes_from_clicks_and_tracks_the_run_in_mlflow(toy_shop, base_clip, click_logs, tmp_path):
    pytest.importorskip("mlflow")
    from vitrine.cli.main import main

    out, store = tmp_path / "model", tmp_path / "mlruns"
    rc = main(["train", "clip", "--clicks", str(click_logs["train"]), "--catalog", str(toy_shop["catalog"]),
               "--base", str(base_clip), "--out", str(out), "--epochs", "2", "--batch-size", "32", "--lr", "1e-3",
               "--freeze-text", "none", "--holdout-fraction", "0.25", "--general-fraction", "0.2",
               "--mlflow-dir", str(store), "--experiment", "toy", "--quiet"])
    assert rc == 0 and ClipEncoder(str(out), device="cpu").dim == 32
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["mode"] == "clicks" and run.data.params["general_fraction"] == "0.2"
    curve = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in curve) == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "click_ndcg_at_10")] == [0, 1, 2]
    assert "final.general_mean_r_at_10" in run.data.metrics or "final.click_ndcg_at_10" in run.data.metrics
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model.safetensors", "open_clip_config.json", "training.json"} <= logged


def test_missing_mlflow_names_the_package(monkeypatch):
    from vitrine.trainer.tracking import MlflowTracker

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without the extra looks like
    with pytest.raises(ImportError, match="mlflow-skinny.*--no-mlflow"):
        MlflowTracker("unused")


def test_train_clip_without_mlflow_says_which_package_to_install(toy_shop, base_clip, click_logs, tmp_path, monkeypatch):
    from vitrine.cli.main import main

    monkeypatch.setitem(sys.modules, "mlflow", None)
    args = ["train", "clip", "--clicks", str(click_logs["train"]), "--catalog", str(toy_shop["catalog"]),
            "--base", str(base_clip), "--out", str(tmp_path / "m")]
    with pytest.raises(SystemExit, match="pip install mlflow-skinny"):
        main(args)
    assert not (tmp_path / "m").exists()  # it fails before any training
    with pytest.raises(SystemExit, match="--base"):
        main(["train", "clip", "--clicks", str(click_logs["train"]), "--catalog", str(toy_shop["catalog"]),
              "--out", str(tmp_path / "m"), "--no-mlflow"])


def test_fine_tuning_measures_forgetting_on_held_out_catalog_pairs(toy_shop, base_clip, tmp_path):
    """Catalog items no session involves are held out as general pairs (the default keeps 300; the other tests keep
    none): every epoch reports their image<->text recall beside the click metrics, the base model's included."""
    from tests.trainer.conftest import fine_tune

    ids = toy_shop["ids"]
    log = tmp_path / "clicks.jsonl"   # sessions that show only a few items, so most of the catalog is uninvolved
    log.write_text("".join(json.dumps({"query": {"text": text}, "shown": ids[n:n + 3], "clicked": [ids[n]],
                                       "ts": "2024-01-01T00:00:00Z"}) + "\n"
                           for n, text in enumerate(["red square", "blue circle", "green triangle"] * 4)))
    result = fine_tune(toy_shop, base_clip, log, tmp_path / "out", epochs=1, general_holdout=12, holdout_fraction=0.25)
    assert result["clicks"]["general_heldout"] == 12
    for row in result["curve"]:
        assert 0.0 <= row["general_mean_r@10"] <= 1.0
    assert result["curve"][0]["general_mean_r@10"] > 0.0   # the base CLIP finds some of its own catalog's pairs

"""LightGBM LambdaRank over ranking/features.py: training with group-aware splits, and scoring with contributions.

A ranker directory holds `model.txt` (LightGBM's own format), `ranker.json` (feature names, schema version,
training summary) and `importances.json`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.ranking.features import FEATURES, SCHEMA_VERSION

LTR = "ltr"


@dataclass(frozen=True)
class LtrTrainConfig:
    num_leaves: int = 15
    learning_rate: float = 0.05
    n_estimators: int = 500
    min_child_samples: int = 20
    feature_fraction: float = 0.9
    early_stopping_rounds: int = 50
    valid_fraction: float = 0.2        # share of query groups held out for early stopping
    eval_at: int = 10
    seed: int = 0
    # Click labels: learn per-position bias jointly (LightGBM's unbiased LambdaRank, `position` in the Dataset).
    position_bias_regularization: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be between 0 and 1, got {self.valid_fraction}.")
        for name in ("num_leaves", "n_estimators", "min_child_samples", "eval_at"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")


def group_split(qids: Sequence[str], valid_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train/valid row masks that never split one query's candidates across the two."""
    unique = sorted(set(qids))
    rng = np.random.default_rng(seed)
    n_valid = max(1, int(round(len(unique) * valid_fraction)))
    if len(unique) < 2:
        raise ValueError(f"need at least 2 queries to hold some out, got {len(unique)}.")
    valid = set(rng.permutation(unique)[:n_valid].tolist())
    mask = np.array([q in valid for q in qids])
    return ~mask, mask


def _groups(qids: Sequence[str]) -> list[int]:
    """Sizes of consecutive runs of one qid (LightGBM's `group`); rows must already be grouped."""
    sizes, seen = [], set()
    for i, q in enumerate(qids):
        if i and q == qids[i - 1]:
            sizes[-1] += 1
        else:
            if q in seen:
                raise ValueError(f"rows of query {q!r} are not contiguous; sort them by query first.")
            seen.add(q)
            sizes.append(1)
    return sizes


@dataclass(frozen=True)
class LtrRows:
    """What a ranker learns from: labelled feature rows, grouped by query.

    Args:
        X: (N, F) features; y: (N,) integer relevance grades (or 0/1 clicks); qids: (N,) query ids, grouped.
        positions: (N,) 0-based display positions for click labels; enables position-bias correction.
        feature_names: the F columns' names.
    """

    X: np.ndarray
    y: np.ndarray
    qids: Sequence[str]
    positions: np.ndarray | None = None
    feature_names: Sequence[str] = FEATURES


def train_ranker(rows: LtrRows, out_dir: Path, config: LtrTrainConfig = LtrTrainConfig(),
                 extra_meta: dict[str, Any] | None = None, log: Any = print) -> dict[str, Any]:
    """Trains LambdaRank with early stopping on held-out queries' nDCG@eval_at and writes a ranker directory."""
    import lightgbm as lgb

    X, y, qids, positions, feature_names = rows.X, rows.y, rows.qids, rows.positions, rows.feature_names
    if len(X) != len(y) or len(X) != len(qids):
        raise ValueError(f"X, y and qids must have the same length, got {len(X)}, {len(y)}, {len(qids)}.")
    if X.shape[1] != len(feature_names):
        raise ValueError(f"X has {X.shape[1]} columns but {len(feature_names)} feature names.")
    t0 = time.perf_counter()
    train, valid = group_split(list(qids), config.valid_fraction, config.seed)
    qtrain = [q for q, m in zip(qids, train) if m]
    qvalid = [q for q, m in zip(qids, valid) if m]
    y = np.asarray(y, dtype=np.int32)
    params = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [config.eval_at], "num_leaves": config.num_leaves,
        "learning_rate": config.learning_rate, "min_data_in_leaf": config.min_child_samples,
        "feature_fraction": config.feature_fraction, "seed": config.seed, "verbosity": -1, "deterministic": True,
        "num_threads": 0, "label_gain": list(range(0, 2 ** min(int(y.max()) + 1, 31))) if y.max() > 30 else None,
    }
    params = {k: v for k, v in params.items() if v is not None}
    if positions is not None:
        params["lambdarank_position_bias_regularization"] = config.position_bias_regularization
    dtrain = lgb.Dataset(X[train], y[train], group=_groups(qtrain), feature_name=list(feature_names),
                         position=None if positions is None else np.asarray(positions)[train], free_raw_data=False)
    dvalid = lgb.Dataset(X[valid], y[valid], group=_groups(qvalid), reference=dtrain)
    curve: dict[str, Any] = {}
    booster = lgb.train(params, dtrain, num_boost_round=config.n_estimators, valid_sets=[dvalid], valid_names=["valid"],
                        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False),
                                   lgb.record_evaluation(curve), lgb.log_evaluation(period=50, show_stdv=False)])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out_dir / "model.txt"), num_iteration=booster.best_iteration)
    gains = booster.feature_importance("gain", iteration=booster.best_iteration)
    importances = sorted(({"feature": n, "gain": float(g), "splits": int(s)} for n, g, s in zip(
        feature_names, gains, booster.feature_importance("split", iteration=booster.best_iteration))), key=lambda r: -r["gain"])
    (out_dir / "importances.json").write_text(json.dumps(importances, indent=2))
    key = f"ndcg@{config.eval_at}"
    summary = {
        "version": f"ltr-{time.strftime('%Y%m%d-%H%M%S')}", "schema_version": SCHEMA_VERSION,
        "features": list(feature_names), "config": asdict(config), "best_iteration": booster.best_iteration,
        "valid": {key: float(booster.best_score["valid"][key])}, "train_queries": len(set(qtrain)),
        "valid_queries": len(set(qvalid)), "rows": int(len(X)), "position_bias": positions is not None,
        "curve": {key: [float(v) for v in curve.get("valid", {}).get(key, [])]},
        "seconds": round(time.perf_counter() - t0, 2), **(extra_meta or {}),
    }
    (out_dir / "ranker.json").write_text(json.dumps(summary, indent=2))
    log(f"ranker: best iteration {booster.best_iteration}, held-out {key} {summary['valid'][key]:.4f} "
        f"({summary['train_queries']} train / {summary['valid_queries']} held-out queries); top features: "
        + ", ".join(r["feature"] for r in importances[:5]))
    return summary


class LtrRanker:
    """A trained LambdaRank model: scores feature rows and explains them feature by feature."""

    def __init__(self, model_dir: str | Path) -> None:
        import lightgbm as lgb

        model_dir = Path(model_dir)
        meta_path = model_dir / "ranker.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a Vitrine ranker (no ranker.json); train one with `vitrine train ranker`")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"ranker {model_dir} was trained on feature schema {self.meta.get('schema_version')}; "
                             f"this Vitrine computes schema {SCHEMA_VERSION}. Retrain it.")
        self.features: list[str] = list(self.meta["features"])
        missing = [f for f in self.features if f not in FEATURES]
        if missing:
            raise ValueError(f"ranker {model_dir} uses unknown feature(s) {missing}.")
        self._cols = np.array([FEATURES.index(f) for f in self.features])
        self.booster = lgb.Booster(model_file=str(model_dir / "model.txt"))
        self.version = str(self.meta.get("version", model_dir.name))
        self.path = model_dir

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores for rows of the full FEATURES matrix. (N,)"""
        return self.booster.predict(X[:, self._cols], num_threads=1)

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Per-feature SHAP contributions (LightGBM pred_contrib) and their names; the last column is the bias. (N, F+1)"""
        return self.booster.predict(X[:, self._cols], pred_contrib=True, num_threads=1), [*self.features, "bias"]


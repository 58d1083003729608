"""Experiment tracking with MLflow in a local file store: parameters, per-epoch curves, final metrics, the model.

mlflow is an optional extra (`pip install 'vitrine-search[train]'`, which installs mlflow-skinny); without it,
opening a tracker fails with a message naming the package, and `--no-mlflow` trains untracked.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SKIP_ARTIFACTS = ("checkpoint.pt", "checkpoint.tmp")
INSTALL_HINT = ("MLflow tracking needs the mlflow-skinny package: pip install 'vitrine-search[train]' "
                "(or pip install mlflow-skinny), or pass --no-mlflow to train without tracking.")


def require_mlflow() -> Any:
    """Imports mlflow, or raises ImportError naming the package to install."""
    try:
        import mlflow
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return mlflow


def tracking_uri(store: str | Path) -> str:
    """A directory becomes a `file:` URI; an explicit URI (file:, sqlite:, http:) is kept as given."""
    text = str(store)
    if "://" in text or text.startswith("file:"):
        return text
    return Path(text).resolve().as_uri()


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys with string values (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


class MlflowTracker:
    """One MLflow run in an experiment; use as a context manager so a crash marks the run FAILED."""

    def __init__(self, store: str | Path, experiment: str = "vitrine-clip", run_name: str | None = None) -> None:
        require_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(store)
        if self.uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance mode and refuses it unless this opt-in is set;
            # a local file store is what the loop wants (no server, no database), so opt in for file: URIs only.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in flatten(params).items():
            self.client.log_param(self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.client.log_metric(self.run_id, key.replace("@", "_at_"), float(value), step=step or 0)

    def log_model_dir(self, model_dir: str | Path, artifact_path: str = "model") -> None:
        """Logs the loadable model (weights, config, text tower, training notes), not the resume checkpoint."""
        for entry in sorted(Path(model_dir).iterdir()):
            if entry.name in SKIP_ARTIFACTS or entry.name.startswith("."):
                continue
            if entry.is_dir():
                self.client.log_artifacts(self.run_id, str(entry), f"{artifact_path}/{entry.name}")
            else:
                self.client.log_artifact(self.run_id, str(entry), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")


def log_training(tracker: MlflowTracker, params: Mapping[str, Any], curve: list[Mapping[str, Any]],
                 final: Mapping[str, Any], model_dir: str | Path | None) -> None:
    """Logs a finished training: params, one step per epoch of the curve, final metrics, and the model dir."""
    tracker.log_params(params)
    for point in curve:
        tracker.log_metrics({k: v for k, v in point.items() if k != "epoch"}, step=int(point["epoch"]))
    tracker.log_metrics({f"final.{k}": v for k, v in final.items()})
    if model_dir is not None:
        tracker.log_model_dir(model_dir)

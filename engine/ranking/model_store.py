"""Versioned ranking models under DATA_DIR/models, and the one the server uses live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.core.files import write_json_durably
from engine.index.versions import LiveVersion, VersionStore
from engine.ranking.ranker import MODEL_FILE, LinearRanker

REPORT_FILE = "report.json"


class ModelStore(VersionStore):
    """models/v000001/{model.json, report.json}; CURRENT names the promoted one."""

    manifest_name = MODEL_FILE
    kind = "model version"

    def save(self, ranker: LinearRanker, report: dict[str, Any], *, promote: bool) -> str:
        """Publish a trained model (and its evaluation report); make it live if promote."""
        staging = self.stage()
        write_json_durably(staging / REPORT_FILE, report)
        write_json_durably(staging / MODEL_FILE, {"version": None, **ranker.to_json()})
        return self.publish(staging, make_current=promote)

    def report(self, version: str) -> dict[str, Any]:
        return dict(json.loads((self.folder(version) / REPORT_FILE).read_text(encoding="utf-8")))

    def load(self, version: str) -> LinearRanker:
        return LinearRanker.load(self.folder(version), version)


def live_model(root: Path, poll_s: float) -> LiveVersion[LinearRanker]:
    """The promoted model, reloaded when CURRENT changes; the prior until one is promoted."""
    store = ModelStore(root)
    prior = LinearRanker.prior()
    return LiveVersion(store, poll_s, store.load, lambda: prior)

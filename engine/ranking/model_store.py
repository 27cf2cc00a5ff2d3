"""Versioned ranking models under DATA_DIR/models, and the one the server uses live."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from engine.core.files import write_json_durably
from engine.index.live_version import LiveVersion
from engine.index.promoted import PREVIOUS, PromotedStore
from engine.ranking.ranker import MODEL_FILE, LinearRanker
from engine.store.published import PublishedVersions

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
__all__ = ["PREVIOUS", "PRIOR", "ModelStore", "live_model"]
PRIOR = "prior"  # what serves while no version is live


class ModelStore(PromotedStore):
    """models/v000001/{model.json, report.json}; CURRENT names the promoted one."""

    manifest_name = MODEL_FILE
    kind = "model version"
    unset = PRIOR

    def save(self, ranker: LinearRanker, report: dict[str, Any], *, promote: bool) -> str:
        """Publish a trained model (and its evaluation report); make it live if promote."""
        staging = self.stage()
        write_json_durably(staging / REPORT_FILE, report)
        write_json_durably(staging / MODEL_FILE, {"version": None, **ranker.to_json()})
        return self.publish(staging, make_current=promote)

    def report(self, version: str) -> dict[str, Any]:
        path = self.local_folder(version) / REPORT_FILE
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def load(self, version: str) -> LinearRanker:
        return LinearRanker.load(self.local_folder(version), version)


def live_model(
    root: Path, poll_s: float, shared: PublishedVersions | None = None
) -> LiveVersion[LinearRanker]:
    """The promoted model, reloaded when CURRENT (shared: the database's pointer) changes;
    the prior until one is promoted."""
    store = ModelStore(root, shared)
    prior = LinearRanker.prior()
    return LiveVersion(store, poll_s, store.load, lambda: prior)

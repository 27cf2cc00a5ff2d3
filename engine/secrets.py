"""The API key: configured, or generated once and kept in the data dir (mode 0600)."""

from __future__ import annotations

import logging
import os
import secrets

from engine.config import Settings

log = logging.getLogger(__name__)
KEY_FILE = "api_key"


def api_key(settings: Settings) -> str:
    """RECSEARCH_API_KEY, or the key generated on first start and kept in the data dir."""
    if settings.api_key:
        return settings.api_key
    path = settings.data_dir / KEY_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    log.warning("generated an API key in %s", path)
    return key

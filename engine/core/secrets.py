"""The API key: configured, or generated once and kept in the data dir (mode 0600)."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.core.files import create_once, make_private_dir

log = logging.getLogger(__name__)
KEY_FILE = "api_key"
# Shorter keys are refused: an empty one would let an empty password sign in.
MIN_KEY_CHARS = 16


def api_key(settings: Settings) -> str:
    """RECSEARCH_API_KEY, or the key generated on first start and kept in the data dir.

    Raises ConfigError for a key shorter than MIN_KEY_CHARS, naming the variable or file.
    Processes starting together all get the same key: the first to publish its file wins.
    """
    if settings.api_key:
        if len(settings.api_key.strip()) < MIN_KEY_CHARS:
            raise ConfigError(
                f"RECSEARCH_API_KEY is {len(settings.api_key.strip())} characters long; "
                f"use at least {MIN_KEY_CHARS} (or unset it to generate one)"
            )
        return settings.api_key.strip()
    path = settings.data_dir / KEY_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    make_private_dir(settings.data_dir)
    if create_once(path, secrets.token_urlsafe(32) + "\n"):
        log.warning("generated an API key in %s", path)
    return _read(path)


def _read(path: Path) -> str:
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(
            f"the API key in {path} is {len(key)} characters long; use at least "
            f"{MIN_KEY_CHARS} (delete the file to generate a new key, or set RECSEARCH_API_KEY)"
        )
    return key

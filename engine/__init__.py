"""recsearch engine: the library behind the CLI and the web API (no Flask here)."""

from __future__ import annotations

__version__ = "0.1.0"

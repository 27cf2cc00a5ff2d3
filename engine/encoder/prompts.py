"""The text put before queries and before items' texts when they are encoded.

Instruction-tuned models (e5, bge, gte) are trained with a prompt on one side or both, e.g.
e5's "query: " and "passage: ", and give worse vectors without it. RECSEARCH_QUERY_PROMPT and
RECSEARCH_DOCUMENT_PROMPT set them; unset, each comes from the model folder's
config_sentence_transformers.json as sentence-transformers' encode_query / encode_document
pick them: query ← prompts["query"]; document ← prompts["document"], else "passage", else
"corpus"; else none.

A folder that sets default_prompt_name is ambiguous: sentence-transformers applies that prompt
to every text, queries and items alike, which is right for a symmetric model and wrong for an
asymmetric one, and the folder does not say which it is. Such a folder is a ConfigError until
both variables are set (an empty value for no prompt); both encoders then pass the prompts
explicitly, so the default prompt never applies on its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.config import Settings
from engine.core.errors import ConfigError

# The folder's prompt names for items, in the order sentence-transformers' encode_document
# tries them.
DOCUMENT_KEYS = ("document", "passage", "corpus")


@dataclass(frozen=True)
class Prompts:
    """What each side's texts are prefixed with before tokenizing ("" for none)."""

    query: str = ""
    document: str = ""

    def manifest_fields(self) -> dict[str, str]:
        """The index manifest's "model" entries that record them."""
        return {"query_prompt": self.query, "document_prompt": self.document}


def resolve_prompts(settings: Settings, folder: Path) -> Prompts:
    """The prompts settings and the model folder (a sentence-transformers folder) give.

    Raises ConfigError when the folder sets default_prompt_name and RECSEARCH_QUERY_PROMPT or
    RECSEARCH_DOCUMENT_PROMPT is unset, naming the default prompt and both variables.
    """
    return prompts_from_config(settings, _st_config(folder))


def prompts_from_config(settings: Settings, config: Mapping[str, Any]) -> Prompts:
    """resolve_prompts on a model's saved configuration: its "prompts" (name → text) and
    "default_prompt_name", as config_sentence_transformers.json holds them."""
    saved = config.get("prompts") or {}
    prompts = {str(k): str(v or "") for k, v in saved.items()} if isinstance(saved, dict) else {}
    default = config.get("default_prompt_name")
    if default and (settings.query_prompt is None or settings.document_prompt is None):
        raise ConfigError(
            f"RECSEARCH_MODEL={settings.model!r} sets default_prompt_name {default!r} (prompt "
            f"{prompts.get(str(default), '')!r}), which sentence-transformers puts before "
            "queries and items alike; set both RECSEARCH_QUERY_PROMPT and "
            "RECSEARCH_DOCUMENT_PROMPT to say which side gets which prompt (an empty value for "
            "none)"
        )
    query = settings.query_prompt
    if query is None:
        query = prompts.get("query", "")
    document = settings.document_prompt
    if document is None:
        document = next((prompts[k] for k in DOCUMENT_KEYS if k in prompts), "")
    return Prompts(query=query, document=document)


def built_document_prompt(manifest: Mapping[str, Any]) -> str:
    """The document prompt an index version's items were encoded with ("" for a manifest from
    before it was recorded)."""
    return str(manifest.get("model", {}).get("document_prompt", ""))


def _st_config(folder: Path) -> dict[str, Any]:
    path = folder / "config_sentence_transformers.json"
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the model's prompts from {path}: {exc}") from exc
    return config if isinstance(config, dict) else {}

"""Fine-tuned encoders as versions under DATA_DIR/encoder-versions, beside index and model
versions (indexer.encoder_tuning makes them):

    v000001/manifest.json   the version, its name, the encoder it was tuned from, the report
    v000001/model/          the sentence-transformers folder
    CURRENT                 the promoted encoder: what `recsearch build` embeds with (none:
                            RECSEARCH_MODEL); PREVIOUS the rollback target

An encoder's name is "<base model>@<version>" (all-MiniLM-L6-v2@v000001). An index version's
manifest names the encoder that built it, and serving follows its index: queries and new items
are encoded by the encoder of the index that serves, so promoting an encoder changes nothing
until an index built with it is live, and an index rollback brings its encoder back with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.core.config import Settings
from engine.core.errors import NotFound, NotReady
from engine.core.files import write_json_durably
from engine.index.promoted import PromotedStore

MODEL_FOLDER = "model"
TUNED_NAME = re.compile(r"(?P<base>.+)@(?P<version>v[0-9]{6,12})")


class EncoderStore(PromotedStore):
    """encoder-versions/v000001/{manifest.json, model/}; CURRENT names the promoted one."""

    kind = "encoder version"
    unset = "base"

    @classmethod
    def of(cls, settings: Settings) -> EncoderStore:
        return cls(settings.data_dir / "encoder-versions")

    def save(self, staging: Path, manifest: dict[str, Any], *, promote: bool) -> str:
        """Publish a staged folder holding model/ (a saved sentence-transformers model)."""
        if not (staging / MODEL_FOLDER / "modules.json").is_file():
            raise ValueError(f"{staging}: no sentence-transformers model in {MODEL_FOLDER}/")
        write_json_durably(staging / self.manifest_name, {"version": None, **manifest})
        return self.publish(staging, make_current=promote)

    def model_folder(self, version: str) -> Path:
        """The sentence-transformers folder of a version; NotFound when there is none."""
        folder = self.local_folder(version) / MODEL_FOLDER
        if not (folder / "modules.json").is_file():
            raise NotFound(f"{self.kind} {version!r}")
        return folder


def tuned_name(base: str, version: str) -> str:
    return f"{base}@{version}"


def tuned_version(name: str) -> str | None:
    """The encoder version in a tuned encoder's name; None for RECSEARCH_MODEL's."""
    found = TUNED_NAME.fullmatch(name)
    return found["version"] if found else None


def encoder_settings(settings: Settings, name: str) -> Settings:
    """The settings that encode like the encoder called name: RECSEARCH_MODEL's own (its
    name), or a tuned version's folder ("<base>@v000001"). NotReady when name is neither."""
    if name == settings.model_name():
        return settings
    found = TUNED_NAME.fullmatch(name)
    if found is None or found["base"] != settings.model_name():
        raise NotReady(
            f"the index was built with encoder {name!r} but this process encodes with "
            f"{settings.model_name()!r} (RECSEARCH_MODEL) and its tuned versions: run "
            "`recsearch build`"
        )
    try:
        folder = EncoderStore.of(settings).model_folder(found["version"])
    except NotFound:
        raise NotReady(
            f"the index was built with encoder {name!r}, whose version is not in "
            f"{settings.data_dir / 'encoder-versions'}: run `recsearch build`"
        ) from None
    return settings.replace(model=str(folder))


def build_encoder(settings: Settings, version: str | None = None) -> tuple[str, Settings]:
    """The encoder a build embeds with, as (name, settings): `version` when given, else the
    promoted encoder version, else RECSEARCH_MODEL."""
    store = EncoderStore.of(settings)
    chosen = version or store.current_version()
    if chosen is None:
        return settings.model_name(), settings
    store.folder(chosen)  # InvalidInput for a name not like v000001
    folder = store.model_folder(chosen)  # NotFound for a version not published
    return tuned_name(settings.model_name(), chosen), settings.replace(model=str(folder))

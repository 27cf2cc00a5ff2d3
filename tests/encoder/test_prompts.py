"""Model prompts: queries get the query prompt, items the document prompt, on both encoders,
as sentence-transformers' own encode(prompt=...) applies them; settings and the model folder
decide which; an ambiguous default_prompt_name is refused; the manifest records them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.core.config import Settings
from engine.core.errors import ConfigError, NotReady
from engine.encoder.embedder import Embedder, loaded_prompt_config
from engine.encoder.onnx_cache import FILES, folder_digest, library_key
from engine.encoder.onnx_check import probe_check
from engine.encoder.onnx_encoder import OnnxEncoder, pool, read_spec
from engine.encoder.prompts import (
    Prompts,
    built_document_prompt,
    prompts_from_config,
    resolve_prompts,
)
from engine.runtime import Runtime
from indexer.build import build
from indexer.ingest import ingest
from tests.conftest import SAMPLE_CATALOG, write_jsonl

MODEL_FOLDER = Path(Settings().model_path())
BGE = "Represent this sentence for searching relevant passages: "
QUERIES = ["skiing in the alps", "Eiffel Tower", "street food", "quiet beach", "museums"]
ITEMS = [json.loads(line)["text"] for line in SAMPLE_CATALOG.read_text().splitlines()[:6]]
ENCODERS = ["onnx", "torch"]


@pytest.fixture(scope="session")
def shared_dir(embedder: Embedder) -> Path:
    """The folder holding the session encoder's export (<it>/encoders/<hash>/<libraries>/...),
    used as a data dir whose own exports those are."""
    assert embedder.check is not None
    return Path(embedder.check.model_file).parents[3]


@pytest.fixture(scope="session")
def reference() -> Any:
    """sentence-transformers on the packaged model: the oracle."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_FOLDER), device="cpu", local_files_only=True)


def st_encode(model: Any, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
    return np.asarray(
        model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False, **kwargs)
    )


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)  # unit rows: the dot product is the cosine


def queries(embedder: Embedder) -> np.ndarray:
    embedder.clear_cache()
    return np.stack([embedder.encode_query(q) for q in QUERIES])


def prompted_folder(
    tmp_path: Path, config: dict[str, Any], pooling: dict[str, Any] | None = None
) -> Path:
    """A copy of the packaged model with config as its config_sentence_transformers.json (the
    weights linked, not copied), and pooling as its Pooling config when given."""
    folder = tmp_path / "prompted-model"
    shutil.copytree(MODEL_FOLDER, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "model.safetensors").symlink_to(MODEL_FOLDER / "model.safetensors")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    if pooling is not None:
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def seeded_data_dir(shared_dir: Path, folder: Path, tmp_path: Path) -> Path:
    """A data dir whose export cache serves folder with the session's export and its check.

    The graph is the transformer alone, which the copy shares byte for byte (only its prompts
    or pooling config differ), and the check encodes without a prompt: exporting it again
    would make the same file in seconds.
    """
    data_dir = tmp_path / "var"
    source = shared_dir / "encoders" / folder_digest(MODEL_FOLDER) / library_key()
    target = data_dir / "encoders" / folder_digest(folder) / library_key()
    target.mkdir(parents=True)
    name = FILES["onnx"]
    (target / name).symlink_to(source / name)
    meta = json.loads((source / f"{name}.json").read_text())
    meta["model_hash"] = folder_digest(folder)
    (target / f"{name}.json").write_text(json.dumps(meta))
    return data_dir


def load(encoder: str, data_dir: Path, folder: Path = MODEL_FOLDER, **prompts: str) -> Embedder:
    model = str(folder) if folder != MODEL_FOLDER else Settings().model
    return Embedder(
        Settings(
            data_dir=data_dir,
            cache_dir=data_dir,
            model=model,
            encoder=encoder,
            device="cpu",
            **prompts,
        )
    )


# --- (a) a query prompt: on queries, not on items, on both encoders ---


@pytest.mark.model
@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_query_prompt_goes_before_queries_only(
    encoder: str, shared_dir: Path, reference: Any
) -> None:
    prompted = load(encoder, shared_dir, query_prompt=BGE)
    assert prompted.prompts == Prompts(query=BGE, document="")
    got = queries(prompted)
    assert cosines(got, st_encode(reference, QUERIES, prompt=BGE)).min() >= 0.9999
    assert cosines(got, st_encode(reference, QUERIES)).max() < 0.99  # the prompt moved them
    items = prompted.encode(ITEMS)
    assert cosines(items, st_encode(reference, ITEMS)).min() >= 0.9999  # items: no prompt


# --- (b) the folder's prompts are the defaults; settings override them, "" disables ---


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        ({"query": "q: ", "document": "d: ", "passage": "p: "}, Prompts("q: ", "d: ")),
        ({"query": "q: ", "passage": "p: ", "corpus": "c: "}, Prompts("q: ", "p: ")),
        ({"corpus": "c: "}, Prompts("", "c: ")),
        ({"query": "q: ", "document": None}, Prompts("q: ", "")),  # None: sentence-transformers' ""
        ({}, Prompts("", "")),
        (None, Prompts("", "")),  # no config_sentence_transformers.json
    ],
)
def test_the_folder_prompts_are_the_defaults(
    saved: dict[str, Any] | None, expected: Prompts, tmp_path: Path
) -> None:
    if saved is not None:
        (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": saved}))
    assert resolve_prompts(Settings(), tmp_path) == expected
    # Set, a variable wins over the folder, and empty is no prompt.
    env = {"RECSEARCH_QUERY_PROMPT": "mine: ", "RECSEARCH_DOCUMENT_PROMPT": ""}
    assert resolve_prompts(Settings.from_env(env), tmp_path) == Prompts("mine: ", "")
    only_document = Settings.from_env({"RECSEARCH_DOCUMENT_PROMPT": "doc: "})
    assert resolve_prompts(only_document, tmp_path) == Prompts(expected.query, "doc: ")


def test_empty_prompt_variables_are_values_not_defaults() -> None:
    empty = Settings.from_env({"RECSEARCH_QUERY_PROMPT": "", "RECSEARCH_DOCUMENT_PROMPT": ""})
    assert (empty.query_prompt, empty.document_prompt) == ("", "")
    unset = Settings.from_env({})
    assert (unset.query_prompt, unset.document_prompt) == (None, None)
    assert Settings.from_env({"RECSEARCH_ENCODER": ""}).encoder == "onnx"  # others keep theirs


@pytest.mark.model
@pytest.mark.parametrize("encoder", ENCODERS)
def test_an_e5_style_folder_gives_query_and_passage_prompts(
    encoder: str, shared_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    folder = prompted_folder(tmp_path, {"prompts": {"query": "query: ", "passage": "passage: "}})
    data_dir = seeded_data_dir(shared_dir, folder, tmp_path)
    prompted = load(encoder, data_dir, folder)
    assert prompted.prompts == Prompts("query: ", "passage: ")
    oracle = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    expected_queries = oracle.encode_query(QUERIES, normalize_embeddings=True)
    assert cosines(queries(prompted), expected_queries).min() >= 0.9999
    # A hub model has no folder here: torch reads what sentence-transformers loaded, the same.
    assert prompts_from_config(Settings(), loaded_prompt_config(oracle)) == prompted.prompts
    # Not oracle.encode_document: sentence-transformers 6 fills in an empty "document" prompt
    # when a folder saves none, which shadows the folder's "passage".
    expected_items = st_encode(oracle, ITEMS, prompt="passage: ")
    assert cosines(prompted.encode(ITEMS), expected_items).min() >= 0.9999
    assert cosines(prompted.encode(ITEMS), st_encode(oracle, ITEMS, prompt="")).max() < 0.999


# --- (c) default_prompt_name: refused unless both variables say what goes where ---


DEFAULT_PROMPT = {
    "prompts": {"query": "query: ", "passage": "passage: "},
    "default_prompt_name": "query",
}


@pytest.mark.model
@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_default_prompt_needs_both_variables(
    encoder: str, shared_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    folder = prompted_folder(tmp_path, DEFAULT_PROMPT)
    data_dir = seeded_data_dir(shared_dir, folder, tmp_path)
    for one in ({}, {"query_prompt": "query: "}, {"document_prompt": ""}):
        with pytest.raises(ConfigError) as info:
            load(encoder, data_dir, folder, **one)
        message = str(info.value)
        assert "default_prompt_name 'query'" in message and "'query: '" in message
        assert "RECSEARCH_QUERY_PROMPT" in message and "RECSEARCH_DOCUMENT_PROMPT" in message
        assert str(folder) in message
    oracle = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    with pytest.raises(ConfigError, match="default_prompt_name 'query'"):  # so for a hub model
        prompts_from_config(Settings(), loaded_prompt_config(oracle))
    both = load(encoder, data_dir, folder, query_prompt="query: ", document_prompt="")
    assert both.prompts == Prompts("query: ", "")
    # Items are not prefixed: sentence-transformers' own encode would put "query: " first.
    items = both.encode(ITEMS)
    assert cosines(items, st_encode(oracle, ITEMS, prompt="")).min() >= 0.9999
    assert cosines(items, st_encode(oracle, ITEMS)).max() < 0.999
    assert cosines(queries(both), st_encode(oracle, QUERIES)).min() >= 0.9999


@pytest.mark.model
def test_the_probe_check_keeps_a_default_prompt_off_torch(shared_dir: Path, tmp_path: Path) -> None:
    """A fresh export of a folder with a default prompt is checked without it on both sides."""
    folder = prompted_folder(tmp_path, DEFAULT_PROMPT)
    spec = read_spec(folder, str(folder))
    path = shared_dir / "encoders" / folder_digest(MODEL_FOLDER) / library_key() / FILES["onnx"]
    encoder = OnnxEncoder(spec, path.read_bytes(), backend="onnx", threads=1)
    assert probe_check(encoder, spec, "onnx", path).mean_cosine >= 0.9999


# --- include_prompt: false (the prompt's tokens left out of the pooling) ---


@pytest.mark.model
@pytest.mark.parametrize(
    "modes", [("mean",), ("cls",), ("max",), ("weightedmean",), ("lasttoken",)]
)
@pytest.mark.parametrize("left_padded", [False, True], ids=["right", "left"])
def test_pooling_without_the_prompt_matches_sentence_transformers(
    modes: tuple[str, ...], left_padded: bool
) -> None:
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(4, 7, 8)).astype(np.float32)
    rows = [[1] * n + [0] * (7 - n) for n in (7, 3, 1, 5)]
    mask = np.array([r[::-1] if left_padded else r for r in rows], dtype=np.int64)
    reference = Pooling(8, pooling_mode=modes[0], include_prompt=False)
    features = {
        "token_embeddings": torch.from_numpy(tokens),
        "attention_mask": torch.from_numpy(mask),
        "prompt_length": 2,
    }
    expected = reference(features)["sentence_embedding"].numpy()
    assert np.allclose(pool(tokens, mask, modes, prompt_tokens=2), expected, atol=1e-5)


@pytest.mark.model
def test_a_prompt_left_out_of_pooling_is_left_out_by_onnx(
    embedder: Embedder, shared_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    pooling = {"embedding_dimension": 384, "pooling_mode": "mean", "include_prompt": False}
    folder = prompted_folder(tmp_path, {"prompts": {"query": BGE}}, pooling)
    assert not read_spec(folder, str(folder)).include_prompt
    prompted = load("onnx", seeded_data_dir(shared_dir, folder, tmp_path), folder)
    oracle = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    expected = oracle.encode_query(QUERIES, normalize_embeddings=True)
    assert cosines(queries(prompted), expected).min() >= 0.9999  # each query alone
    batched = prompted._query.embed(QUERIES, prompt=BGE)  # padded together
    assert cosines(batched, expected).min() >= 0.9999
    # Not what pooling the prompt too gives: the mask made a difference.
    assert cosines(embedder._query.embed(QUERIES, prompt=BGE), expected).max() < 0.999


# --- (d) the manifest records the prompts; vectors are reused only under the same one ---


@pytest.mark.model
def test_the_manifest_records_the_prompts_and_reuse_needs_the_same_document_prompt(
    embedder: Embedder, shared_dir: Path, sqlite_settings: Settings, tmp_path: Path
) -> None:
    catalog = write_jsonl(
        tmp_path / "c.jsonl", SAMPLE_CATALOG.read_text(encoding="utf-8").splitlines()[:30]
    )
    passages = load("onnx", shared_dir, query_prompt="query: ", document_prompt="passage: ")
    plain = Runtime(sqlite_settings, embedder=embedder)
    with plain.write_session() as session:
        ingest(plain, session, catalog)
    with plain.session() as session:
        first = build(plain, session)
    manifest = json.loads((sqlite_settings.index_dir / "v000001" / "manifest.json").read_text())
    assert (manifest["model"]["query_prompt"], manifest["model"]["document_prompt"]) == ("", "")

    prompted = Runtime(sqlite_settings, embedder=passages)
    with prompted.session() as session:
        # Another document prompt: not up to date, and none of v000001's vectors reused.
        second = build(prompted, session, if_stale=True)
        assert not second.skipped and second.reused == 0 and second.embedded == 30
        again = build(prompted, session, if_stale=True)  # the same prompt: nothing to do
        assert again.skipped
        third = build(prompted, session)
        assert third.reused == 30 and third.embedded == 0
    manifest = json.loads((sqlite_settings.index_dir / "v000002" / "manifest.json").read_text())
    assert manifest["model"]["query_prompt"] == "query: "
    assert built_document_prompt(manifest) == "passage: "
    assert first.reused == 0
    # A manifest from before prompts were recorded was built without one.
    assert built_document_prompt({"model": {"name": "all-MiniLM-L6-v2"}}) == ""
    # A process that would encode new items without the prompt does not serve v000003.
    with pytest.raises(NotReady, match="built with document prompt 'passage: ' but this process"):
        plain.live.get()
    assert prompted.live.get().version == "v000003"
    plain.close()
    prompted.close()

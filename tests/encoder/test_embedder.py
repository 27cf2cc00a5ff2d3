"""Encoder backends: ONNX (fp32 and int8) against torch, the export cache, mixed-backend serving."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.encoder.embedder import Embedder, describe_encoder, resolve_device
from engine.encoder.fast_tokenizer import FastTokenizer, from_transformers, transformers_tokenizer
from engine.encoder.onnx_cache import (
    FILES,
    MIN_MEAN_COSINE,
    cache_problem,
    folder_digest,
    library_key,
    load_onnx_encoder,
)
from engine.encoder.onnx_encoder import OnnxEncoder, pool, read_spec, tokenizer_core
from engine.encoder.onnx_export import EXPORT_FORMAT, PROBE_TEXTS
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from indexer.build import build
from indexer.ingest import ingest
from tests.conftest import SAMPLE_CATALOG, write_jsonl
from web.cli import Context, cli

MODEL_FOLDER = Path(Settings().model_path())
QUERIES = ["skiing in the alps", "Eiffel Tower", "street food", "quiet beach", "museums"]


@pytest.fixture(scope="session")
def shared_dir(embedder: Embedder) -> Path:
    """The folder holding the session encoder's export (<it>/encoders/<hash>/<libraries>/...):
    this run's encoder cache, and a data dir whose own exports those are."""
    assert embedder.check is not None
    return Path(embedder.check.model_file).parents[3]


@pytest.fixture(scope="session")
def torch_embedder() -> Embedder:
    return Embedder(Settings(encoder="torch", device="cpu"))


@pytest.fixture(scope="session")
def int8_embedder(shared_dir: Path) -> Embedder:
    """Quantized from the session's fp32 export, into the same cache."""
    return Embedder(Settings(data_dir=shared_dir, encoder="onnx-int8"))


@pytest.fixture(scope="session")
def reference(torch_embedder: Embedder) -> tuple[list[str], np.ndarray]:
    """Probe texts and catalog passages with torch's vectors for them."""
    texts = [*PROBE_TEXTS, *SAMPLE_CATALOG.read_text(encoding="utf-8").splitlines()[:40]]
    return texts, torch_embedder.encode(texts)


def copy_cache(shared_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session's exports: tests that break them break only this one
    (its Settings need cache_dir=it: the default is the session's cache)."""
    data_dir = tmp_path / "var"
    shutil.copytree(shared_dir / "encoders", data_dir / "encoders")
    return data_dir


def export_file(data_dir: Path, backend: str = "onnx") -> Path:
    return data_dir / "encoders" / folder_digest(MODEL_FOLDER) / library_key() / FILES[backend]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)  # unit rows: the dot product is the cosine


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_backends_agree_with_torch(
    backend: str,
    embedder: Embedder,
    int8_embedder: Embedder,
    reference: tuple[list[str], np.ndarray],
) -> None:
    tested = embedder if backend == "onnx" else int8_embedder
    assert tested.encoder == tested.batch_encoder == backend and tested.dim == 384
    texts, expected = reference
    got = tested.encode(texts)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    sims = cosines(got, expected)
    assert sims.mean() >= MIN_MEAN_COSINE[backend], (sims.mean(), sims.min())
    assert sims.min() >= (0.9999 if backend == "onnx" else 0.95)
    # One query alone (no padding) agrees with the same text in a padded batch; int8 less so:
    # dynamic quantization scales activations per batch, so a text's companions move it.
    tested.clear_cache()
    query = tested.encode_query(texts[5])
    assert not query.flags.writeable
    assert float(query @ got[5]) > (0.9999 if backend == "onnx" else 0.98)
    assert tested.encode_query(texts[5]) is query  # the LRU cache


def test_export_is_checked_once_and_the_check_is_cached(
    embedder: Embedder, int8_embedder: Embedder, shared_dir: Path
) -> None:
    assert embedder.check.mean_cosine >= 0.9999 and not embedder.check.reused
    assert int8_embedder.check.mean_cosine >= 0.98
    meta = json.loads(Path(str(export_file(shared_dir)) + ".json").read_text())
    assert meta["check"]["mean_cosine"] == embedder.check.mean_cosine
    assert meta["model_hash"] == folder_digest(MODEL_FOLDER) and meta["opset"] == 17
    # Eager attention, fused by ONNX Runtime's optimizer: one Attention operator per layer.
    assert meta["graph"]["attention"] == "eager"
    assert meta["graph"]["fused"]["Attention"] == 6, meta["graph"]
    nodes = {n.op_type for n in onnx.load(str(export_file(shared_dir))).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= nodes and "Softmax" not in nodes
    int8_meta = json.loads(Path(str(export_file(shared_dir, "onnx-int8")) + ".json").read_text())
    assert int8_meta["source_sha256"] == meta["sha256"]  # quantized from the fused graph
    # A later start verifies the file and reuses the check: no torch model is loaded.
    again = Embedder(Settings(data_dir=shared_dir, encoder_threads=1))
    assert again.check.reused and again.check.mean_cosine == embedder.check.mean_cosine
    options = again._query.session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert np.array_equal(again.encode(["a lake"]), embedder.encode(["a lake"]))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_meta(**changes: object):  # type: ignore[no-untyped-def]
    def edit(path: Path) -> None:
        meta_path = Path(str(path) + ".json")
        meta = json.loads(meta_path.read_text())
        meta.update(changes)
        meta_path.write_text(json.dumps(meta))

    return edit


def _garble_meta(path: Path) -> None:
    Path(str(path) + ".json").write_text("{not json")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_truncate, "bytes, expected"),
        (_flip_a_byte, "sha256 differs"),
        (_edit_meta(model_hash="0" * 64), "model_hash '000"),
        (_edit_meta(opset=13), "opset 13, expected 17"),
        (_edit_meta(format=0), f"format 0, expected {EXPORT_FORMAT}"),
        (_edit_meta(versions={"torch": "1.0"}), "versions {'torch': '1.0'}, expected"),
        (_garble_meta, "no readable metadata"),
        (lambda path: path.unlink(), "unreadable"),
    ],
)
def test_broken_or_mismatched_exports_are_detected(
    tamper, reason: str, shared_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data_dir = copy_cache(shared_dir, tmp_path)
    for backend in FILES:
        path = export_file(data_dir, backend)
        assert cache_problem(path, folder_digest(MODEL_FOLDER)) is None
        tamper(path)
        problem = cache_problem(path, folder_digest(MODEL_FOLDER))
        assert problem is not None and reason in problem


@pytest.mark.parametrize("tamper", [_truncate, _edit_meta(opset=13)], ids=["truncated", "opset"])
def test_broken_or_mismatched_exports_are_exported_again(
    tamper, embedder: Embedder, shared_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data_dir = copy_cache(shared_dir, tmp_path)
    tamper(export_file(data_dir))
    again = Embedder(Settings(data_dir=data_dir, cache_dir=data_dir))
    assert not again.check.reused and again.check.mean_cosine >= 0.9999  # checked afresh
    assert cache_problem(export_file(data_dir), folder_digest(MODEL_FOLDER)) is None
    texts = list(PROBE_TEXTS)
    assert cosines(again.encode(texts), embedder.encode(texts)).min() > 0.9999
    assert not list(export_file(data_dir).parent.glob("*.tmp"))  # no temporary file left


def test_a_failed_check_names_the_figure_and_the_fallback(shared_dir: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    # Impossible to meet: the cached figure is compared without loading torch.
    with pytest.raises(ConfigError) as info:
        load_onnx_encoder(Settings(data_dir=shared_dir), "onnx", min_mean_cosine=1.01)
    assert "mean cosine 1.0000" in str(info.value)
    assert "RECSEARCH_ENCODER=torch" in str(info.value)

    # A tampered graph whose metadata matches: the fresh check against torch refuses it,
    # and later starts refuse it from the cached figure.
    data_dir = copy_cache(shared_dir, tmp_path)
    path = export_file(data_dir)
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if "word_embeddings" in tensor.name:
            weights = numpy_helper.to_array(tensor)
            noisy = weights + np.random.default_rng(0).normal(0, 0.05, weights.shape)
            tensor.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    onnx.save(model, str(path))
    meta_path = Path(str(path) + ".json")
    meta = json.loads(meta_path.read_text())
    del meta["check"]
    data = path.read_bytes()
    meta.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    meta_path.write_text(json.dumps(meta))
    for _ in range(2):
        with pytest.raises(ConfigError) as info:
            Embedder(Settings(data_dir=data_dir, cache_dir=data_dir))
        message = str(info.value)
        assert "RECSEARCH_ENCODER=onnx" in message and "RECSEARCH_ENCODER=torch" in message
        figure = float(message.split("mean cosine ")[1].split()[0])
        assert figure < 0.9999 and "below 0.9999" in message
    stored = json.loads(meta_path.read_text())["check"]["mean_cosine"]
    assert stored == pytest.approx(figure, abs=1e-5)


def build_sample(runtime: Runtime, tmp_path: Path) -> Runtime:
    """runtime with the sample catalog's first 80 items ingested and built."""
    catalog = write_jsonl(
        tmp_path / "c.jsonl", SAMPLE_CATALOG.read_text(encoding="utf-8").splitlines()[:80]
    )
    with runtime.write_session() as session:
        ingest(runtime, session, catalog)
    with runtime.session() as session:
        build(runtime, session)
    return runtime


def top_ids(runtime: Runtime, q: str) -> list[str]:
    with runtime.session() as session:
        return [hit.id for hit in runtime.searcher.search(session, SearchRequest(q=q, k=5)).results]


def test_index_built_with_torch_serves_onnx_queries(
    embedder: Embedder, torch_embedder: Embedder, sqlite_settings: Settings, tmp_path: Path
) -> None:
    from web import create_app

    built_with_torch = build_sample(Runtime(sqlite_settings, embedder=torch_embedder), tmp_path)
    manifest = json.loads((sqlite_settings.index_dir / "v000001" / "manifest.json").read_text())
    assert manifest["model"]["encoder"] == "torch"

    serving = Runtime(sqlite_settings, embedder=embedder)
    for q in QUERIES:
        results = [top_ids(runtime, q) for runtime in (built_with_torch, serving)]
        assert results[0][:3] == results[1][:3] and len(set(results[0]) & set(results[1])) >= 4

    ready = create_app(runtime=serving).test_client().get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["encoder"] == "onnx (index built with torch)"
    status = CliRunner().invoke(
        cli, ["status"], obj=Context(serving.settings, quiet=True, runtime=serving)
    )
    assert "encoder    onnx (index built with torch)" in status.output
    same = create_app(runtime=built_with_torch).test_client().get("/readyz").get_json()
    assert same["encoder"] == "torch"
    built_with_torch.close()
    serving.close()


def test_int8_queries_search_an_index_of_fp32_items(
    embedder: Embedder,
    int8_embedder: Embedder,
    shared_dir: Path,
    sqlite_settings: Settings,
    tmp_path: Path,
) -> None:
    """RECSEARCH_QUERY_ENCODER=onnx-int8: queries through the quantized export, items (builds,
    the delta) through RECSEARCH_ENCODER's, bit for bit as without it; the index says so."""
    from web import create_app

    mixed = Embedder(Settings(data_dir=shared_dir, query_encoder="onnx-int8"))
    assert (mixed.encoder, mixed.batch_encoder) == ("onnx-int8", "onnx")
    assert np.array_equal(mixed.encode(QUERIES), embedder.encode(QUERIES))
    for q in QUERIES:
        mixed_query, int8_query = mixed.encode_query(q), int8_embedder.encode_query(q)
        assert np.array_equal(mixed_query, int8_query)
        assert 0.98 < float(mixed_query @ embedder.encode_query(q)) < 0.99999  # not fp32's
    runtime = build_sample(Runtime(sqlite_settings, embedder=mixed), tmp_path)
    manifest = json.loads((sqlite_settings.index_dir / "v000001" / "manifest.json").read_text())
    assert manifest["model"]["encoder"] == "onnx"  # the items' vectors: full precision
    full = Runtime(sqlite_settings, embedder=embedder)
    for q in QUERIES:
        found = [top_ids(serving, q) for serving in (runtime, full)]
        assert found[0][:2] == found[1][:2] and len(set(found[0]) & set(found[1])) >= 4
    ready = create_app(runtime=runtime).test_client().get("/readyz").get_json()
    assert ready["encoder"] == "onnx-int8 (index built with onnx)"
    runtime.close()
    full.close()


def test_describe_encoder_reads_old_manifests_as_torch() -> None:
    assert describe_encoder("onnx", {"model": {"name": "m"}}) == "onnx (index built with torch)"
    assert describe_encoder("onnx", {"model": {"encoder": "onnx"}}) == "onnx"


@pytest.mark.skipif(resolve_device("auto") != "cpu", reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_a_config_error(tmp_path: Path) -> None:
    for encoder in ("onnx", "torch"):
        with pytest.raises(ConfigError, match="RECSEARCH_DEVICE=cuda: no CUDA device"):
            Embedder(
                Settings(data_dir=tmp_path, cache_dir=tmp_path, device="cuda", encoder=encoder)
            )
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    assert not (tmp_path / "encoders").exists()  # refused before any export


def test_auto_looks_for_a_gpu_when_a_batch_first_needs_one(
    embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECSEARCH_DEVICE=auto with the ONNX encoder: loading and queries look for no GPU (a
    search never imports torch for it); the first batch does, once, asking onnxruntime, then
    torch only where a CUDA driver loads."""
    import engine.encoder.embedder as embedder_module

    asked: list[str] = []

    def answer(who: str, value: bool):  # type: ignore[no-untyped-def]
        return lambda: asked.append(who) or value

    monkeypatch.setattr(embedder_module, "_ort_cuda", answer("onnxruntime", False))
    monkeypatch.setattr(embedder_module, "_has_cuda_driver", answer("driver", True))
    monkeypatch.setattr(embedder_module, "_torch_cuda", answer("torch", False))
    lazy = Embedder(Settings(data_dir=tmp_path / "var"))  # the session's cached export
    assert lazy.encode_query("a quiet beach").shape == (384,) and asked == []
    assert lazy.device == "cpu" and asked == ["onnxruntime", "driver", "torch"]
    assert lazy.batch_encoder == "onnx" and lazy.encode(["a lake"]).shape == (1, 384)
    assert len(asked) == 3  # resolved once
    asked.clear()
    monkeypatch.setattr(embedder_module, "_has_cuda_driver", answer("driver", False))
    assert resolve_device("auto") == "cpu" and asked == ["onnxruntime", "driver"]  # no torch


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("RECSEARCH_ENCODER", "tensorrt", "RECSEARCH_ENCODER='tensorrt': expected one of onnx"),
        ("RECSEARCH_DEVICE", "gpu", "RECSEARCH_DEVICE='gpu': expected auto, cpu, cuda"),
        ("RECSEARCH_ENCODER_THREADS", "-1", "RECSEARCH_ENCODER_THREADS='-1' is out of range"),
        ("RECSEARCH_QUERY_ENCODER", "int4", "RECSEARCH_QUERY_ENCODER='int4': expected one of"),
    ],
)
def test_encoder_settings_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert fragment in str(info.value)
    s = Settings.from_env({})
    assert (s.encoder, s.device, s.encoder_threads) == ("onnx", "auto", 0)
    assert s.query_encoder == "same"


def test_int8_queries_need_an_onnx_item_encoder() -> None:
    with pytest.raises(ConfigError, match="RECSEARCH_QUERY_ENCODER=onnx-int8 needs an ONNX"):
        Settings.from_env({"RECSEARCH_ENCODER": "torch", "RECSEARCH_QUERY_ENCODER": "onnx-int8"})


@pytest.mark.model  # sentence-transformers' own pooling modules, loaded per mode
@pytest.mark.parametrize(
    "modes",
    [("mean",), ("cls",), ("max",), ("mean_sqrt_len_tokens",), ("weightedmean",), ("lasttoken",)]
    + [("cls", "max", "mean")],
)
def test_pooling_matches_sentence_transformers(modes: tuple[str, ...]) -> None:
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(4, 7, 8)).astype(np.float32)
    mask = np.array([[1] * n + [0] * (7 - n) for n in (7, 3, 1, 5)], dtype=np.int64)
    reference = Pooling(8, pooling_mode=modes if len(modes) > 1 else modes[0])
    features = {
        "token_embeddings": torch.from_numpy(tokens),
        "attention_mask": torch.from_numpy(mask),
    }
    expected = reference(features)["sentence_embedding"].numpy()
    assert np.allclose(pool(tokens, mask, modes), expected, atol=1e-5)


def test_the_saved_tokenizer_tokenizes_as_the_transformers_call(embedder: Embedder) -> None:
    """The encoder tokenizes with the tokenizer saved beside its export (no transformers
    loaded): the same ids, masks and types as transformers' call, for one text, a padded
    batch, and texts truncated."""
    encoder = embedder._query
    assert isinstance(encoder, OnnxEncoder) and isinstance(encoder.tokenizer, FastTokenizer)
    assert encoder._core is encoder.tokenizer.backend_tokenizer
    reference = transformers_tokenizer(encoder.spec.transformer)
    assert encoder.tokenizer.all_special_ids == reference.all_special_ids
    long = " ".join(["mountain lakes and alpine huts"] * 200)  # far past max_seq_length
    batches = [
        [QUERIES[0]],
        list(QUERIES),
        [long, "a", ""],
        ["Ünïcödé café — 東京 🏔️", long[:900]],
        list(PROBE_TEXTS),
    ]
    for batch in batches:
        expected = reference(
            batch,
            padding=True,
            truncation="longest_first",
            max_length=encoder.spec.max_seq_length,
            return_tensors="np",
        )
        got = encoder.tokenize(batch)
        assert set(expected) <= set(got)
        for name in expected:
            assert got[name].dtype == np.int64
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{name}: {batch!r}")
    assert encoder.tokenize([long])["input_ids"].shape == (1, encoder.spec.max_seq_length)


def test_a_tokenizer_without_a_core_keeps_the_transformers_call(embedder: Embedder) -> None:
    encoder = embedder._query
    assert isinstance(encoder, OnnxEncoder) and embedder.check is not None

    class Slow:
        is_fast = False
        pad_token_id = 0

    assert from_transformers(Slow(), 256) is None and tokenizer_core(Slow(), 256) is None
    no_pad = transformers_tokenizer(encoder.spec.transformer)
    no_pad.pad_token = None
    assert from_transformers(no_pad, 256) is None
    # An encoder on transformers' tokenizer, its core taken away, calls the tokenizer.
    called = OnnxEncoder(
        encoder.spec,
        embedder.check.model_file.read_bytes(),
        backend="onnx",
        threads=1,
        tokenizer=transformers_tokenizer(encoder.spec.transformer),
    )
    assert called._core is not None
    called._core = None
    np.testing.assert_allclose(called.embed(list(QUERIES)), encoder.embed(list(QUERIES)), atol=1e-6)


def test_modules_the_onnx_encoder_cannot_run_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(MODEL_FOLDER, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    assert read_spec(folder, "m").pooling == ("mean",) and read_spec(folder, "m").normalize
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="Dense.*RECSEARCH_ENCODER=torch"):
        read_spec(folder, "m")


@pytest.mark.slow
def test_a_fusion_that_changes_the_vectors_is_dropped(
    embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimizer's graph serves only when it agrees with the traced one; here it is made to
    disagree, and the unfused graph is exported, checked against torch and serves."""
    import engine.encoder.onnx_export as onnx_export

    seen: list[float] = []

    def disagree(spec: object, a: Path, b: Path) -> float:
        seen.append(1.0)
        return 0.999

    monkeypatch.setattr(onnx_export, "_agreement", disagree)
    unfused = Embedder(Settings(data_dir=tmp_path, cache_dir=tmp_path))
    assert seen, "the fused graph was not compared with the traced one"
    meta = json.loads(Path(str(export_file(tmp_path)) + ".json").read_text())
    assert meta["graph"] == {"attention": "eager", "fused": {}}
    nodes = {n.op_type for n in onnx.load(str(export_file(tmp_path))).graph.node}
    assert "Attention" not in nodes and "Softmax" in nodes
    assert unfused.check is not None and unfused.check.mean_cosine >= 0.9999
    texts = list(PROBE_TEXTS)
    assert cosines(unfused.encode(texts), embedder.encode(texts)).min() > 0.9999


@pytest.mark.slow
def test_cls_pooling_model_is_exported_and_checked(tmp_path: Path) -> None:
    """Another model folder (cls pooling, no Normalize): its own export, checked against torch."""
    folder = tmp_path / "cls-model"
    shutil.copytree(MODEL_FOLDER, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "model.safetensors").symlink_to(MODEL_FOLDER / "model.safetensors")
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 384, "pooling_mode": "cls"})
    )
    modules = json.loads((folder / "modules.json").read_text())[:2]
    (folder / "modules.json").write_text(json.dumps(modules))
    settings = Settings(data_dir=tmp_path / "var", cache_dir=tmp_path / "var", model=str(folder))
    spec = read_spec(folder, settings.model)
    assert spec.pooling == ("cls",) and not spec.normalize
    cls_embedder = Embedder(settings)
    assert cls_embedder.check.mean_cosine >= 0.9999
    assert cls_embedder.check.model_file.parents[1].name == folder_digest(folder)
    torch_cls = Embedder(settings.replace(encoder="torch", device="cpu"))
    texts = list(PROBE_TEXTS)
    assert cosines(cls_embedder.encode(texts), torch_cls.encode(texts)).min() > 0.9999


@pytest.mark.slow
def test_concurrent_first_starts_export_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two loaders on an empty cache: one exports under the lock, the other reuses its file."""
    caplog.set_level("INFO", logger="engine.encoder.onnx_cache")
    settings = Settings(data_dir=tmp_path / "var", cache_dir=tmp_path / "var")
    results: list[object] = []

    def start() -> None:
        try:
            results.append(load_onnx_encoder(settings, "onnx")[1])
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(getattr(r, "mean_cosine", 0) >= 0.9999 for r in results), results
    path = export_file(settings.data_dir)
    assert cache_problem(path, folder_digest(MODEL_FOLDER)) is None
    assert sorted(p.name for p in path.parent.iterdir()) == [
        ".lock",
        ".used",  # each start marks the export it loads (engine.encoder.cache_eviction)
        "model.onnx",
        "model.onnx.json",
        "tokenizer-core.json",
    ]
    assert sum(r.getMessage().startswith("exported ") for r in caplog.records) == 1
    # One progress line when the export starts and one when it is ready, both shown by a
    # command at its default level (WARNING).
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum(m.startswith("exporting the encoder's model") for m in said) == 1, said
    assert sum(m.startswith("ONNX encoder ready in ") for m in said) == 1, said

"""Training: hybrid candidates, training from judgments, promotion without a restart, BEIR
evaluation; and `recsearch train` without a source flag (impressions when some were clicked,
else the event history)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.ranking.model_store import ModelStore
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from indexer.build import build
from indexer.events import load_events
from indexer.examples import Judgment
from indexer.ingest import ingest
from indexer.train import default_source, train_from_judgments
from tests.conftest import ROOT, SAMPLE_CATALOG, SHARED_DATA, wait_done, write_jsonl
from web.cli import Context, cli


def description_judgments(n: int = 60) -> list[Judgment]:
    """Known-item search: a destination's first sentence as the query, the destination as
    its one relevant item (like a user who half-remembers a place)."""
    rows = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines()]
    rows = random.Random(1).sample(rows, n)
    return [Judgment(r["text"].split(". ")[0], r["id"], 1.0) for r in rows]


def test_lexical_source_finds_rare_words(built: Runtime, tmp_path: Path) -> None:
    item = {"id": "zq", "title": "Quokkaville", "text": "Home of the xylospongium festival."}
    with built.write_session() as session:
        ingest(built, session, write_jsonl(tmp_path / "x.jsonl", [item]))
    with built.session() as session:
        build(built, session)
        stage = built.searcher.first_stage(session, SearchRequest(q="xylospongium", k=10))
    found = {c.item_id: c for c in stage.candidates}
    assert found["zq"].lexical_rank == 0 and found["zq"].lexical_score > 0
    assert stage.x[list(found).index("zq"), stage.names.index("lexical_score")] == 1.0
    with built.session() as session:
        top = built.searcher.search(session, SearchRequest(q="xylospongium festival", k=3))
    assert top.results[0].id == "zq"


def test_trained_model_is_saved_promoted_and_served_live(built: Runtime) -> None:
    from engine.ranking.metrics import auc
    from indexer.examples import judgment_examples

    judgments = description_judgments()
    with built.session() as session:
        ranker, report = train_from_judgments(built, session, judgments, promote=False)
    assert report.version == "v000001" and report.validation_auc > 0.9
    assert report.examples > report.positives == 60 and report.validation_queries == 12
    # The model puts the judged item first for most queries, as the prior does, or better.
    with built.session() as session:
        x, y, _, names = judgment_examples(built, session, judgments)
    assert (
        auc(y, ranker.aligned(names).logits(x))
        >= auc(y, LinearRanker.prior().aligned(names).logits(x)) - 0.01
    )
    store = ModelStore(built.settings.model_dir)
    assert store.current_version() is None  # saved, not live
    saved = store.report("v000001")
    assert saved["validation_auc"] == report.validation_auc and saved["source"] == "judgments"

    def explained_model() -> str:
        with built.session() as session:
            r = built.searcher.search(session, SearchRequest(q="oasis", k=1, explain=True))
        assert r.results[0].explanation is not None
        return str(r.results[0].explanation.model)

    assert explained_model() == "prior"
    store.point_current_at("v000001")
    assert explained_model() == "v000001"  # no restart: the server follows CURRENT
    with built.session() as session:
        r = built.searcher.search(session, SearchRequest(q="somewhere to relax", k=10))
    assert ranker.version == "v000001" and len(r.results) == 10


def test_train_and_promote_commands(built: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "judgments.tsv"
    lines = ["query\titem_id\tgrade"] + [
        f"{j.query}\t{j.item_id}\t{j.grade}" for j in description_judgments()
    ]
    path.write_text("\n".join(lines) + "\n")
    context = Context(built.settings, quiet=True, runtime=built)
    result = CliRunner().invoke(cli, ["train", "--judgments", str(path)], obj=context)
    assert result.exit_code == 0, result.output
    assert "model v000001" in result.output and "held-out AUC" in result.output
    assert "recsearch promote v000001" in result.output
    result = CliRunner().invoke(cli, ["promote", "v000001"], obj=context)
    assert result.exit_code == 0 and "live" in result.output
    assert "model      v000001" in CliRunner().invoke(cli, ["status"], obj=context).output
    bad = tmp_path / "bad.csv"
    bad.write_text("query,item_id,grade\nbeach,tokyo-japan,very\n")
    result = CliRunner().invoke(cli, ["train", "--judgments", str(bad)], obj=context)
    assert result.exit_code != 0 and "bad.csv:2" in str(result.exception)


def mini_beir(target: Path, n_train: int = 60, n_test: int = 40, extra_docs: int = 300) -> Path:
    """A small BEIR folder cut from SciFact: judged documents plus random others."""
    source = SHARED_DATA / "beir-scifact"
    rng = random.Random(0)

    def qrels(split: str) -> dict[str, list[str]]:
        rows = (source / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]
        out: dict[str, list[str]] = {}
        for row in rows:
            q, d, _ = row.split("\t")
            out.setdefault(q, []).append(d)
        return out

    train, test = qrels("train"), qrels("test")
    train = dict(rng.sample(sorted(train.items()), n_train))
    test = dict(rng.sample(sorted(test.items()), n_test))
    keep = {d for ds in [*train.values(), *test.values()] for d in ds}
    corpus = (source / "corpus.jsonl").read_text().splitlines()
    others = [line for line in corpus if json.loads(line)["_id"] not in keep]
    chosen = [line for line in corpus if json.loads(line)["_id"] in keep]
    chosen += rng.sample(others, extra_docs)
    (target / "qrels").mkdir(parents=True)
    (target / "corpus.jsonl").write_text("\n".join(chosen) + "\n")
    shutil.copy(source / "queries.jsonl", target / "queries.jsonl")
    for split, data in (("train", train), ("test", test)):
        body = "".join(f"{q}\t{d}\t1\r\n" for q, ds in data.items() for d in ds)
        (target / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\r\n" + body)
    return target


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"needs the datasets in {SHARED_DATA}")
def test_evaluate_beir_through_the_engine(
    one_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = one_runtime  # one database: the metrics do not depend on it
    from indexer import evaluate
    from indexer.encoder_tuning import TuneOptions, tune_encoder

    tuned_on: list[Any] = []

    def watched(*args: Any, **kwargs: Any) -> Any:  # the real tuning, its pairs kept
        tuned_on.extend(args[1])
        return tune_encoder(*args, **kwargs)

    monkeypatch.setattr(evaluate, "tune_encoder", watched)
    folder = mini_beir(tmp_path / "mini-scifact", extra_docs=120)
    tune = TuneOptions(epochs=1, batch_size=16, max_seq_length=128)  # one: quick enough for CI
    result: dict[str, Any] = evaluate.evaluate_beir(runtime, folder, tune=tune)
    metrics = result["metrics"]
    assert set(metrics) == {
        "dense",
        "dense_ann",
        "lexical",
        "hybrid",
        "reranked_no_prior",
        "reranked",
    }
    assert result["queries"] == 40 and result["model"]["validation_auc"] > 0.7
    # The prior: one click per train judgment; the ablations re-train without each group.
    prior = result["prior"]
    texts = {
        row["_id"]: row["text"]
        for row in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())
    }
    train_rows = (folder / "qrels" / "train.tsv").read_text().splitlines()[1:]
    assert prior["clicks"] == len({(texts[r.split("\t")[0]], r.split("\t")[1]) for r in train_rows})
    assert 0 <= prior["test_queries_answered_before"] <= 40
    ablations = result["ablations"]
    assert {"dense", "lexical", "popularity"} <= set(ablations)
    assert ablations["popularity"]["ndcg@10"] == metrics["reranked_no_prior"]["ndcg@10"]
    assert ablations["personal"]["unused"] is True  # no query has a user
    for values in metrics.values():
        assert set(values) == {"ndcg@10", "recall@100"} and 0 <= values["ndcg@10"] <= 1
    # On a few hundred documents every method finds most answers; the order is what differs.
    assert metrics["dense"]["ndcg@10"] > 0.5 and metrics["lexical"]["ndcg@10"] > 0.5
    assert metrics["dense_ann"] == metrics["dense"]  # flat index at this size: exact
    assert metrics["hybrid"]["ndcg@10"] >= min(
        metrics["dense"]["ndcg@10"], metrics["lexical"]["ndcg@10"]
    )

    # The tuned encoder: trained on the train split's judgments alone, then every figure again.
    tuned = result["encoder_tuned"]
    assert set(tuned["metrics"]) == set(metrics) and tuned["tuning_s"] > 0
    name = f"{runtime.settings.model_name()}@v000001"
    assert tuned["encoder"]["name"] == name and runtime.live.get().model_name == name
    assert tuned["index"]["version"] != result["index"]["version"]
    test_rows = (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]
    train_queries = {texts[r.split("\t")[0]] for r in train_rows}
    test_only = {texts[r.split("\t")[0]] for r in test_rows} - train_queries
    anchors = {pair.anchor for pair in tuned_on}
    assert anchors <= train_queries and not anchors & test_only
    # A quarter of the train queries is kept out of the tuning: the tuned run's ranker's.
    assert len(anchors) == tuned["tuned_on_queries"] == len(train_queries) - tuned["ranker_queries"]
    assert tuned["ranker_queries"] == round(len(train_queries) * 0.25)
    ranker = tuned["model"]
    assert 0 < ranker["train_queries"] + ranker["validation_queries"] <= tuned["ranker_queries"]
    judged_pairs = {(texts[r.split("\t")[0]], r.split("\t")[1]) for r in train_rows}
    assert len(tuned_on) == tuned["encoder"]["pairs"]  # one per judgment of those queries
    assert len(tuned_on) == sum(1 for q, _ in judged_pairs if q in anchors)
    for values in tuned["metrics"].values():
        assert 0 <= values["ndcg@10"] <= 1
    assert tuned["metrics"]["dense"]["ndcg@10"] > 0.5
    assert ModelStore(runtime.settings.model_dir).current_version() is None


def _train(runtime: Runtime) -> str:
    context = Context(runtime.settings, quiet=True, runtime=runtime)
    result = CliRunner().invoke(cli, ["train"], obj=context)
    assert result.exit_code == 0, result.output
    return result.output


def test_no_impressions_means_the_event_history(built: Runtime) -> None:
    with built.write_session() as session:
        load_events(built, session, ROOT / "data" / "events.jsonl")
    with built.session() as session:
        assert default_source(built, session)[0] == "events"
    output = _train(built)
    assert "no logged impressions: training from the event history" in output
    assert "model v000001" in output


def test_clicked_impressions_are_preferred(client: Any, built: Runtime) -> None:
    with built.write_session() as session:
        load_events(built, session, ROOT / "data" / "events.jsonl")
    shown = [client.get(f"/v1/search?q={q}&k=5").get_json() for q in ("beach", "museums")]
    with built.session() as session:
        source, why = default_source(built, session)
    assert source == "events" and "no event names their request_id" in why
    clicks = [
        {
            "user_id": "clicker",
            "item_id": body["results"][1]["id"],
            "type": "click",
            "request_id": body["request_id"],
        }
        for body in shown
    ]
    assert client.post("/v1/events", json={"events": clicks}).status_code == 200
    with built.session() as session:
        source, why = default_source(built, session)
    assert source == "impressions" and "2 requests with a click" in why
    assert "training from logged impressions" in _train(built)
    started = client.post("/admin/api/train", json={})
    assert started.status_code == 202
    job = wait_done(client, started.get_json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["source"] == "impressions"
    assert "training from logged impressions" in job["result"]["source_reason"]

"""`recsearch import beir|movielens` on small folders laid out like the real datasets."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from engine.catalog.items import get_item
from engine.runtime import Runtime
from engine.users.profile import load_user
from indexer.datasets import beir_queries
from web.cli import Context, cli


def test_import_movielens(runtime: Runtime, tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\r\n1,Toy Story (1995),Adventure|Animation\r\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\r\n'
        "3,Nothing,(no genres listed)\r\n"
    )
    (folder / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\r\n7,1,pixar,1139045764\r\n8,1,Pixar,1139045765\r\n"
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\r\n7,1,4.5,964982703\r\n7,2,2.0,964981247\r\n8,1,5.0,964982224\r\n"
    )
    context = Context(runtime.settings, quiet=True, runtime=runtime)
    result = CliRunner().invoke(cli, ["import", "movielens", str(folder)], obj=context)
    assert result.exit_code == 0, result.output
    assert "3 movies (3 changed), 3 ratings recorded (0 already there)" in result.output
    with runtime.session() as session:
        toy = get_item(session, "1")
        assert toy.title == "Toy Story (1995)" and toy.category == "Adventure"
        assert toy.tags == ["Adventure", "Animation", "pixar"]
        assert get_item(session, "2").title == "American President, The (1995)"
        assert get_item(session, "3").category is None
        user = load_user(session, "7")
    assert user is not None and user.counts == {"rating": 2}
    assert user.category_affinity["Adventure"] > 0 > user.category_affinity["Comedy"]
    again = CliRunner().invoke(cli, ["import", "movielens", str(folder)], obj=context)
    assert "0 ratings recorded (3 already there)" in again.output


def test_import_beir_reads_only_id_and_text_of_queries(runtime: Runtime, tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "d1", "title": "Cells", "text": "About cells.", "metadata": {}},
        {"_id": "d2", "title": "", "text": "Untitled.", "metadata": {}},
    ]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    query = {"_id": "q1", "text": "cells divide", "metadata": {"d1": [{"label": "SUPPORT"}]}}
    (folder / "queries.jsonl").write_text(json.dumps(query) + "\n")
    context = Context(runtime.settings, quiet=True, runtime=runtime)
    result = CliRunner().invoke(cli, ["import", "beir", str(folder)], obj=context)
    assert result.exit_code == 0 and "2 items inserted or updated" in result.output
    with runtime.session() as session:
        assert get_item(session, "d2").title == "d2"  # no title: the id stands in
    assert beir_queries(folder) == {"q1": "cells divide"}
    missing = CliRunner().invoke(cli, ["import", "beir", str(tmp_path / "nope")], obj=context)
    assert missing.exit_code != 0 and "corpus.jsonl: not found" in str(missing.exception)

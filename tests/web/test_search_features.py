"""Issue 26 over HTTP: totals, facets, highlighting, chosen fields, typo tolerance, the depth
limit: each parameter validated with the field named."""

from __future__ import annotations

from typing import Any

from engine.runtime import Runtime


def get(client: Any, **params: Any) -> Any:
    response = client.get("/v1/search", query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def problem(client: Any, **params: Any) -> str:
    response = client.get("/v1/search", query_string=params)
    assert response.status_code == 422, response.get_json()
    return str(response.get_json())


def test_totals_and_facets(built: Runtime, client: Any) -> None:
    out = get(client, q="hiking", k=3, facets="category,tags", filters='{"continent": "Asia"}')
    assert out["total_relation"] == "eq" and out["total"] >= 3
    assert sum(out["facets"]["category"].values()) == out["total"]
    repeated = client.get("/v1/search?q=hiking&k=3&facets=category&facets=tags").get_json()
    assert set(repeated["facets"]) == {"category", "tags"}
    posted = client.post("/v1/search", json={"q": "hiking", "facets": ["avg_daily_cost_usd"]})
    stats = posted.get_json()["facet_stats"]["avg_daily_cost_usd"]
    assert 0 < stats["min"] <= stats["max"]
    assert "facets" not in get(client, q="hiking")  # only when asked for
    assert "colour" in problem(client, q="hiking", facets="category,colour")


def test_highlights_mark_the_query_terms_and_escape_the_rest(built: Runtime, client: Any) -> None:
    hit = get(client, q="Eiffel Tower", highlight="true", k=1)["results"][0]
    assert hit["id"] == "paris-france"
    assert hit["highlights"]["title"] == "Paris, France"  # no query term in it
    assert "<em>Eiffel</em> <em>Tower</em>" in hit["highlights"]["text"]
    custom = get(
        client, q="Eiffel", highlight="1", highlight_pre_tag="[", highlight_post_tag="]", k=1
    )["results"][0]["highlights"]["text"]
    assert "[Eiffel]" in custom and "<em>" not in custom
    item = {"id": "html-test", "title": "<b>Tower</b> & <script>x</script>", "text": "a tower"}
    assert client.post("/v1/items", json=item).status_code == 201
    built.delta.refresh()
    marked = get(client, q="tower script", highlight="true", k=50)["results"]
    title = next(h for h in marked if h["id"] == "html-test")["highlights"]["title"]
    escaped = "&lt;b&gt;<em>Tower</em>&lt;/b&gt; &amp; "
    assert title == escaped + "&lt;<em>script</em>&gt;x&lt;/<em>script</em>&gt;"
    assert "highlight_pre_tag" in problem(client, q="x", highlight_pre_tag="<" * 65)


def test_fields_choose_what_a_hit_carries(built: Runtime, client: Any) -> None:
    hit = get(client, q="Eiffel Tower", k=1, fields="title")["results"][0]
    assert set(hit) == {"id", "title"}
    full = get(client, q="Eiffel Tower", k=1, fields="title,text,score")["results"][0]
    assert set(full) == {"id", "title", "text", "score"} and "Louvre" in full["text"]
    assert "text" not in get(client, q="Eiffel Tower", k=1)["results"][0]
    assert "colour" in problem(client, q="x", fields="title,colour")


def test_typos_are_forgiven(built: Runtime, client: Any) -> None:
    for typed, meant, within in (("kyotto", "kyoto-japan", 3), ("mafushi", "maafushi-maldives", 1)):
        assert meant in [h["id"] for h in get(client, q=typed, k=within)["results"]]
    strict = get(client, q="mafushi", k=1, typo_tolerance="false")["results"]
    assert [h["id"] for h in strict] != ["maafushi-maldives"]  # 3rd without the correction


def test_the_corrected_word_is_highlighted(built: Runtime, client: Any) -> None:
    hits = get(client, q="kyotto temples", k=3, highlight="true")["results"]
    kyoto = next(h for h in hits if h["id"] == "kyoto-japan")
    assert "<em>Kyoto</em>" in kyoto["highlights"]["title"]


def test_pages_stop_at_the_documented_depth(built: Runtime, client: Any) -> None:
    assert "offset" in problem(client, q="x", k=20, offset=990)
    out = get(client, q="beach", k=10, offset=320)
    assert out["next_offset"] is None and len(out["results"]) == 5  # the 325th is the last

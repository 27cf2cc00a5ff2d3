"""Contract fuzzing: schemathesis runs every operation of /openapi.json against a live server.

    .venv/bin/python bench/contract_fuzz.py [--cases 10000] [--db sqlite|postgresql+psycopg://...]
        [--seed 0] [--per-round 50] [--out bench/results/contract_fuzz.json]

A real HTTP server (werkzeug, threaded, on 127.0.0.1 port 0) serves create_app() over a fresh
store holding the sample catalog (data/catalog.jsonl) with a published index. The schema is
loaded from the live /openapi.json, and every operation is fuzzed with positive and negative
data, sending the API key, in rounds (seed, seed+1, ...) of --per-round examples per operation
and mode until --cases requests were made in all. Each response is checked for: no 5xx
(not_a_server_error), a documented status, a documented content type, a body that matches
the documented schema and is strict JSON (no NaN or Infinity); a request that breaks the
connection counts too. A --db URL to a PostgreSQL server gets a private database, dropped at
the end.

Then every numeric field of the contract (search and its filters, events, items' attributes,
rules and their `where`, experiments, query strings, integer path segments) gets number
literals that json.dumps cannot write, as raw JSON text: integers of 400 and 5,000 digits
(past Python's 4,300) and numbers beyond a double's range (1e400); each body must be a 422
naming the field, every answer under 500 in the JSON error shape, with no message echoing
more than a readable length of its input (fuzz_numbers, tallied as "... (huge numbers)").

Prints a table (operation, cases, 2xx, 3xx, 4xx, 5xx, non-conforming, broken) and the findings
grouped by operation and cause, and writes JSON (default bench/results/contract_fuzz.json).
tests/test_contract_fuzz.py runs the same fuzz() bounded, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.core.errors import Conflict  # noqa: E402

CATALOG = ROOT / "data" / "catalog.jsonl"
ACTIVE_JOBS = ("queued", "running")
# Shown for a finding: enough of a request or response body to reproduce and recognise it.
EXCERPT_CHARS = 600
REQUEST_TIMEOUT_S = 60.0


@dataclass
class OperationTally:
    """What one operation answered, over every case sent to it."""

    operation: str
    cases: int = 0
    status_2xx: int = 0
    status_3xx: int = 0  # the admin page's redirects (and a 1xx, which nothing here sends)
    status_4xx: int = 0
    status_5xx: int = 0
    non_conforming: int = 0  # a documented status, content type or body check failed
    broken: int = 0  # no response: the connection broke or timed out
    statuses: Counter[int] = field(default_factory=Counter)


@dataclass
class Finding:
    """One cause of failure (operation, check, status) with its first request and response."""

    operation: str
    cause: str
    status: int | None
    count: int
    request: dict[str, Any]
    response: str
    detail: str


@dataclass
class FuzzReport:
    tallies: dict[str, OperationTally] = field(default_factory=dict)
    findings: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def cases(self) -> int:
        return sum(t.cases for t in self.tallies.values())

    def totals(self) -> OperationTally:
        total = OperationTally("all operations")
        for t in self.tallies.values():
            for name in ("cases", "status_2xx", "status_3xx", "status_4xx", "status_5xx"):
                setattr(total, name, getattr(total, name) + getattr(t, name))
            total.non_conforming += t.non_conforming
            total.broken += t.broken
            total.statuses.update(t.statuses)
        return total

    def find(self, operation: str, cause: str, status: int | None, **details: Any) -> None:
        key = (operation, cause, status)
        found = self.findings.get(key)
        if found is None:
            self.findings[key] = Finding(operation, cause, status, 1, **details)
            return
        found.count += 1
        # Keep the smallest request seen for a cause: the easiest one to read and replay.
        if len(json.dumps(details["request"])) < len(json.dumps(found.request)):
            found.request, found.response = details["request"], details["response"]
            found.detail = details["detail"]

    def as_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "seconds": round(self.seconds, 1),
            "operations": [
                {**asdict(t), "statuses": {str(k): v for k, v in sorted(t.statuses.items())}}
                for t in self.tallies.values()
            ],
            "findings": [asdict(f) for f in self.findings.values()],
        }

    def table(self) -> str:
        rows = [*self.tallies.values(), self.totals()]
        width = max(len(r.operation) for r in rows)
        header = (
            f"{'operation':<{width}} | {'cases':>6} | {'2xx':>6} | {'3xx':>4} | {'4xx':>6} | "
            f"{'5xx':>4} | {'non-conforming':>14} | {'broken':>6}"
        )
        lines = [header, "-" * len(header)]
        for i, r in enumerate(rows):
            if i == len(rows) - 1:
                lines.append("-" * len(header))
            lines.append(
                f"{r.operation:<{width}} | {r.cases:>6} | {r.status_2xx:>6} | {r.status_3xx:>4} | "
                f"{r.status_4xx:>6} | {r.status_5xx:>4} | {r.non_conforming:>14} | {r.broken:>6}"
            )
        return "\n".join(lines)

    def describe_findings(self, limit: int = 50) -> str:
        """The findings, grouped by operation and cause, each with one request to replay."""
        out = []
        for f in sorted(self.findings.values(), key=lambda f: (f.cause, f.operation))[:limit]:
            out.append(
                f"- {f.operation}: {f.cause} (status {f.status}, {f.count} case(s))\n"
                f"    request:  {json.dumps(f.request, ensure_ascii=True)[:EXCERPT_CHARS]}\n"
                f"    response: {f.response[:EXCERPT_CHARS]!r}\n"
                f"    detail:   {f.detail[:EXCERPT_CHARS]!r}"
            )
        if len(self.findings) > limit:
            out.append(f"... and {len(self.findings) - limit} more")
        return "\n".join(out)


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve `app` over real HTTP on 127.0.0.1 (a free port, one thread per request); yields
    its base URL. On exit the server stops and the app's background jobs are cancelled and
    joined, so the caller can close the runtime and drop its database."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="contract-fuzz-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
        finish_jobs(app)


def finish_jobs(app: Any, timeout_s: float = 120.0) -> None:
    """Cancel the app's active background jobs (POST /admin/api/rebuild, /train) and wait."""
    from indexer.jobs import JobRunner

    runner: JobRunner = app.extensions["recsearch_jobs"]
    for job in runner.list(limit=10_000):
        if job.state in ACTIVE_JOBS:
            try:
                runner.cancel(job.id)
            except Conflict:
                pass  # it finished in between
            runner.wait(job.id, timeout_s)


def _checks() -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        strict_json,
    ]


def strict_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """A JSON body is RFC 8259 JSON: Python's encoder writes NaN and Infinity, and the schema
    check reads them back as numbers, but no other parser takes them."""
    content_type = ",".join(response.headers.get("content-type", [])).lower()
    if "json" not in content_type or not response.content:
        return None
    try:
        json.loads(response.content, parse_constant=_no_constant)
    except ValueError as exc:
        raise AssertionError(f"the body is not valid JSON: {exc}") from None
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _request_of(case: Any) -> dict[str, Any]:
    """The request a case sends, as JSON-able values (bytes bodies as their repr)."""
    from schemathesis.core import NotSet

    request: dict[str, Any] = {"method": case.method, "path": case.formatted_path}
    for name in ("path_parameters", "query", "headers", "cookies"):
        value = getattr(case, name, None)
        if value:
            request[name] = {
                k: v for k, v in dict(value).items() if k.lower() not in ("authorization",)
            }
    if not isinstance(case.body, NotSet):
        try:
            json.dumps(case.body)
            request["body"] = case.body
        except (TypeError, ValueError):
            request["body_repr"] = repr(case.body)
        if case.media_type:
            request["media_type"] = case.media_type
    return request


def fuzz(
    schema_url: str,
    api_key: str,
    *,
    examples: int = 25,
    seed: int = 0,
    report: FuzzReport | None = None,
) -> FuzzReport:
    """Fuzz every operation of the live schema, positive and negative data, `examples` each.

    Never raises for what the server does: each 5xx, broken connection and non-conforming
    response is tallied and kept in report.findings.
    """
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    report = report if report is not None else FuzzReport()
    base_url = schema_url.rsplit("/", 1)[0]
    schema = schemathesis.openapi.from_url(schema_url, timeout=REQUEST_TIMEOUT_S)
    # Every operation: without an explicit filter schemathesis leaves out GET /openapi.json,
    # the operation that served the schema.
    schema = schema.include(path_regex=".*")
    started = time.perf_counter()
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {api_key}"
        for result in schema.get_all_operations():
            operation = result.ok()
            tally = report.tallies.setdefault(operation.label, OperationTally(operation.label))
            send = _sender(report, tally, session, base_url)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run = given(case=operation.as_strategy(generation_mode=mode))(send)
                run = settings(
                    max_examples=examples,
                    derandomize=False,
                    database=None,
                    deadline=None,
                    # No shrinking: send() records findings instead of failing.
                    phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=list(HealthCheck),
                )(run)
                try:
                    hypothesis_seed(seed)(run)()
                except Unsatisfiable:
                    pass  # no negative form: an operation without parameters or body
    report.seconds += time.perf_counter() - started
    return report


def _sender(report: FuzzReport, tally: OperationTally, session: Any, base_url: str) -> Any:
    """The body of one operation's Hypothesis test: send a case, tally and check the answer."""
    import requests
    from schemathesis.core.failures import FailureGroup, ServerError

    checks = _checks()

    def send(case: Any) -> None:
        tally.cases += 1
        request = _request_of(case)
        try:
            # The session sends the key, unless the case drops it (negative security data).
            response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as exc:
            tally.broken += 1
            report.find(
                tally.operation,
                f"broken connection: {type(exc).__name__}",
                None,
                request=request,
                response="",
                detail=str(exc),
            )
            return
        status = response.status_code
        tally.statuses[status] += 1
        if 200 <= status < 300:
            tally.status_2xx += 1
        elif 400 <= status < 500:
            tally.status_4xx += 1
        elif status >= 500:
            tally.status_5xx += 1
        else:
            tally.status_3xx += 1
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            failures = list(group.exceptions)
            if any(not isinstance(f, ServerError) for f in failures):
                tally.non_conforming += 1
            for failure in failures:
                report.find(
                    tally.operation,
                    failure.title,
                    status,
                    request=request,
                    response=response.text[:EXCERPT_CHARS],
                    detail=failure.message,
                )

    return send


# Number literals json.dumps cannot write, sent as raw JSON text where NUMBER stands.
HUGE_LITERALS = [
    "1" + "0" * 400,
    "-" + "9" * 400,
    "1" + "0" * 5_000,
    "-" + "9" * 5_000,
    "1e400",
    "-1e400",
    "1" + "0" * 400 + ".5",
    "1E+99999",
]
NUMBER = "\x01number\x01"
# An echoed value is cut (engine.core.errors.readable): no run of over 200 characters without a
# space, no message over 2,000 characters (and the cut's few words).
ECHOED_RUN = re.compile(r"\S{201,}")
MAX_MESSAGE_CHARS = 2_100


def numeric_bodies(item_id: str) -> list[tuple[str, Any]]:
    """(route, JSON body with NUMBER in one numeric field or more) for every numeric field."""
    event = {"user_id": "fuzz-n", "item_id": item_id, "type": "rating"}
    return [
        ("/v1/search", {"q": "beach", "k": NUMBER}),
        ("/v1/search", {"q": "beach", "offset": NUMBER}),
        ("/v1/search", {"q": "beach", "diversity": NUMBER}),
        ("/v1/search", {"q": "beach", "max_per_category": NUMBER}),
        ("/v1/search", {"q": "beach", "filters": {"avg_daily_cost_usd": NUMBER}}),
        ("/v1/search", {"q": "beach", "filters": {"avg_daily_cost_usd": {"gte": NUMBER}}}),
        ("/v1/search", {"filters": {"avg_daily_cost_usd": {"gt": 1, "lt": NUMBER}}}),
        ("/v1/search", {"filters": {"avg_daily_cost_usd": {"in": [1, NUMBER]}}}),
        ("/v1/search", {"filters": {"tags": {"any": [NUMBER]}}}),
        ("/v1/search", {"filters": {"country": NUMBER}}),
        ("/v1/events", {**event, "value": NUMBER}),
        ("/v1/events", {**event, "value": 1, "ts": NUMBER}),
        (
            "/v1/events",
            {"events": [{**event, "value": 1}, {**event, "value": NUMBER, "ts": NUMBER}]},
        ),
        ("/v1/items", {"id": "fuzz-n", "title": "Numbers", "attributes": {"price": NUMBER}}),
        ("/v1/items", [{"id": "fuzz-n", "title": "N", "attributes": {"lat": NUMBER, "x": NUMBER}}]),
        ("/admin/api/rules", {"action": "boost", "where": {"avg_daily_cost_usd": NUMBER}}),
        ("/admin/api/rules", {"action": "bury", "where": {"avg_daily_cost_usd": {"lte": NUMBER}}}),
        ("/admin/api/rules", {"action": "hide", "where": {"tags": {"all": [NUMBER]}}}),
        ("/admin/api/rules", {"action": "boost", "item_id": item_id, "weight": NUMBER}),
        ("/admin/api/rules", {"action": "pin", "item_id": item_id, "position": NUMBER}),
        ("/admin/api/experiments", {"candidate": "latest", "traffic": NUMBER}),
    ]


# (method, path with {} where the number goes, percent-encoded)
NUMERIC_URLS = [
    *(
        ("GET", f"{route}?q=beach&{name}={{}}")
        for route in ("/v1/search", "/admin/api/search")
        for name in ("k", "offset", "diversity", "max_per_category")
    ),
    ("GET", "/v1/search?filters=%7B%22avg_daily_cost_usd%22%3A%7B%22lt%22%3A{}%7D%7D"),
    ("GET", "/v1/items/paris-france/similar?k={}"),
    ("GET", "/admin/api/jobs/{}"),
    ("POST", "/admin/api/jobs/{}/cancel"),
    ("DELETE", "/admin/api/rules/{}"),
    ("GET", "/admin/api/experiments/{}"),
    ("POST", "/admin/api/experiments/{}/stop"),
    ("POST", "/admin/api/experiments/{}/promote"),
]


def error_shape(status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong with an error answer (status >= 400), or None: the JSON shape
    {"error", "message"} (plus `problems` on a 422), and no long echo of the input."""
    if "application/json" not in content_type:
        return f"{status} error is {content_type or 'without a type'}, not JSON"
    try:
        parsed = json.loads(body, parse_constant=_no_constant)
    except ValueError:
        return "error body is not valid JSON"
    if not isinstance(parsed, dict) or not {"error", "message"} <= set(parsed):
        return "error body without `error` and `message`"
    if status == 422 and not (isinstance(parsed.get("problems"), list) and parsed["problems"]):
        return "422 without `problems`"
    return long_echo(parsed)


def long_echo(body: dict[str, Any]) -> str | None:
    """Why an error body echoes too much of its input, or None."""
    problems = body.get("problems") if isinstance(body.get("problems"), list) else []
    texts = [body.get("message")]
    texts += [p.get(k) for p in problems if isinstance(p, dict) for k in ("field", "message")]
    for text in texts:
        if not isinstance(text, str):
            continue
        if len(text) > MAX_MESSAGE_CHARS:
            return f"error message of {len(text):,} characters"
        if run := ECHOED_RUN.search(text):
            return f"error message echoes a value of {len(run.group()):,} characters"
    return None


def fuzz_numbers(base_url: str, api_key: str, report: FuzzReport | None = None) -> FuzzReport:
    """Every numeric field with each of HUGE_LITERALS (and 5, which each field takes)."""
    import requests

    from engine.core.errors import clip

    report = report if report is not None else FuzzReport()
    with CATALOG.open(encoding="utf-8") as fh:
        item_id = str(json.loads(fh.readline())["id"])
    # (operation, method, path, body, whether it must be a 422)
    cases: list[tuple[str, str, str, bytes | None, bool]] = []
    for route, template in numeric_bodies(item_id):
        text = json.dumps(template)
        for literal in ["5", *HUGE_LITERALS]:
            body = text.replace(json.dumps(NUMBER), literal).encode()
            cases.append((f"POST {route}", "POST", route, body, literal != "5"))
    for method, template in NUMERIC_URLS:
        operation = f"{method} {template.split('?')[0].replace('{}', '{number}')}"
        for literal in ["5", *HUGE_LITERALS]:
            cases.append((operation, method, template.format(quote(literal)), None, False))
    started = time.perf_counter()
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {api_key}"
        for operation, method, path, body, must_be_422 in cases:
            label = f"{operation} (huge numbers)"
            tally = report.tallies.setdefault(label, OperationTally(label))
            tally.cases += 1
            request = {"method": method, "path": clip(path, 200)}
            if body is not None:
                request["body"] = clip(body.decode(), 200)
            try:
                response = session.request(
                    method,
                    base_url + path,
                    data=body,
                    headers={"Content-Type": "application/json"} if body is not None else {},
                    timeout=REQUEST_TIMEOUT_S,
                )
            except requests.RequestException as exc:
                tally.broken += 1
                report.find(
                    label,
                    f"broken connection: {type(exc).__name__}",
                    None,
                    request=request,
                    response="",
                    detail=str(exc),
                )
                continue
            status = response.status_code
            tally.statuses[status] += 1
            if status >= 500:
                tally.status_5xx += 1
            elif status >= 400:
                tally.status_4xx += 1
            elif status >= 300:
                tally.status_3xx += 1
            else:
                tally.status_2xx += 1
            cause = "server error" if status >= 500 else None
            if cause is None and status >= 400:
                cause = error_shape(
                    status, response.headers.get("content-type", ""), response.content
                )
            if cause is None and must_be_422 and status != 422:
                cause = "a huge number is not a 422"
            if cause is not None:
                if status < 500:
                    tally.non_conforming += 1
                report.find(
                    label,
                    cause,
                    status,
                    request=request,
                    response=response.text[:EXCERPT_CHARS],
                    detail="",
                )
    report.seconds += time.perf_counter() - started
    return report


def fuzz_until(
    schema_url: str, api_key: str, *, cases: int, per_round: int = 50, seed: int = 0
) -> FuzzReport:
    """fuzz() in rounds with seeds seed, seed+1, ... until at least `cases` were sent."""
    report = FuzzReport()
    round_seed = seed
    while report.cases < cases:
        before = report.cases
        fuzz(schema_url, api_key, examples=per_round, seed=round_seed, report=report)
        print(
            f"round {round_seed - seed + 1}: {report.cases} cases, "
            f"{len(report.findings)} finding(s), {report.seconds:.0f}s",
            file=sys.stderr,
        )
        if report.cases == before:
            break
        round_seed += 1
    return report


@contextmanager
def built_store(db: str, workdir: Path) -> Iterator[Any]:
    """A Runtime over a fresh store (SQLite, or a private PostgreSQL database) holding the
    sample catalog and a published index; closed and dropped on exit."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from engine.core.config import Settings
    from engine.runtime import Runtime
    from indexer.build import build
    from indexer.ingest import ingest

    data_dir = workdir / "var"
    database: str | None = None
    if db == "sqlite":
        settings = Settings(data_dir=data_dir, index_poll_s=0.0)
    else:
        database = f"recsearch_fuzz_{uuid.uuid4().hex[:8]}"
        admin = create_engine(db, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        admin.dispose()
        url = make_url(db).set(database=database).render_as_string(hide_password=False)
        settings = Settings(data_dir=data_dir, database_url=url, index_poll_s=0.0)
    runtime = Runtime(settings)
    try:
        with runtime.write_session() as session:
            ingest(runtime, session, CATALOG)
        with runtime.session() as session:
            build(runtime, session)
        yield runtime
    finally:
        runtime.close()
        if database is not None:
            admin = create_engine(db, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=10_000, help="requests in all, at least")
    parser.add_argument("--db", default="sqlite", help="sqlite, or a PostgreSQL server URL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-round", type=int, default=50, help="examples per operation+mode")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "contract_fuzz.json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    from web import create_app

    workdir = Path(tempfile.mkdtemp(prefix="contract_fuzz_"))
    try:
        print(f"building the sample store on {args.db.split('://')[0]} ...", file=sys.stderr)
        with built_store(args.db, workdir) as runtime:
            app = create_app(runtime=runtime, loopback=True)
            with live_server(app) as url:
                report = fuzz_until(
                    f"{url}/openapi.json",
                    app.config["RECSEARCH_API_KEY"],
                    cases=args.cases,
                    per_round=args.per_round,
                    seed=args.seed,
                )
                fuzz_numbers(url, app.config["RECSEARCH_API_KEY"], report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(report.table())
    print(f"\n{report.cases} cases in {report.seconds:.0f}s; {len(report.findings)} finding(s)")
    if report.findings:
        print(report.describe_findings(limit=200))
    database = "sqlite" if args.db == "sqlite" else "postgresql"
    result = {
        "benchmark": "contract_fuzz",
        "database": database,
        "seed": args.seed,
        "per_round": args.per_round,
        **report.as_json(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=True))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

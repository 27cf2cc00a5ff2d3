"""How long the common `recsearch` commands take from a shell, process start to exit, beside
the floor (`python -c pass`) in the same run.

    .venv/bin/python bench/cli_startup.py [--runs 5] [--data-dir DIR] [--tree DIR]...

Each command runs --runs times as a subprocess (the venv's `recsearch` script), in one loop
that takes every command (and every --tree) in turn, so machine noise hits all alike; one
untimed run per command before the loop warms the page cache and records, through
`-X importtime` (PYTHONPROFILEIMPORTTIME), which heavy packages the command loads. The
commands share a data dir with the sample catalog (data/catalog.jsonl) ingested and built: a
temporary one, made first (the first build exports the ONNX encoder: a minute), unless
--data-dir names one that holds a built index. RECSEARCH_* variables of the calling shell are
not passed on; RECSEARCH_DATA_DIR is set to that data dir.

The goals (issue 28): `--help` of the command and of a subcommand in <= 0.5 s, `search` on a
built index in <= 2 s. --tree DIR times another checkout's CLI over the same data dir in the
same loop (`git archive HEAD | tar -x -C DIR` makes one of the last commit), for a before and
after. Prints a table and writes JSON (default bench/results/cli_startup.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HELP_GOAL_S = 0.5
SEARCH_GOAL_S = 2.0
# Packages whose import shows in a command's start: what `--help` and `search` should not load.
HEAVY = (
    "flask",
    "torch",
    "transformers",
    "sentence_transformers",
    "sqlalchemy",
    "pydantic",
    "numpy",
    "faiss",
    "onnxruntime",
)


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]  # after `recsearch`; () with python set: the interpreter alone
    goal_s: float | None
    python: tuple[str, ...] = ()


def commands(query: str) -> list[Command]:
    return [
        Command("python -c pass", (), None, python=("-c", "pass")),
        Command("--help", ("--help",), HELP_GOAL_S),
        Command("--version", ("--version",), HELP_GOAL_S),
        Command("search --help", ("search", "--help"), HELP_GOAL_S),
        Command("ingest --help", ("ingest", "--help"), HELP_GOAL_S),
        Command("build --help", ("build", "--help"), HELP_GOAL_S),
        Command("jobs --help", ("jobs", "--help"), HELP_GOAL_S),
        Command(f"search {query!r}", ("search", query, "-k", "5"), SEARCH_GOAL_S),
        Command("jobs", ("jobs",), None),
        Command("status", ("status",), None),
    ]


def argv(command: Command) -> list[str]:
    if command.python:
        return [sys.executable, *command.python]
    script = Path(sys.executable).with_name("recsearch")
    if script.exists():
        return [str(script), *command.args]
    return [sys.executable, "-m", "web.cli", *command.args]


def environment(data_dir: Path, tree: Path, *, importtime: bool = False) -> dict[str, str]:
    """The caller's environment without RECSEARCH_*, with the data dir and the tree's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSEARCH_")}
    env["RECSEARCH_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(tree)  # before the editable install's finder: this tree's packages
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if importtime:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    return env


def run(command: Command, data_dir: Path, tree: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = environment(data_dir, tree)
    started = time.perf_counter()
    done = subprocess.run(argv(command), env=env, cwd=tree, capture_output=True, text=True)
    return time.perf_counter() - started, done


def heavy_loads(command: Command, data_dir: Path, tree: Path) -> list[str]:
    """The HEAVY packages a run of command imports (its -X importtime lines)."""
    env = environment(data_dir, tree, importtime=True)
    done = subprocess.run(argv(command), env=env, cwd=tree, capture_output=True, text=True)
    loaded = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            loaded.add(line.rsplit("|", 1)[1].strip())
    return [name for name in HEAVY if name in loaded]


def prepare(data_dir: Path) -> dict[str, Any]:
    """Ingest the sample catalog and build its index with this checkout's CLI."""
    setup: dict[str, Any] = {}
    for name, args in (
        ("ingest", ("-q", "ingest", str(ROOT / "data" / "catalog.jsonl"))),
        ("build", ("-q", "build")),
    ):
        print(f"{name} ...", end=" ", flush=True, file=sys.stderr)
        wall, done = run(Command(name, args, None), data_dir, ROOT)
        if done.returncode != 0:
            sys.exit(f"`recsearch {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
        print(f"{wall:.1f}s", file=sys.stderr)
        setup[f"{name}_s"] = round(wall, 2)
        setup[f"{name}_output"] = done.stdout.strip()
    return setup


def measure(
    cmds: list[Command], trees: list[Path], data_dir: Path, runs: int
) -> list[dict[str, Any]]:
    rows: dict[tuple[Path, str], dict[str, Any]] = {
        (tree, c.name): {"walls": [], "failures": []} for tree in trees for c in cmds
    }
    for tree in trees:
        for command in cmds:  # untimed: warms the page cache, says what it loads
            rows[tree, command.name]["loads"] = heavy_loads(command, data_dir, tree)
    for i in range(runs):
        print(f"run {i + 1}/{runs}", file=sys.stderr)
        for command in cmds:
            for tree in trees:
                wall, done = run(command, data_dir, tree)
                row = rows[tree, command.name]
                row["walls"].append(wall)
                if done.returncode != 0:
                    row["failures"].append(done.stderr.strip()[-500:])
    out = []
    for tree in trees:
        for command in cmds:
            row = rows[tree, command.name]
            walls = row["walls"]
            median = statistics.median(walls)
            out.append(
                {
                    "tree": str(tree),
                    "command": command.name,
                    "argv": ["recsearch", *command.args] if not command.python else argv(command),
                    "goal_s": command.goal_s,
                    "median_s": round(median, 3),
                    "min_s": round(min(walls), 3),
                    "max_s": round(max(walls), 3),
                    "walls_s": [round(w, 3) for w in walls],
                    "meets_goal": None if command.goal_s is None else median <= command.goal_s,
                    "loads": row["loads"],
                    "failures": row["failures"],
                }
            )
    return out


def print_table(rows: list[dict[str, Any]], trees: list[Path]) -> None:
    width = max(len(r["command"]) for r in rows)
    for tree in trees:
        print(f"\n{tree}{'  (this checkout)' if tree == ROOT else ''}")
        print(
            f"{'command':<{width}}  {'median s':>8}  {'min':>6}  {'max':>6}  {'goal':>5}  "
            f"{'ok':<3}  loads"
        )
        for r in rows:
            if r["tree"] != str(tree):
                continue
            goal = f"{r['goal_s']:.1f}" if r["goal_s"] is not None else "-"
            ok = {None: "-", True: "yes", False: "NO"}[r["meets_goal"]]
            if r["failures"]:
                ok = "ERR"
            print(
                f"{r['command']:<{width}}  {r['median_s']:>8.3f}  {r['min_s']:>6.3f}  "
                f"{r['max_s']:>6.3f}  {goal:>5}  {ok:<3}  {', '.join(r['loads']) or '-'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command")
    parser.add_argument("--query", default="quiet beach with snorkeling")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="a data dir with a built index (default: a temporary one, ingested and built)",
    )
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        default=[],
        help="another checkout to time in the same loop (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_startup.json")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    trees = [ROOT, *(t.resolve() for t in args.tree)]
    cmds = commands(args.query)
    results: dict[str, Any] = {
        "benchmark": "cli_startup",
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        "runs": args.runs,
        "query": args.query,
        "goals_s": {"help": HELP_GOAL_S, "search": SEARCH_GOAL_S},
    }
    with tempfile.TemporaryDirectory(prefix="recsearch-cli-") as tmp:
        data_dir = args.data_dir.resolve() if args.data_dir else Path(tmp)
        results["data_dir"] = str(data_dir) if args.data_dir else "temporary"
        if not args.data_dir:
            results["setup"] = prepare(data_dir)
        results["commands"] = measure(cmds, trees, data_dir, args.runs)
    results["machine"]["load_avg_after"] = os.getloadavg()
    print_table(results["commands"], trees)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")
    failed = [r for r in results["commands"] if r["failures"]]
    for r in failed:
        print(f"{r['tree']}: `{r['command']}` failed: {r['failures'][0]}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

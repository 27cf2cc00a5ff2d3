"""The API key: one complete key when processes start together, the winner's key read by the
losers, and empty or short keys refused, naming the variable or the file."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.core.secrets import KEY_FILE, api_key
from engine.runtime import Runtime
from tests.conftest import ROOT
from web import create_app

# A process that says it is ready, waits for the start signal, then reads or creates the key
# and prints it.
KEY_SCRIPT = """
import os, sys, time
from pathlib import Path
from engine.core.config import Settings
from engine.core.secrets import api_key
go = Path(sys.argv[2])
(go.parent / f"{go.name}.ready.{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.001)
print(api_key(Settings(data_dir=Path(sys.argv[1]))))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSEARCH_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.mark.slow
def test_processes_starting_together_agree_on_one_complete_key(tmp_path: Path) -> None:
    for round_ in range(4):
        data_dir, go = tmp_path / f"var{round_}", tmp_path / f"go{round_}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", KEY_SCRIPT, str(data_dir), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
            for _ in range(16)
        ]
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob(f"go{round_}.ready.*"))) < len(procs):  # all at the line
            assert time.monotonic() < deadline
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=60) for p in procs]
        failed = [err for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode]
        assert not failed, failed[0]
        keys = {out.strip() for out, _ in outputs}
        assert len(keys) == 1 and len(keys.pop()) >= 40
        assert sorted(p.name for p in data_dir.iterdir()) == [KEY_FILE]  # no temp files left
        assert stat.S_IMODE((data_dir / KEY_FILE).stat().st_mode) == 0o600


def test_losing_the_race_reads_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writes its key between our look and our write: we use its key."""
    import engine.core.secrets

    settings = Settings(data_dir=tmp_path / "var")
    winner = "w" * 43
    real_token = engine.core.secrets.secrets.token_urlsafe

    def token_while_another_process_wins(nbytes: int) -> str:
        (settings.data_dir / KEY_FILE).write_text(winner + "\n")
        return real_token(nbytes)

    monkeypatch.setattr(
        engine.core.secrets.secrets, "token_urlsafe", token_while_another_process_wins
    )
    assert api_key(settings) == winner
    assert [p.name for p in settings.data_dir.iterdir()] == [KEY_FILE]


@pytest.mark.parametrize("content", ["", "\n", "   \n", "short-key\n"])
def test_an_empty_or_short_key_file_is_refused(tmp_path: Path, content: str) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    settings.data_dir.mkdir()
    (settings.data_dir / KEY_FILE).write_text(content)
    with pytest.raises(ConfigError, match=re.escape(str(settings.data_dir / KEY_FILE))):
        api_key(settings)


def test_a_short_configured_key_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", api_key="from-env")
    with pytest.raises(ConfigError, match="RECSEARCH_API_KEY"):
        api_key(settings)
    assert not settings.data_dir.exists()  # no file is generated in its place
    assert api_key(settings.replace(api_key="a-configured-key-16+")) == "a-configured-key-16+"


def test_the_server_and_the_key_command_refuse_an_empty_key_file(runtime: Runtime) -> None:
    path = runtime.settings.data_dir / KEY_FILE
    path.write_text("")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        create_app(runtime=runtime)
    done = subprocess.run(
        [sys.executable, "-m", "web.cli", "key"],
        capture_output=True,
        text=True,
        env=_env(RECSEARCH_DATA_DIR=str(runtime.settings.data_dir)),
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert str(path) in done.stderr and done.stderr.startswith("error: ")
    short = subprocess.run(
        [sys.executable, "-m", "web.cli", "key"],
        capture_output=True,
        text=True,
        env=_env(RECSEARCH_DATA_DIR=str(runtime.settings.data_dir), RECSEARCH_API_KEY="x"),
        timeout=120,
    )
    assert short.returncode == 2 and "RECSEARCH_API_KEY" in short.stderr

"""The README's commands, run: every ``$ fulcra ...`` line of its console blocks either runs (listing
commands) or, for ``run``, validates its whole config through ``fulcra config show`` (the runs
themselves take minutes, or need a scene and weights that are not on this machine: `--no-check`); a shown error
line must be what the command prints."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands() -> list[tuple[list[str], str | None]]:
    """``(argv after 'fulcra', the expected output line or None)`` for each console command."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("$ "):
                cmd = line[2:]
                while cmd.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
                cmd = re.sub(r"\s+#.*$", "", cmd)  # a trailing comment
                expected = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("$ ") else None
                argv = shlex.split(cmd)
                if argv[0] == "fulcra":
                    out.append((argv[1:], expected))
            i += 1
    return out


COMMANDS = _commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 8


@pytest.mark.parametrize("argv, expected", COMMANDS, ids=[" ".join(a)[:60] for a, _ in COMMANDS])
def test_readme_command(argv, expected, tmp_path):
    if argv[0] == "run":
        argv = ["config", "show", "--no-check", *argv[1:]]  # the scene and weights are not here
    elif argv[0] == "view":
        argv = [*argv, "--check"]  # validates the keys and prints the config instead of serving
    res = subprocess.run(
        [sys.executable, "-m", "fulcra", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    if expected is not None and expected.startswith("fulcra: error:"):
        assert res.returncode == 2
        shown = expected.split("...")[0]  # the README elides the end of the key list
        assert res.stderr.strip().startswith(shown), res.stderr
    else:
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.strip(), "printed nothing"

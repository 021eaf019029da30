"""xmppll as a user installs it, for the benchmarks: a wheel of a checkout in a fresh
virtualenv, byte-compiled, its console script `xmppll` in the venv's bin/.

The project's own .venv is an editable install, whose import hook adds ~8 ms to every
start-up (and to `python3 -c pass` in that venv): start-up numbers from it say more
about the finder than about xmppll (issue 14).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # any uid can run it (the venv's must be readable too)


@dataclass
class Install:
    label: str
    python: str
    script: str  # the console script

    def xmppll(self, *args: str) -> list[str]:
        return [self.script, *args] if self.script else [self.python, "-m", "xmppll", *args]


def _tree(rev: str | None, into: Path) -> Path:
    """The sources of `rev` (None: the working tree, uncommitted changes included)."""
    src = into / "src"
    if rev is None:
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache",
            ".ruff_cache", ".hypothesis", "results", "artifacts"))
        return src
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return src


def install(rev: str | None, label: str, base: Path | None = None) -> Install:
    """Build a wheel of `rev` and install it into a new venv under `base` (a temporary
    directory by default, readable by every user the benchmarks run commands as)."""
    where = Path(tempfile.mkdtemp(prefix=f"xmppll-bench-{label}-", dir=base))
    where.chmod(0o755)
    src = _tree(rev, where)
    wheels = where / "wheels"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(src)], check=True,
                   capture_output=True)
    venv = where / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    wheel = next(wheels.glob("xmppll-*.whl"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "-q",
                    "--disable-pip-version-check", "install", str(wheel)], check=True,
                   capture_output=True)
    shutil.rmtree(src)
    return Install(label, str(venv / "bin" / "python"), str(venv / "bin" / "xmppll"))


def editable(label: str = "editable") -> Install:
    """The interpreter running the bench, through `-m xmppll` (the old way)."""
    return Install(label, sys.executable, "")

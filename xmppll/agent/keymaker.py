"""A name's first TLS key, made by a child process while the agent starts.

Made in the agent, it cost ~35 ms before the first probe (importing cryptography, then
the key and its certificate) and the ~11 MB cryptography occupies, which the agent then
kept for good (issue 14). `announce` starts the child before it imports the agent, so
on a second core the key is ready before it is needed; the agent waits for it, and
makes the key itself if the child failed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("xmppll")
TLS_DIR = "tls"  # in the name's state directory
WAIT = 30.0  # s; an interpreter start and one P-256 key take well under one


def key_dir(state: Path) -> Path:
    return state / TLS_DIR


def start(state: Path, name: str) -> subprocess.Popen[bytes] | None:
    """A child making the key, or None when the name has one."""
    directory = key_dir(state)
    if (directory / "cert.pem").exists() and (directory / "key.pem").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "xmppll.agent.keymaker",
                             str(directory), name],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def finish(child: subprocess.Popen[bytes] | None) -> None:
    """Wait for the child; its failure is logged, and the caller makes the key."""
    if child is None:
        return
    try:
        _, err = child.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        child.kill()
        _, err = child.communicate()
    if child.returncode:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        log.warning("the TLS key maker failed (exit %s: %s): making the key here",
                    child.returncode, last[0])


if __name__ == "__main__":
    from xmppll.xmpp.tls import make_files

    make_files(Path(sys.argv[1]), sys.argv[2])

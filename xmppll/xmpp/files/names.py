"""File names from the network made safe to create on disk, and never over an existing
file.

A peer chooses the name of what it sends. Whatever it says, the file lands inside the
folder we chose: no path separators, no `..`, no NUL or control characters (a name
that retitles a terminal when listed), no leading dot (a hidden file, or `.bashrc`),
and no more than 255 bytes (NAME_MAX).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

NAME_MAX = 255
FALLBACK = "file"
PART = ".part"


def safe_name(name: str | None) -> str:
    """A plain file name that is safe to create in a folder of ours."""
    text = (name or "").replace("\\", "/")
    text = text.rsplit("/", 1)[-1]  # only the last path segment counts
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = text.strip().lstrip(".").strip()
    # The bytes must fit NAME_MAX with room for " (999)" and the ".TOKEN.part" suffix.
    limit = NAME_MAX - len(" (999)") - len(".12345678") - len(PART)
    while len(text.encode("utf-8", "surrogatepass")) > limit:
        stem, dot, ext = text.rpartition(".")
        text = stem[:-1] + "." + ext if dot and 0 < len(ext) <= 16 and stem else text[:-1]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text or FALLBACK


def sender_folder(sender: str | None) -> str:
    """A sender's folder under the download directory: its name, made safe."""
    return safe_name(sender or "unknown")


def unique_path(folder: Path, name: str) -> Path:
    """`folder/name`, or `name (1)`, `name (2)`... the first that does not exist yet.
    (The final rename is an os.link, which also refuses an existing name, so a race
    with another writer cannot overwrite either.)"""
    candidate = folder / name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    n = 0
    while os.path.lexists(candidate):
        n += 1
        candidate = folder / (f"{stem} ({n}).{ext}" if ext else f"{stem} ({n})")
    return candidate

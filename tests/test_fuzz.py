"""Fuzzing in CI: a small fixed budget of mutated real streams and TXT records, plus
hypothesis over arbitrary bytes, plus every saved crash replayed as a regression."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fuzzing import CORPUS, HEADER, TARGETS, run, stream_target, txt_target
from hypothesis import given, settings
from hypothesis import strategies as st

BUDGET = int(os.environ.get("XMPPLL_FUZZ_ITERATIONS", "3000"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_mutation_budget(target: str) -> None:
    assert run(target, BUDGET, seed=1) == BUDGET


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_parser_after_a_header_survives_any_bytes(data: bytes) -> None:
    stream_target(HEADER + data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_parser_survives_any_bytes_in_any_chunks(data: bytes, chunk: int) -> None:
    stream_target(data, chunk)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_txt_decoder_survives_any_bytes(data: bytes) -> None:
    txt_target(data)


def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.bin")) if CORPUS.exists() else []


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_saved_crashes_stay_fixed(path: Path) -> None:
    TARGETS[path.name.split("-", 1)[0]](path.read_bytes())

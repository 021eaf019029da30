"""Longer fuzzing than CI affords: mutate real libpurple streams and TXT records for a
time budget per target, report throughput, and save any crash to tests/fuzz_corpus/
(where tests/test_fuzz.py replays it from then on).

    .venv/bin/python bench/fuzz.py [--seconds 60] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzing import TARGETS, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="budget per target")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    print(f"{'target':<8} {'inputs':>10} {'inputs/s':>10}  result   (seed {args.seed})")
    for name in sorted(TARGETS):
        tried, start, seed = 0, time.monotonic(), args.seed
        result = "ok"
        while time.monotonic() - start < args.seconds:
            try:
                tried += run(name, 1000, seed=seed)
            except Exception as exc:  # a crash: run() saved the input
                result = f"CRASH {type(exc).__name__}: {exc}"
                break
            seed += 1
        elapsed = time.monotonic() - start
        print(f"{name:<8} {tried:>10} {tried / elapsed:>10.0f}  {result}")


if __name__ == "__main__":
    main()

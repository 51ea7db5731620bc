"""``make bench``: runs every bench/bench_*.py, each printing its table and writing JSON under bench/results/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    selected = argv or sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py"))
    env = {**os.environ, "TRIAGE_DEBUG": os.environ.get("TRIAGE_DEBUG", "1"), "PYTHONPATH": str(ROOT)}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    failures = []
    for name in selected:
        print(f"\n=== bench {name} ===", flush=True)
        code = subprocess.run([sys.executable, str(ROOT / "bench" / f"bench_{name}.py")], cwd=ROOT, env=env).returncode
        if code:
            failures.append(name)
    if failures:
        print(f"\nbenchmarks failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

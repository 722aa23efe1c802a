"""Run every benchmark (``make bench``); ``--quick`` runs each in its ≤ 2 min mode.

Each benchmark writes its section of docs/benchmarks.md and ends with a JSON line; this runner
collects those lines into docs/benchmarks.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["teacher_forward", "extract", "loader", "distill", "scaling", "codecs", "attention_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("names", nargs="*", default=BENCHMARKS, help=f"subset of {BENCHMARKS}")
    args = parser.parse_args()
    results, failed = [], []
    for name in args.names:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        print(f"== {name}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith('{"')]
        if proc.returncode or not lines:
            failed.append(name)
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
            continue
        print(lines[-1], flush=True)
        results.append(json.loads(lines[-1]))
    (HERE.parent / "docs" / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

"""`python -m conformance validate PATH...`: check case files without running anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.cases import load_paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conformance", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="load and check case files; exit 1 on any error")
    validate.add_argument("paths", nargs="*", type=Path, default=[Path("cases")])
    args = parser.parse_args(argv)
    loaded = load_paths(args.paths)
    for error in loaded.errors:
        print(error, file=sys.stderr)
    checks = sum(len(case.dtypes) for case in loaded.cases)
    print(f"{len(loaded.cases)} valid case(s), {checks} case x dtype combination(s), {len(loaded.errors)} error(s)")
    return 1 if loaded.errors else 0

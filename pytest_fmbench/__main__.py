"""``python -m pytest_fmbench <command>``: the few things done outside a pytest run.

- ``sweep``: delete what pytest-fmbench left running, by tag (``safety/sweep.py``);
- ``report DIR``: rebuild a run's report and verdict from its records (``report/rebuild.py``);
- ``merge DIR... --out DIR``: one report and verdict from several runs' (shards') records;
- ``pricing refresh``: fetch current prices (the same as ``python -m
  pytest_fmbench.config.pricing refresh``, which keeps working).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m pytest_fmbench {sweep,report,merge,pricing} ...

  sweep     delete what pytest-fmbench left running, found by its tags (--help for options)
  report    rebuild a run's report and verdict from its records: report DIR
  merge     one report and verdict from several results dirs: merge DIR... --out DIR
  pricing   refresh the price table from the AWS Pricing API (pricing refresh --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "sweep":
        from pytest_fmbench.safety.sweep import main as sweep

        return sweep(rest)
    if command in ("report", "merge"):
        from pytest_fmbench.report.rebuild import main as rebuild

        return rebuild(rest, merge=command == "merge")
    if command == "pricing":
        from pytest_fmbench.config.pricing import main as pricing

        return pricing(rest)
    print(f"unknown command '{command}'\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

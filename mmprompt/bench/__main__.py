"""Dispatch ``python -m mmprompt.bench <name> [options]`` to ``mmprompt.bench.<name>.main(options)``."""

from __future__ import annotations

import importlib
import sys

from mmprompt.bench import available


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    names = available()
    usage = f"usage: python -m mmprompt.bench {{{','.join(names)}}} [options]   (<name> --help for its options)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {names}\n{usage}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"mmprompt.bench.{name}")
    result = module.main(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

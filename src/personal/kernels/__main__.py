"""``python -m personal.kernels build|status``: build the fast CPU kernels now, or report."""

from __future__ import annotations

import sys

import personal  # noqa: F401  (before mlx: the fast BLAS)
from personal.errors import KernelBuildError
from personal.kernels import status
from personal.kernels.build import build


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command == "build":
        try:
            print(build(force="--force" in args))
        except KernelBuildError as exc:
            print(f"personal.kernels: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "status":
        print(status().reason)
        return 0
    print("usage: python -m personal.kernels build [--force] | status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The demo `make demo` runs: ``personal simulate`` with its defaults.

    python -m personal_sim.demo [personal simulate options]

A synthetic population (personas drawn from the public corpus's world, heavy-tailed usage,
drifting interests) uses the library for a simulated week: each user logs into a real
encrypted store, trains DP rounds behind the quality gates with replay and EWC, and lives
through an OS update (base-v1 -> base-v2) with a distillation migration. It prints a summary
table and writes ``runs/simulate/report.html``. Same code as ``personal simulate``
(:mod:`personal.cli.simulate`); see docs/simulation.md.
"""

from __future__ import annotations

from personal.cli.simulate import simulate_command


def main(argv: list[str] | None = None) -> None:
    """Run ``personal simulate`` (defaults unless options are given)."""
    simulate_command.main(args=argv, prog_name="python -m personal_sim.demo")


if __name__ == "__main__":
    main()

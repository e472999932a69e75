"""The demo `make demo` runs: what personalization is worth, with and without DP, in minutes.

    python -m personal_sim.demo            # 4 heavy users x 7 days, OS update on day 4 (~4 min)
    python -m personal_sim.demo --quick    # 1 user x 2 days: the plumbing, in seconds

The simulator (``personal simulate``'s code, :func:`personal.cli.simulate.run_simulation`) with
the bundled ``default`` policy as shipped, on the same users under four arms: ``non-dp`` (no
noise), ``dp`` (the policy; distillation at the OS update), ``dp+memory`` (the same DP adapter
served with personal memory, as ``Personalizer.generate`` serves it by default: measured on the
same store, no second training) and ``drop`` (the policy; the adapter dropped at the OS
update). It prints one row for the bare base and one per arm: held-out loss
gain over the bare base, slot accuracy (bare base and served model), general drift, ε spent,
rounds run (passed), the gain just before and just after the OS update, then one conclusion
line derived from those numbers (:mod:`personal_sim.contrast`). The full report goes to
``runs/demo/report.html``.

Why the demo's defaults differ from ``personal simulate``'s (5 users of any usage, ``dp`` only):

* **Heavy users** (``--min-rate 16``: the seed's first users who log at least 16 interactions
  a day on average, each the same user as in an unfiltered run). The shipped policy waits for
  64 new interactions before a round (smaller DP rounds measurably hurt, docs/dp-utility.md),
  so a light user (4-10 a day) trains once in 7-12 days: a week of light users shows no round
  at all, which says nothing about what a round is worth. Light users are measured in
  docs/dp-utility.md; the policy is not changed for the demo (what it measures is what ships).
* **Four arms** on the same users (common random numbers): the contrast is the point.
* **2 workers** (the 2-core machine the demo must fit in 5 minutes), ``runs/demo``.

Every option can be changed (``--help``); ``--quick`` changes sizes only.
"""

from __future__ import annotations

from typing import Any

from personal.cli.simulate import run_simulation
from personal.errors import PersonalError

import click

from personal_sim.contrast import contrast_table
from personal_sim.population import HEAVY_RATE

ARMS = ("non-dp", "dp", "dp+memory", "drop")
DEFAULTS: dict[str, Any] = {
    "users": 4, "days": 7, "update_day": 4, "min_rate": HEAVY_RATE, "workers": 2,
    "held_out": 48, "public_eval": 64, "seed": 0, "out": "runs/demo",
}  # fmt: skip
#: ``--quick``: sizes only (one heavy user, two days with the OS update on the second).
QUICK: dict[str, Any] = {"users": 1, "days": 2, "update_day": 1, "held_out": 8, "public_eval": 8}


def _option(name: str, kind: Any, help_: str) -> Any:
    return click.option(
        f"--{name.replace('_', '-')}", name, type=kind, default=DEFAULTS[name],
        show_default=True, help=help_,
    )  # fmt: skip


@click.command("demo")
@_option("users", click.IntRange(min=1), "Synthetic users.")
@_option("days", click.IntRange(min=1), "Simulated days.")
@_option("update_day", click.IntRange(min=1), "Day of the OS update (>= --days: none).")
@_option("min_rate", click.FloatRange(min=0), "Only users logging at least this many a day.")
@_option("workers", click.IntRange(min=1), "Parallel worker processes.")
@_option("held_out", click.IntRange(min=1), "Held-out personal examples per user and day.")
@_option("public_eval", click.IntRange(min=1), "Held-out public examples (general drift).")
@_option("seed", int, "Population, noise and sampling seed.")
@_option("out", click.Path(file_okay=False), "Directory for report.html and metrics.json.")
@click.option(
    "--policy",
    default=None,
    metavar="FILE",
    help="Policy file or bundled name [default: the bundled default, as shipped].",
)
@click.option("--base", default="base-v1", show_default=True, help="Base before the update.")
@click.option("--update-base", default="base-v2", show_default=True, help="Base it ships.")
@click.option(
    "--quick", is_flag=True, help="1 user x 2 days, few examples (sizes only; options win)."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def demo_command(quick: bool, no_progress: bool, **options: Any) -> None:
    """Contrast the bare base, non-DP, DP, DP + memory, and migration vs drop at an OS update."""
    if quick:  # sizes the command line does not set
        context = click.get_current_context()
        default = click.core.ParameterSource.DEFAULT
        options.update(
            {k: v for k, v in QUICK.items() if context.get_parameter_source(k) == default}
        )
    options["workers"] = min(options["workers"], options["users"])
    try:
        run_simulation(
            **options, backend="local", compare=False, arms=ARMS, summary=contrast_table,
            progress=not no_progress,
        )  # fmt: skip
    except PersonalError as exc:
        raise click.ClickException(str(exc)) from exc


def main(argv: list[str] | None = None) -> None:
    """Run the demo (its defaults unless options are given)."""
    demo_command.main(args=argv, prog_name="python -m personal_sim.demo")


if __name__ == "__main__":
    main()

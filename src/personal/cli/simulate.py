"""`personal simulate`: run the library over a synthetic population and write a report.

The simulators live outside the library (``personal_sim/``); they are imported only when the
command runs, so ``personal`` itself never depends on them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from personal.errors import PersonalError

import click

DEFAULT_OUT = "runs/simulate"


def _progress_bar(total: int) -> Any:
    """A tqdm bar on stderr (None, i.e. no bar, if tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="user-day", desc="simulating", file=sys.stderr, smoothing=0.1)


def run_simulation(
    *,
    users: int,
    days: int,
    update_day: int,
    policy: str | None,
    backend: str,
    workers: int | None,
    seed: int,
    out: str,
    compare: bool,
    address: str | None = None,
    base: str = "base-v1",
    update_base: str = "base-v2",
    held_out: int = 48,
    public_eval: int = 64,
    progress: bool = True,
    public_data: str | None = None,
    min_rate: float = 0.0,
    arms: Sequence[str] | None = None,
    summary: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """What ``personal simulate`` does; returns the metrics (also written under ``out``).

    ``arms`` (default: ``dp``, or the ``--compare`` arms) and ``summary`` (what is printed at
    the end; default: the report's summary table) let ``python -m personal_sim.demo`` reuse it.
    """
    from personal.policy import load_policy

    from personal_sim.report import summary_table, write_report
    from personal_sim.runner import COMPARE_ARMS, DEFAULT_ARMS, SimConfig, simulate

    config = SimConfig(
        users=users,
        days=days,
        update_day=update_day,
        seed=seed,
        policy=load_policy(policy).to_dict() if policy else None,
        arms=tuple(arms) if arms else COMPARE_ARMS if compare else DEFAULT_ARMS,
        base=base,
        update_base=update_base,
        held_out=held_out,
        public_eval=public_eval,
        public_data=public_data,
        min_rate=min_rate,
    )
    bar = _progress_bar(users * days * len(config.arms)) if progress else None
    who = f"{users} users" + (f" logging >= {min_rate:g} a day" if min_rate > 0 else "")
    click.echo(
        f"simulating {who} x {days} days, arms {', '.join(config.arms)}, "
        + (f"OS update on day {update_day}" if config.has_update else "no OS update")
        + f", backend {backend} -> {out}",
        err=True,
    )
    started = time.perf_counter()
    try:
        metrics = simulate(
            config,
            backend=backend,
            workers=workers,
            address=address,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    paths = write_report(metrics, out)
    click.echo((summary or summary_table)(metrics))
    click.echo(
        "\nnote: simulated rounds use seeded noise: reproducible, NOT differentially private."
    )
    click.echo(f"{time.perf_counter() - started:.0f} s; report: {paths['html']}")
    return metrics


def register(group: click.Group) -> None:
    """Add ``simulate`` to ``group``."""
    group.add_command(simulate_command)


@click.command("simulate")
@click.option(
    "--users", type=click.IntRange(min=1), default=5, show_default=True, help="Synthetic users."
)
@click.option(
    "--days", type=click.IntRange(min=1), default=7, show_default=True, help="Simulated days."
)
@click.option(
    "--update-day",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Day the OS update ships the new base (>= --days: no update).",
)
@click.option(
    "--policy",
    "policy",
    default=None,
    metavar="FILE",
    help="Policy file or bundled name [default: the bundled default, as shipped].",
)
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel workers [default: the number of cores].",
)
@click.option("--address", default=None, help="Ray cluster address (default: start a local one).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    default=DEFAULT_OUT,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for report.html, metrics.json and the plots.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Run the arms side by side: DP vs non-DP, replay+EWC vs none, distill vs drop, "
    "personal memory alone and with DP.",
)
@click.option("--base", default="base-v1", show_default=True, help="Base model before the update.")
@click.option(
    "--update-base", default="base-v2", show_default=True, help="Base model the OS update ships."
)
@click.option(
    "--held-out",
    type=click.IntRange(min=1),
    default=48,
    show_default=True,
    help="Held-out personal examples per user and day (never logged).",
)
@click.option(
    "--public-eval",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Held-out public examples for the general loss.",
)
@click.option(
    "--public-data",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Public data (JSONL) for the gates, replay and migration "
    "[default: the simulator's public corpus].",
)
@click.option(
    "--min-rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Recruit only users logging at least this many interactions a day on average "
    "(0: everyone).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def simulate_command(
    users: int,
    days: int,
    update_day: int,
    policy: str | None,
    backend: str,
    workers: int | None,
    address: str | None,
    seed: int,
    out: str,
    compare: bool,
    base: str,
    update_base: str,
    held_out: int,
    public_eval: int,
    public_data: str | None,
    min_rate: float,
    no_progress: bool,
) -> None:
    """Simulate a population using the library and write OUT/report.html.

    Each user gets a real encrypted store, DP rounds under the policy, and a base-model update
    with migration; runs use seeded noise (reproducible, hence not private).
    """
    try:
        run_simulation(
            users=users,
            days=days,
            update_day=update_day,
            policy=policy,
            backend=backend,
            workers=workers,
            seed=seed,
            out=out,
            compare=compare,
            address=address,
            base=base,
            update_base=update_base,
            held_out=held_out,
            public_eval=public_eval,
            progress=not no_progress,
            public_data=public_data,
            min_rate=min_rate,
        )
    except PersonalError as exc:
        raise click.ClickException(str(exc)) from exc

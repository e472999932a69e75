"""The simulation report: ``OUT/report.html`` (self-contained), ``OUT/metrics.json``, PNG plots.

    paths = write_report(metrics, "runs/simulate")   # {"html": ..., "metrics": ..., "plots": [...]}
    print(summary_table(metrics))

Figures (matplotlib, Agg backend, embedded in the page as base64 PNG and written next to it):

* ``personal_gain.png``: per arm, the mean over users of the *personal gain* by day -- the
  relative drop of held-out personal loss of the served model (base + active adapter) against
  the bare base serving that day -- with each user's line faint behind it.
* ``general_drift.png``: how far the served model's public-corpus loss sits above the bare
  base's (the forgetting the gates bound), with the gate's threshold.
* ``epsilon.png``: ε spent (max over each user's units) by day against the lifetime budget.
* ``os_update.png``: the OS update's dip and recovery: mean held-out personal loss by day per
  arm with the bare bases' loss, and per arm the gain just before the update, just after the
  migration and on the last day.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

#: Colours per arm (stable across figures).
COLORS = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6")
PLOTS = ("personal_gain", "general_drift", "epsilon", "os_update")
PLOT_HINT = "plots need matplotlib: pip install 'personal[plots]' (or pip install matplotlib)"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        from personal.errors import ConfigError

        raise ConfigError(PLOT_HINT) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _color(metrics: dict[str, Any], arm: str) -> str:
    return COLORS[list(metrics["config"]["arms"]).index(arm) % len(COLORS)]


def _series(metrics: dict[str, Any], arm: str, key: str) -> list[list[float]]:
    return [[d[key] for d in u["arms"][arm]["days"]] for u in metrics["users"]]


def _users_and_mean(ax: Any, metrics: dict[str, Any], arm: str, key: str, mean_key: str) -> None:
    """Each user's ``key`` by day (faint) and the arm's mean (bold), in percent."""
    color, days = _color(metrics, arm), range(metrics["config"]["days"])
    for line in _series(metrics, arm, key):
        ax.plot(days, [100 * v for v in line], color=color, alpha=0.18, lw=1)
    mean = metrics["summary"][arm][mean_key]
    ax.plot(days, [100 * v for v in mean], color=color, lw=2.5, marker="o", label=arm)


def _update_line(ax: Any, config: dict[str, Any]) -> None:
    if config["update_day"] < config["days"]:
        ax.axvline(config["update_day"] - 0.5, color="#777", ls="--", lw=1)
        ax.annotate(
            f"OS update → {config['update_base']}", (config["update_day"] - 0.45, 0.97),
            xycoords=("data", "axes fraction"), va="top", fontsize=8, color="#555",
        )  # fmt: skip


def _finish(ax: Any, title: str, ylabel: str, days: int) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("simulated day")
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(days))
    ax.grid(alpha=0.3)


def _legend_outside(ax: Any, *, below: bool = False) -> None:
    """The legend outside the plot area (right of it, or below it), never over its lines."""
    if below:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    else:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def plot_personal_gain(metrics: dict[str, Any], plt: Any) -> Any:
    config, days = metrics["config"], range(metrics["config"]["days"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in config["arms"]:
        _users_and_mean(ax, metrics, arm, "personal_gain", "gain_by_day")
    ax.axhline(0, color="#333", lw=0.8)
    _update_line(ax, config)
    _finish(ax, "Personal gain over days (held-out loss vs the bare base)", "gain (%)", len(days))
    _legend_outside(ax)
    return fig


def plot_general_drift(metrics: dict[str, Any], plt: Any) -> Any:
    config, days = metrics["config"], range(metrics["config"]["days"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in config["arms"]:
        _users_and_mean(ax, metrics, arm, "general_drift", "general_drift_by_day")
    limit = config["policy"]["gates"]["max_general_regression"]
    ax.axhline(100 * limit, color="#b00", ls=":", lw=1.2, label="gate: max regression per round")
    ax.axhline(0, color="#333", lw=0.8)
    _update_line(ax, config)
    _finish(ax, "General (public-corpus) loss drift vs the bare base", "drift (%)", len(days))
    _legend_outside(ax)
    return fig


def plot_epsilon(metrics: dict[str, Any], plt: Any) -> Any:
    config, days = metrics["config"], range(metrics["config"]["days"])
    fig, ax = plt.subplots(figsize=(7, 4))
    dp_arms = [a for a in config["arms"] if a != "non-dp"] or list(config["arms"])
    for arm in dp_arms:
        color = _color(metrics, arm)
        for line in _series(metrics, arm, "epsilon"):
            ax.plot(days, line, color=color, alpha=0.3, lw=1)
        ax.plot(days, metrics["summary"][arm]["epsilon_max_by_day"], color=color, lw=2.5,
                marker="o", label=f"{arm}: max over users")  # fmt: skip
    budget = metrics["summary"][dp_arms[0]]["epsilon_budget"]
    ax.axhline(budget, color="#b00", ls="--", lw=1.5, label=f"lifetime budget ε = {budget:g}")
    ax.set_ylim(0, budget * 1.1)
    _update_line(ax, config)
    _finish(ax, "ε spent (max over each user's units) vs the budget", "ε", len(days))
    _legend_outside(ax)
    return fig


def plot_os_update(metrics: dict[str, Any], plt: Any) -> Any:
    config, days = metrics["config"], range(metrics["config"]["days"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    first = config["arms"][0]
    bare = [
        sum(col) / len(col)
        for col in zip(*_series(metrics, first, "bare_personal_loss"), strict=True)
    ]
    left.plot(days, bare, color="#555", ls="--", lw=1.5, label="bare base of the day")
    for arm in config["arms"]:
        loss = [
            sum(col) / len(col) for col in zip(*_series(metrics, arm, "personal_loss"), strict=True)
        ]
        left.plot(days, loss, color=_color(metrics, arm), lw=2, marker="o", label=arm)
    _update_line(left, config)
    _finish(left, "Held-out personal loss (mean over users)", "loss", len(days))
    _legend_outside(left, below=True)
    labels = ("before update", "after migration", "last day")
    width = 0.8 / max(len(config["arms"]), 1)
    for k, arm in enumerate(config["arms"]):
        s = metrics["summary"][arm]
        values = [s["pre_update_gain"], s["post_update_gain"], s["final_gain"]]
        xs = [i + (k - (len(config["arms"]) - 1) / 2) * width for i in range(3)]
        right.bar(xs, [100 * (v or 0.0) for v in values], width, color=_color(metrics, arm),
                  label=arm)  # fmt: skip
    right.set_xticks(range(3), labels)
    right.axhline(0, color="#333", lw=0.8)
    right.set_title("The OS update: dip and recovery (mean gain)", fontsize=11)
    right.set_ylabel("gain (%)")
    right.grid(alpha=0.3, axis="y")
    _legend_outside(right, below=True)
    fig.tight_layout()
    return fig


PLOTTERS = {
    "personal_gain": plot_personal_gain,
    "general_drift": plot_general_drift,
    "epsilon": plot_epsilon,
    "os_update": plot_os_update,
}


def render_plots(metrics: dict[str, Any], out: Path) -> dict[str, bytes]:
    """Write every figure as ``OUT/<name>.png``; returns the PNG bytes by name."""
    plt = _pyplot()
    pngs: dict[str, bytes] = {}
    for name, plot in PLOTTERS.items():
        fig = plot(metrics, plt)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        pngs[name] = buffer.getvalue()
        (out / f"{name}.png").write_bytes(pngs[name])
    return pngs


# --- tables -------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}%"


def _pct_ci(s: dict[str, Any], key: str) -> str:
    """The mean over users and its 95 % bootstrap interval (``+1.2% [+0.4, +2.0]``)."""
    interval = (s.get("intervals") or {}).get(key)
    if s.get(key) is None or not interval:
        return _pct(s.get(key))
    return f"{_pct(s[key])} [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The summary table: one row per arm."""
    rows = [["arm", "final gain [95% CI]", "slot accuracy", "before update", "after migration",
             "general drift", "ε max / budget", "rounds (passed)", "migrations kept",
             "s/round"]]  # fmt: skip
    users = len(metrics["users"])
    for arm in metrics["config"]["arms"]:
        s = metrics["summary"][arm]
        kept = f"{s['migrations_accepted']}/{users}" if s["post_update_gain"] is not None else "—"
        rows.append([
            arm, _pct_ci(s, "final_gain"), _share(s.get("final_slot_accuracy")),
            _pct_ci(s, "pre_update_gain"), _pct_ci(s, "post_update_gain"),
            _pct_ci(s, "final_general_drift"), f"{s['epsilon_max']:.2f} / {s['epsilon_budget']:g}",
            f"{s['rounds']} ({s['passed']})" if s.get("train", True) else "— (no training)",
            kept if s.get("train", True) else "— (no adapter)",
            _num(s["round_seconds"], "{:.1f}"),
        ])  # fmt: skip
    return rows


def _points(delta: float) -> str:
    return f"{100 * delta:+.2f} pts"


def goal_lines(metrics: dict[str, Any]) -> list[str]:
    """Issue 18's ``--compare`` goals, computed from the summary (met or not, by how much):
    ``memory``'s slot accuracy at least the ``non-dp`` adapter's, and ``dp+memory``'s mean
    final loss gain above both ``dp``'s and ``memory``'s. Empty without those arms."""
    summary, lines = metrics["summary"], []
    memory, nondp = summary.get("memory"), summary.get("non-dp")
    if memory is not None and nondp is not None:
        ours, theirs = memory.get("final_slot_accuracy"), nondp.get("final_slot_accuracy")
        goal = "goal: memory's slot accuracy >= the non-DP adapter's"
        if ours is None or theirs is None:
            lines.append(f"{goal}: not measured (no slot requests)")
        else:
            verdict = "met" if ours >= theirs else "NOT met"
            lines.append(f"{goal}: {verdict}: memory {_share(ours)}, non-dp {_share(theirs)} "
                         f"({_points(ours - theirs)})")  # fmt: skip
    both, dp = summary.get("dp+memory"), summary.get("dp")
    if both is not None and dp is not None and memory is not None:
        gain = both["final_gain"]
        over_dp, over_memory = gain - dp["final_gain"], gain - memory["final_gain"]
        verdict = "met" if over_dp > 0 and over_memory > 0 else "NOT met"
        lines.append(
            f"goal: dp+memory's mean loss gain > dp's and memory's: {verdict}: dp+memory "
            f"{_pct(gain)}, dp {_pct(dp['final_gain'])} ({_points(over_dp)}), memory "
            f"{_pct(memory['final_gain'])} ({_points(over_memory)})"
        )
    return lines


def text_table(rows: list[list[str]]) -> str:
    """``rows`` (the first one the header) as fixed-width text with a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(metrics: dict[str, Any]) -> str:
    """The summary as fixed-width text (what the CLI prints at the end), with the goal lines
    of :func:`goal_lines` under it when the run has their arms."""
    goals = goal_lines(metrics)
    return text_table(summary_rows(metrics)) + ("\n\n" + "\n".join(goals) if goals else "")


def user_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The per-user table: one row per user and arm."""
    from personal_sim.runner import SimConfig, arm_user_summary

    config = SimConfig(
        **{k: metrics["config"][k] for k in ("users", "days", "update_day", "seed")},
        arms=tuple(metrics["config"]["arms"]),
    )
    rows = [["user", "kind", "per day", "logged", "arm", "final gain", "accuracy", "ε", "rounds",
             "passed", "refused (general / personal)", "migration", "version"]]  # fmt: skip
    for u in metrics["users"]:
        for arm in config.arms:
            s = arm_user_summary(config, u["arms"][arm])
            migration = {None: "—", True: "kept", False: "refused"}[s["migration_accepted"]]
            rows.append([
                str(u["user"]), u["profile"]["kind"], f"{u['profile']['rate_per_day']:.1f}",
                str(sum(u["logged"])), arm, _pct(s["final_gain"]),
                f"{s['final_accuracy']:.3f}", f"{s['epsilon']:.2f}", str(s["rounds"]),
                str(s["passed"]), f"{s['refused_general']} / {s['refused_personal']}",
                migration, str(s["final_version"] or "bare"),
            ])  # fmt: skip
    return rows


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _migration_rows(metrics: dict[str, Any]) -> list[list[str]]:
    rows = [["user", "arm", "strategy", "old → new version", "kept", "gate", "ε charged",
             "gain before", "gain after", "seconds"]]  # fmt: skip
    for u in metrics["users"]:
        for arm, data in u["arms"].items():
            m = data["migration"]
            if not m:
                continue
            rows.append([
                str(u["user"]), arm, m["strategy"],
                f"{m['old_version'] or 'bare'} → {m['new_version'] or 'bare'}",
                "yes" if m["accepted"] else "no", "; ".join(m["gate_reasons"][:1]) or "—",
                f"{m['epsilon_charged']:.3f}", _pct(m["gain_before"]), _pct(m["gain_after"]),
                f"{m['wall_seconds']:.1f}",
            ])  # fmt: skip
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.6em 0 1.4em;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0} td:first-child,th:first-child{text-align:left}
.note{background:#fff4e5;border-left:4px solid #f0a020;padding:0.6em 1em}
img{max-width:100%;border:1px solid #eee;margin:0.4em 0} code{background:#f5f5f5}
"""


def _goals_html(metrics: dict[str, Any]) -> str:
    goals = goal_lines(metrics)
    if not goals:
        return ""
    items = "".join(f"<li>{escape(line)}</li>" for line in goals)
    return f"<h3>Goals (personal memory, issue 18)</h3><ul>{items}</ul>"


def render_html(metrics: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """The report page: every figure embedded, nothing fetched."""
    config, runtime = metrics["config"], metrics["runtime"]
    figures = "".join(
        f'<h3>{escape(name.replace("_", " "))}</h3><img alt="{name}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for name, png in pngs.items()
    )
    arms = "".join(f"<li><b>{escape(a)}</b>: {escape(d)}</li>" for a, d in metrics["arms"].items())
    update = (
        f"day {config['update_day']} ({escape(config['base'])} → {escape(config['update_base'])})"
        if config["update_day"] < config["days"] else "none during the run"
    )  # fmt: skip
    rate = config.get("min_rate") or 0
    recruited = f" (those logging at least {rate:g} interactions a day)" if rate else ""
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>personal simulate: {config["users"]} users, {config["days"]} days</title>
<style>{_CSS}</style></head><body>
<h1>Simulation report</h1>
<p>{config["users"]} synthetic users{recruited}, {config["days"]} simulated days,
OS update: {update};
seed {config["seed"]}; policy <code>{escape(config["policy"]["name"])}</code> with overrides
(digest <code>{escape(config["policy_digest"][:19])}…</code>);
backend <code>{escape(runtime["backend"])}</code> with {runtime["workers"]} workers,
{runtime["seconds"]:.0f} s ({runtime["users_per_min"]:.2f} users/min).</p>
<p class="note"><b>Not private:</b> {escape(metrics["privacy_note"])}</p>
<h2>Arms</h2><ul>{arms}</ul>
<h2>Summary</h2>{_html_table(summary_rows(metrics))}{_goals_html(metrics)}
<p>Gain: relative drop of the held-out personal loss of the served model against the bare base
serving that day (held-out examples are never logged). General drift: the same for the
public-corpus loss (positive = forgetting). ε: the largest filter-ε over the user's units.
Slot accuracy (last day): the share of held-out requests naming a personal slot whose greedy
reply names the user's value. Arms with memory are measured with the interactions recalled
for each held-out request before it; the bare base, memory-free.</p>
<h2>Figures</h2>{figures}
<h2>OS update: migration events</h2>{_html_table(_migration_rows(metrics))}
<h2>Per user</h2>{_html_table(user_rows(metrics))}
<h2>Configuration</h2><pre>{escape(json.dumps(config, indent=1))}</pre>
</body></html>
"""


def write_report(metrics: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write ``metrics.json``, the PNG figures and ``report.html`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False))
    pngs = render_plots(metrics, out)
    (out / "report.html").write_text(render_html(metrics, pngs), encoding="utf-8")
    return {
        "html": out / "report.html",
        "metrics": out / "metrics.json",
        "plots": [out / f"{name}.png" for name in pngs],
    }

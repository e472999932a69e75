"""The demo's summary: each arm against the bare base, and one conclusion drawn from the numbers.

    print(contrast_table(metrics))   # a row for the bare base, then one per arm
    print(conclusion(metrics))       # one plain-language line, derived from the same numbers

Columns (means over users on the last day, as in :mod:`personal_sim.summary`):

* **held-out loss gain**: relative drop of the held-out personal loss of the served model
  against the bare base of the day, with its 95 % bootstrap interval over users;
* **slot accuracy**: share of the last day's held-out requests whose greedy reply names the
  user's contact, address, artist or time (:mod:`personal_sim.slots`), bare base and served
  model (points against the bare base);
* **general drift**: how far the served model's public-text loss sits above the bare base's;
* **ε max**: the largest ε the ledger charged any unit (the non-DP arm adds no noise: ∞; the
  ``memory`` arm trains nothing: 0);
* **rounds run (passed)**: rounds that trained, and how many adapters passed the gates;
* **OS update**: the mean gain just before the update and just after the migration (or drop),
  with the migrated adapters that passed the gate.
"""

from __future__ import annotations

from typing import Any

from personal_sim.report import _pct, _pct_ci, text_table

COLUMNS = ("arm", "held-out loss gain [95% CI]", "slot accuracy", "general drift",
           "ε max / budget", "rounds run (passed)", "OS update: gain before → after")  # fmt: skip
BARE = "bare base"
#: Row labels of the arms the demo runs (any other arm is shown by its name).
LABELS = {"non-dp": "non-DP", "dp": "DP, distill at update", "drop": "DP, drop at update",
          "memory": "memory, no training", "dp+memory": "DP + memory (the default)"}  # fmt: skip


def label(arm: str) -> str:
    return LABELS.get(arm, arm)


def _points(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _strategy(metrics: dict[str, Any], arm: str) -> str | None:
    """The migration strategy the arm used at the OS update (``None``: no update)."""
    for user in metrics["users"]:
        migration = user["arms"][arm]["migration"]
        if migration:
            return str(migration["strategy"])
    return None


def _bare_slots(summary: dict[str, Any]) -> float | None:
    """The bare base's slot accuracy (the same users and requests under every arm)."""
    return next(iter(summary.values()))["bare_slot_accuracy"]


def _slots(s: dict[str, Any]) -> str:
    served, bare = s["final_slot_accuracy"], s["bare_slot_accuracy"]
    if served is None or bare is None:
        return "—"
    return f"{_points(served)} ({100 * (served - bare):+.1f} pts)"


def _update(metrics: dict[str, Any], arm: str) -> str:
    s, users = metrics["summary"][arm], len(metrics["users"])
    strategy = _strategy(metrics, arm)
    if strategy is None:
        return "—"
    fate = "dropped" if strategy == "drop" else f"{s['migrations_accepted']}/{users} kept"
    if not s.get("train", True):
        fate = "no adapter"
    return f"{_pct(s['pre_update_gain'])} → {_pct(s['post_update_gain'])} ({fate})"


def contrast_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The table: the bare base, then one row per arm."""
    summary = metrics["summary"]
    rows = [list(COLUMNS), [BARE, "0 (reference)", _points(_bare_slots(summary)),
                            "0 (reference)", "0", "—", "—"]]  # fmt: skip
    for arm in metrics["config"]["arms"]:
        s = summary[arm]
        epsilon = f"{s['epsilon_max']:.2f} / {s['epsilon_budget']:g}"
        rounds = f"{s['rounds']} ({s['passed']})"
        if arm == "non-dp":
            epsilon = "∞ (no noise)"
        if not s.get("train", True):
            epsilon, rounds = "0 (no training)", "—"
        rows.append([
            label(arm), _pct_ci(s, "final_gain"), _slots(s), _pct_ci(s, "final_general_drift"),
            epsilon, rounds, _update(metrics, arm),
        ])  # fmt: skip
    return rows


def contrast_table(metrics: dict[str, Any]) -> str:
    """The contrast as fixed-width text, followed by the conclusion line."""
    return text_table(contrast_rows(metrics)) + "\n\n" + conclusion(metrics)


def _moved(value: float) -> int:
    """-1, 0 or +1: the sign of ``value`` at the table's precision (0.1 %)."""
    tenths = round(100 * value, 1)
    return (tenths > 0) - (tenths < 0)


def _relative(gain: float) -> str:
    """Where a served model's held-out loss sits against the bare base's (``1.2% below``)."""
    size = f"{abs(100 * gain):.1f}%"
    return {1: f"{size} below", 0: "level with", -1: f"{size} above"}[_moved(gain)]


def conclusion(metrics: dict[str, Any]) -> str:
    """One plain-language line derived from the summary (no verdict in it is fixed text)."""
    summary, config = metrics["summary"], metrics["config"]
    memory = summary.get("memory")
    if not any(s["rounds"] for s in summary.values()) and memory is None:
        waits = config["policy"]["training"]["min_new_units"]
        return (
            f"Conclusion: no round ran (no user logged the {waits} new interactions a round "
            "waits for), so every arm served the bare base."
        )
    parts: list[str] = []
    dp, nondp = summary.get("dp"), summary.get("non-dp")
    if dp is not None:
        clause = (
            f"with DP (ε ≤ {dp['epsilon_max']:.2f}) the held-out loss is "
            f"{_relative(dp['final_gain'])} the bare base's"
        )
        if nondp is not None:
            clause += f", without DP {_relative(nondp['final_gain'])}"
            if _moved(nondp["final_gain"]) > 0 and _moved(dp["final_gain"]) > 0:
                kept = dp["final_gain"] / nondp["final_gain"]
                clause += f" (DP keeps {100 * kept:.0f}% of the gain)"
        parts.append(clause)
    elif nondp is not None:
        parts.append(
            f"without DP the held-out loss is {_relative(nondp['final_gain'])} the bare base's"
        )
    arm, main = ("dp", dp) if dp is not None else next(iter(summary.items()))
    served, bare = main["final_slot_accuracy"], main["bare_slot_accuracy"]
    if served is not None and bare is not None:
        verb = {1: "rose", 0: "did not move", -1: "fell"}[_moved(served - bare)]
        asked = sum(u["arms"][arm]["days"][-1].get("slot_requests") or 0 for u in metrics["users"])
        parts.append(
            f"slot accuracy {verb} ({_points(bare)} bare, {_points(served)} with "
            f"{'DP' if arm == 'dp' else label(arm)}; {asked} slot requests)"
        )
    if memory is not None:
        clause = (
            "with memory alone (no training, ε 0) the held-out loss is "
            f"{_relative(memory['final_gain'])} the bare base's"
        )
        if memory["final_slot_accuracy"] is not None:
            clause += f", slot accuracy {_points(memory['final_slot_accuracy'])}"
        both = summary.get("dp+memory")
        if both is not None:
            clause += f"; DP + memory {_relative(both['final_gain'])}"
        parts.append(clause)
    both = summary.get("dp+memory")
    if memory is None and both is not None:
        clause = (
            "served with personal memory as by default, the DP adapter's held-out loss is "
            f"{_relative(both['final_gain'])} the bare base's"
        )
        if both["final_slot_accuracy"] is not None:
            clause += f" and slot accuracy {_points(both['final_slot_accuracy'])}"
        parts.append(clause)
    drift = max(s["final_general_drift"] for s in summary.values())
    parts.append(f"general drift at most {_pct(drift)}")
    if dp is not None and "drop" in summary and dp["post_update_gain"] is not None:
        parts.append(
            f"the OS update took the DP gain from {_pct(dp['pre_update_gain'])} to "
            f"{_pct(dp['post_update_gain'])} by distillation, to "
            f"{_pct(summary['drop']['post_update_gain'])} by dropping the adapter"
        )
    return "Conclusion: " + "; ".join(parts) + "."

"""The audit as one self-contained HTML page (inline SVG plots, no external resources)."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from personal.charts import format_number, histogram, line_chart
from personal.privacy.audit.schema import TRAINING_PURPOSES, Audit

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
.rounds td{white-space:nowrap}
th{background:#f3f3f3}.ok{color:#109618;font-weight:bold}.bad{color:#dc3912;font-weight:bold}
code{background:#f6f6f6;padding:0 3px}
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return format_number(value)  # 4 significant digits: the JSON keeps the exact value
    return "" if value is None else str(value)


def _table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for title in columns.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f'<table class="rounds"><tr>{head}</tr>{body}</table>'


def _seconds(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def _verdict(ok: bool) -> str:
    return '<span class="ok">PASS</span>' if ok else '<span class="bad">FAIL</span>'


def render_html(audit: Audit, *, title: str = "Privacy audit") -> str:
    """The page: summary, compliance, ε distribution, ε over time, and every round."""
    data = audit.to_json()
    units = data["units"]
    hist = units["histogram"]
    stamps = [(_seconds(t), e) for t, e in audit.epsilon_timeline]
    on_time = all(t is not None for t, _ in stamps)
    timeline = (
        [(float(t), e) for t, e in stamps]  # type: ignore[arg-type]
        if on_time
        else [(float(i + 1), e) for i, (_, e) in enumerate(stamps)]
    )
    summary = {
        "verdict": "PASS" if data["ok"] else "FAIL",
        "report time": data.get("report_time"),
        "store id": data.get("store_id"),
        "policy": f"{data.get('policy')} ({data.get('policy_digest')})",
        "base model": f"{data.get('base_name') or ''} {data.get('base_fingerprint') or ''}",
        "unit of privacy": data["unit_of_privacy"],
        "sampler": data["sampler"],
        "accountant": data["accountant"],
        "filter": f"{data.get('filter', 'renyi')}: {data.get('filter_note', '')}",
        "δ": data["delta"],
        "lifetime ε": data["lifetime_epsilon"],
        "contract bound in": data["contract_source"],
        "units": units["count"],
        "ε min / median / max": (
            f"{units['epsilon_min']:.4g} / {units['epsilon_median']:.4g} / "
            f"{units['epsilon_max']:.4g}"
        ),
        "units over budget": units["over_budget"],
        "rounds": len(data["rounds"]),
        "refused rounds (charged, nothing shipped)": sum(
            r["status"] == "refused" for r in data["rounds"]
        ),
        "ledger verified": "yes" if data["ledger_ok"] else "NO",
    }
    if "canary_audit" in data:
        c = data["canary_audit"]
        summary["canary audit"] = (
            f"empirical ε ≥ {c['epsilon_lower_bound']:.3g} (accounted "
            f"{c['epsilon_accounted']:.3g}): {'pass' if c['passed'] else 'FAIL'}"
        )
    summary_rows = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(_cell(v))}</td></tr>" for k, v in summary.items()
    )
    checks = "".join(
        f"<tr><td>{escape(c['name'])}</td><td>{_verdict(c['ok'])}</td>"
        f"<td>{escape(c['detail'])}</td></tr>"
        for c in data["compliance"]
    )
    problems = "".join(f"<li>{escape(p)}</li>" for p in data["ledger_problems"])
    columns = {
        "round_id": "round",
        "time": "time (UTC)",
        "purpose": "purpose",
        "noise_multiplier": "σ",
        "sample_rate": "q",
        "steps": "steps",
        "clip_norm": "C",
        "eligible_units": "units charged",
        "epsilon": "ε of the round",
        "status": "status",
        "gate": "gate",
        "adapter_produced": "adapter produced",
        "validation_round": "validated in round",
        "policy_digest": "policy",
    }
    rows = []
    for r in data["rounds"]:
        row = dict(r)
        row["time"] = str(r["time"]).replace("T", " ")[:19]
        row["policy_digest"] = str(r.get("policy_digest") or "")[:19]
        if r["purpose"] in TRAINING_PURPOSES and "gate" in r:
            row["adapter_produced"] = r.get("adapter_produced") or "none"
        rows.append(row)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{escape(title)} {_verdict(data["ok"])}</h1>
<table>{summary_rows}</table>
<h2>Ledger</h2>
<p>Hash chain and anchor: {_verdict(data["ledger_ok"])}</p>
{f"<ul>{problems}</ul>" if problems else ""}
<h2>Policy compliance</h2>
<table><tr><th>check</th><th>result</th><th>detail</th></tr>{checks}</table>
<h2>Group privacy</h2>
<p>{escape(data["group_privacy"])}</p>
<h2>ε across units</h2>
{
        histogram(
            hist["edges"],
            hist["counts"],
            title="Units by ε spent",
            x_label="ε per unit (filter ε at δ/32)",
            y_label="units",
        )
    }
<h2>Maximum ε over time</h2>
{
        line_chart(
            {"max ε over units": timeline},
            title="Largest per-unit ε after each round",
            x_label="round time (UTC)" if on_time else "round",
            y_label="ε",
            hlines={"lifetime budget": audit.lifetime_epsilon},
            time_axis=on_time,
        )
    }
<h2>Rounds</h2>
{_table(rows, columns)}
<p>Generated by <code>personal audit</code>. The JSON schema is documented in
docs/privacy.md.</p>
</body></html>
"""

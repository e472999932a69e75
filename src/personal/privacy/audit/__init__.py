"""The privacy audit a reviewer reads: what was charged, to whom, and whether it all holds.

:func:`build_audit` turns the ledger's verified rounds into an :class:`Audit` -- plain data whose
:meth:`Audit.to_json` is the documented JSON schema (docs/privacy.md, "Audit report") and whose
:func:`~personal.privacy.audit.page.render_html` is a self-contained page. The per-unit ε are
recomputed from the rounds (every charge replayed through the filter rule the contract binds,
:mod:`personal.privacy.rules`), so the report checks the ledger's own cached totals instead of
trusting them. One module per job:

* :mod:`~personal.privacy.audit.build` -- gathering the facts from a ledger into an
  :class:`Audit` (:func:`build_audit`);
* :mod:`~personal.privacy.audit.replay` -- what is recomputed from the rounds: outcomes, each
  round's ε, every unit's ε, the accountant's second opinion;
* :mod:`~personal.privacy.audit.checks` -- the compliance checks against the policy and the
  contract;
* :mod:`~personal.privacy.audit.schema` -- the report as data and its JSON;
* :mod:`~personal.privacy.audit.page` -- the report as one self-contained HTML page.
"""

from __future__ import annotations

from personal.privacy.audit.build import build_audit
from personal.privacy.audit.checks import (
    VALIDATION_CLIP_NORM,
    RoundRules,
    compliance_checks,
    rules_of,
)
from personal.privacy.audit.replay import (
    accountant_view,
    replay_charges,
    round_epsilon,
    round_outcomes,
)
from personal.privacy.audit.schema import (
    FILTER_NOTES,
    GROUP_PRIVACY,
    SAMPLER,
    SCHEMA_VERSION,
    TRAINING_PURPOSES,
    Audit,
    AuditRound,
    Check,
    group_privacy_note,
    histogram_edges,
)

__all__ = [
    "FILTER_NOTES",
    "GROUP_PRIVACY",
    "SAMPLER",
    "SCHEMA_VERSION",
    "TRAINING_PURPOSES",
    "VALIDATION_CLIP_NORM",
    "Audit",
    "AuditRound",
    "Check",
    "RoundRules",
    "accountant_view",
    "build_audit",
    "compliance_checks",
    "group_privacy_note",
    "histogram_edges",
    "replay_charges",
    "round_epsilon",
    "round_outcomes",
    "rules_of",
]

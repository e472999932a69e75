"""``personal train`` (one DP round), ``personal audit`` (the privacy reviewer's report) and
``personal migrate`` (carry the personalization to a new base model).

Both take the store's passphrase like the store commands (``--key-file``,
``PERSONAL_PASSPHRASE`` or a prompt).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from personal.cli.common import ENV_KEY, key_file_option, passphrase, store_argument, store_base
from personal.errors import LedgerIntegrityError
from personal.store import Store

import click


def _json_flag() -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _policy_option(help_text: str) -> Any:
    return click.option("--policy", "policy_name", default=None, help=help_text)


def _public_data_option() -> Any:
    return click.option(
        "--public-data",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="Public data (JSONL: {prompt, response} or {messages}) for the gates, replay and "
        "migration [default: the base's own answers to bundled generic prompts, cached].",
    )


# Exit statuses of `personal train` (README, "Command line"): 0 a new adapter is active,
# 2 an error (nothing charged unless the message says so), 3 the round ran and was charged but
# the gates refused its adapter (the previous one stays active), 4 the policy's trigger did not
# fire (nothing charged; --force trains anyway).
EXIT_GATES_REFUSED = 3
EXIT_NOT_DUE = 4


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@click.command("train")
@store_argument
@click.option(
    "--base",
    default=None,
    help="Base model: a bundled name or a directory [default: the store's base].",
)
@_policy_option("Policy name or TOML file (default: the store's recorded policy, else default).")
@_public_data_option()
@click.option(
    "--force",
    is_flag=True,
    help="Train even when the policy's trigger does not fire (too few new interactions, or "
    "training.max_rounds_per_day reached).",
)
@key_file_option
@_json_flag()
def train_command(
    store: Path,
    base: str | None,
    policy_name: str | None,
    public_data: Path | None,
    force: bool,
    key_file: Path | None,
    as_json: bool,
) -> None:
    """Run one differentially private training round on STORE and activate the new adapter.

    Exit status: 0 a new adapter is active; 2 an error; 3 the gates refused the round's adapter
    (the round was charged; the previous adapter stays active); 4 the policy's trigger did not
    fire (nothing charged; --force trains anyway)."""
    from personal.personalizer import Personalizer
    from personal.privacy.rules import rule_of

    key = passphrase(key_file, ENV_KEY, "Passphrase", confirm=False)
    base = base or store_base(store, key)
    with Personalizer.open(store, base, policy_name, key, public_data=public_data) as personalizer:
        training = personalizer.policy.training
        personalizer.rounds.check_base()  # another base, or a migration to finish: exit 2 first
        due = personalizer.should_update() or not personalizer.interactions.units()  # empty: exit 2
        if not force and not due:
            click.echo(
                f"not due: the policy {personalizer.policy.name!r} trains after "
                f"training.min_new_units = {training.min_new_units} new interactions, at most "
                f"training.max_rounds_per_day = {training.max_rounds_per_day} round(s) a day; "
                "nothing was charged. Log more interactions and train later, or pass --force",
                err=True,
            )
            click.get_current_context().exit(EXIT_NOT_DUE)
        plan = personalizer.round_plan()
        drawn = personalizer.rounds.drawn  # the draw round_plan() made, which update() runs on
        pool = len(drawn.train) if drawn is not None else len(personalizer.interactions.units())
        privacy = personalizer.policy.privacy
        rule = rule_of(personalizer.ledger.contract.filter)  # the rule the store is bound to
        charge = rule.curve(
            sample_rate=plan.sample_rate(pool),
            noise_multiplier=plan.noise_multiplier,
            steps=plan.steps,
        )
        round_eps = float(rule.epsilon(charge, delta=privacy.delta))
        spent = max(personalizer.ledger.epsilons().values(), default=0.0)
        label = (
            f"DP round (ε +{round_eps:.3g} per eligible unit, {rule.name} filter; most spent so "
            f"far {spent:.3g} of {privacy.lifetime_epsilon:g})"
        )
        with click.progressbar(
            length=plan.steps, label=label, file=sys.stderr, show_pos=True
        ) as bar:
            report = personalizer.update(progress=lambda step, result: bar.update(1))
        data = report.to_dict()
        data["policy"] = personalizer.policy.name
        data["lifetime_epsilon"] = personalizer.policy.privacy.lifetime_epsilon
        rounds = personalizer.ledger.rounds()
        data["training_round"] = sum(
            r.purpose == "training" and r.round_id <= report.round_id for r in rounds
        )
        this = next((r for r in rounds if r.round_id == report.round_id), None)
        summary = this.summary if this is not None and isinstance(this.summary, dict) else {}
        data["validation_round"] = summary.get("validation_round")
    code = 0 if report.adapter_version is not None else EXIT_GATES_REFUSED
    if as_json:
        click.echo(json.dumps(data, indent=2))
        click.get_current_context().exit(code)
    checked = (
        f"; held-out validation in round {data['validation_round']}"
        if data["validation_round"]
        else ""
    )
    click.echo(
        f"round {report.round_id} (the store's {_ordinal(data['training_round'])} training round"
        f"{checked}; numbered as in `personal audit`): {report.eligible} of "
        f"{report.candidates} units eligible ({report.excluded} over budget), {report.steps} "
        f"steps, σ={report.noise_multiplier:.4g}, q={report.sample_rate:.4g}, "
        f"C={report.clip_norm:g}"
    )
    if report.guard_rejections:
        click.echo(
            f"step guard: {report.guard_rejections} update(s) broke the general-loss bound on "
            f"public text and were retried smaller; the round ended at {report.step_scale:g}× "
            "the policy's learning rate (training.step_guard)"
        )
    for reason in (report.gates or {}).get("reasons", []):
        click.echo(f"gate: {reason}")
    outcome = (
        f"adapter version {report.adapter_version} is active"
        if report.adapter_version is not None
        else "the gates refused the new adapter; the previous one stays active (the round was "
        f"charged; exit status {EXIT_GATES_REFUSED})"
    )
    click.echo(
        f"spent: max ε per unit now {report.epsilon_max:.4g} of {data['lifetime_epsilon']:g}; "
        f"{outcome} ({report.seconds:.1f} s)"
    )
    click.get_current_context().exit(code)


@click.command("audit")
@store_argument
@_policy_option("Audit against this policy (default: the one recorded in the store).")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as one self-contained HTML page.",
)
@click.option(
    "--canaries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also run the one-run empirical audit with N canaries (needs --base).",
)
@click.option("--base", default=None, help="Base model for --canaries.")
@key_file_option
@_json_flag()
def audit_command(
    store: Path,
    policy_name: str | None,
    html_file: Path | None,
    canaries: int,
    base: str | None,
    key_file: Path | None,
    as_json: bool,
) -> None:
    """Report STORE's privacy ledger; exit 1 if it fails verification or a unit is over budget."""
    from personal.policy import Policy, load_policy
    from personal.privacy.audit import Audit, build_audit
    from personal.privacy.audit.page import render_html
    from personal.privacy.contract import Contract
    from personal.privacy.ledger import Ledger
    from personal.store.settings import StoreSettings

    if canaries and not base:
        raise click.UsageError("--canaries needs --base (the model to train the canaries on)")
    key = passphrase(key_file, ENV_KEY, "Passphrase", confirm=False)
    with Store.open(store, key) as opened:
        recorded = StoreSettings(opened).get("policy")
        policy: Policy | None = None
        if policy_name is not None:
            policy = load_policy(policy_name)
        elif recorded is not None:
            policy = Policy.from_dict(recorded, source=f"{store} (recorded policy)")
        fallback = Contract.of_policy(policy or load_policy("default"))
        try:
            # The contract comes from the ledger's genesis; a policy is only compared with it.
            ledger = Ledger.open(opened) if Ledger.exists(opened) else Ledger.open(opened, fallback)
            audit = build_audit(ledger, policy=policy, policy_given=policy_name is not None)
            served = StoreSettings(opened).get("base") or {}
            if served.get("fingerprint"):
                audit.header["base_fingerprint"] = served["fingerprint"]
                audit.header["base_name"] = served.get("name")
        except LedgerIntegrityError as exc:
            audit = Audit(
                fallback.unit,
                fallback.accountant,
                fallback.delta,
                fallback.epsilon,
                [],
                {},
                [],
                False,
                [str(exc)],
                filter=fallback.filter,
                contract_source="policy (the ledger cannot be read)",
            )
    if canaries:
        from personal.canary_audit import run_canary_audit

        result = run_canary_audit(store, key, base, policy, canaries=canaries)
        audit.canary_audit = result.to_dict()  # part of the verdict (Audit.ok)
    data = audit.to_json()
    if html_file is not None:
        html_file.write_text(render_html(audit), encoding="utf-8")
    ok = bool(data["ok"])
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_audit(data, html_file)
    click.get_current_context().exit(0 if ok else 1)


@click.command("migrate")
@store_argument
@click.option("--base", "new_base", required=True, help="The new base model (name or directory).")
@click.option(
    "--from",
    "old_base",
    default=None,
    help="The old base (default: the one recorded in the store).",
)
@click.option(
    "--strategy",
    type=click.Choice(["distill", "retrain", "both", "drop"]),
    default=None,
    help="Default: the policy's migration.strategy.",
)
@_public_data_option()
@key_file_option
@_json_flag()
def migrate_command(
    store: Path,
    new_base: str,
    old_base: str | None,
    strategy: str | None,
    public_data: Path | None,
    key_file: Path | None,
    as_json: bool,
) -> None:
    """Move STORE's personalization to a new base model (an OS update shipped it)."""
    from personal.personalizer import Personalizer
    from personal.store.settings import StoreSettings

    key = passphrase(key_file, ENV_KEY, "Passphrase", confirm=False)
    if old_base is None:
        with Store.open(store, key) as opened:
            settings = StoreSettings(opened)
            recorded, last = settings.get("base"), settings.get("migration")
        if isinstance(last, dict) and last.get("state") == "pending":
            # A killed migration: its teacher is the old base it recorded, not the new one
            # the store already names.
            old_base = last["from"]["source"]
            click.echo(
                f"resuming the interrupted migration from {last['from']['name']} to "
                f"{last['to']['name']}",
                err=True,
            )
        elif not recorded:
            raise click.UsageError("the store records no base model yet: pass --from OLDBASE")
        else:
            old_base = recorded["source"]
    with Personalizer.open(store, old_base, None, key, public_data=public_data) as personalizer:
        report = personalizer.on_base_update(new_base, strategy=strategy)
    data = report.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"{report.strategy}: {report.old_fingerprint[:19]} -> {report.new_fingerprint[:19]}; "
        f"adapter {report.old_version} -> {report.new_version or 'none (bare new base)'}"
    )
    if report.steps:
        click.echo(
            f"distilled {report.steps} steps on {report.prompts} public prompts "
            f"({'residual token-level' if report.token_level else 'sequence-level'}); "
            "charged nothing"
        )
    if report.retrain:
        click.echo(f"retrain: {report.retrain}")


def _print_audit(data: dict[str, Any], html_file: Path | None) -> None:
    units = data["units"]
    click.echo(
        f"store {data.get('store_id')}; policy {data.get('policy')} ({data.get('policy_digest')})"
        f"; base {data.get('base_fingerprint')}; report time {data.get('report_time')}"
    )
    click.echo(f"unit of privacy: {data['unit_of_privacy']}; sampler: {data['sampler']}")
    memory = data.get("memory") or {}
    if memory.get("index"):
        click.echo(
            f"personal memory: on, {memory['entries']} entries indexed (charges no ε; "
            "replies may quote past interactions)"
        )
    elif memory:
        click.echo("personal memory: off (no index in the store)")
    click.echo(
        f"accountant: {data['accountant']}; filter: {data.get('filter', 'renyi')}; "
        f"δ={data['delta']:g}; lifetime ε={data['lifetime_epsilon']:g}"
    )
    click.echo(f"rounds: {len(data['rounds'])}")
    for r in data["rounds"]:
        shipped = ""
        if "adapter_produced" in r:
            produced = r["adapter_produced"]
            shipped = f" gate {r['gate'] or '-'}, adapter {produced if produced else 'none'}"
        elif r.get("gate"):
            shipped = f" gate {r['gate']}"
        click.echo(
            f"  #{r['round_id']} {r['time']} {r['purpose']} σ={r['noise_multiplier']:.4g} "
            f"q={r['sample_rate']:.4g} steps={r['steps']} C={r.get('clip_norm', '-')} "
            f"{r['status']}{shipped} policy {str(r.get('policy_digest', '-'))[:19]}"
        )
    click.echo(
        f"units: {units['count']}; ε min {units['epsilon_min']:.4g}, median "
        f"{units['epsilon_median']:.4g}, max {units['epsilon_max']:.4g}; "
        f"over budget: {units['over_budget']}"
    )
    click.echo(f"group privacy: {data['group_privacy']}")
    click.echo(f"ledger: {'verified' if data['ledger_ok'] else 'FAILED'}")
    for problem in data["ledger_problems"]:
        click.echo(f"  {problem}")
    for check in data["compliance"]:
        click.echo(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    if "canary_audit" in data:
        c = data["canary_audit"]
        click.echo(
            f"canary audit: empirical ε ≥ {c['epsilon_lower_bound']:.3g} "
            f"(accounted {c['epsilon_accounted']:.3g}) -> {'pass' if c['passed'] else 'FAIL'}"
        )
    if html_file is not None:
        click.echo(f"report: {html_file}")
    click.echo("PASS" if data["ok"] else "FAIL")


def register(group: click.Group) -> None:
    """Add ``train``, ``audit`` and ``migrate`` to the ``personal`` group."""
    group.add_command(train_command)
    group.add_command(audit_command)
    group.add_command(migrate_command)
    from personal.cli import serve

    serve.register(group)  # generate, adapters export

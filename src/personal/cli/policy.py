"""``personal policy list|show|check``: the bundled policies, and validation of policy files.

``show`` prints a policy as TOML that ``check`` accepts (a starting point for your own), or as
JSON with ``--json``. ``check`` exits 0 for a valid policy and 2, with every problem named, for
an invalid one. Nothing here imports MLX or torch.
"""

from __future__ import annotations

import json

from personal.errors import PolicyError
from personal.policy import Policy, bundled_policies, load_policy

import click


def _source(name_or_file: str) -> str:
    bundled = bundled_policies()
    return str(bundled[name_or_file]) if name_or_file in bundled else name_or_file


@click.group("policy")
def policy_group() -> None:
    """Show the bundled policies and validate policy files."""


@policy_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_command(as_json: bool) -> None:
    """List the bundled policies with their lifetime ε and digest."""
    rows = {name: load_policy(name) for name in bundled_policies()}
    if as_json:
        data = {name: _summary(p, _source(name)) for name, p in rows.items()}
        click.echo(json.dumps(data))
        return
    for name, p in rows.items():
        click.echo(
            f"{name:<10} ε={p.privacy.lifetime_epsilon:g} δ={p.privacy.delta:g} "
            f"unit={p.privacy.unit:<11} {p.digest()[:19]}  {p.description}"
        )


def _summary(policy: Policy, source: str) -> dict[str, object]:
    return {"name": policy.name, "source": source, "digest": policy.digest()}


@policy_group.command("show")
@click.argument("name_or_file")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_command(name_or_file: str, as_json: bool) -> None:
    """Print NAME_OR_FILE (a bundled name: default, strict, research; or a TOML file)."""
    policy = load_policy(name_or_file)
    source = _source(name_or_file)
    if as_json:
        click.echo(json.dumps({**_summary(policy, source), "policy": policy.to_dict()}))
        return
    click.echo(f"# policy {policy.name!r} from {source}\n# digest {policy.digest()}\n")
    click.echo(policy.to_toml(), nl=False)


@policy_group.command("check")
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def check_command(ctx: click.Context, file: str, as_json: bool) -> None:
    """Validate FILE; exit 0 if it is a valid policy, 2 (naming every problem) if not."""
    try:
        policy = load_policy(file)
    except PolicyError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "source": file, "error": str(exc)}))
        else:
            click.echo(f"error: {exc}", err=True)
        ctx.exit(2)
    if as_json:
        click.echo(json.dumps({"valid": True, **_summary(policy, _source(file))}))
        return
    click.echo(f"ok: {file} is a valid policy ({policy.name!r}, {policy.digest()})")


def register(group: click.Group) -> None:
    """Add the ``policy`` commands to the ``personal`` group."""
    group.add_command(policy_group)

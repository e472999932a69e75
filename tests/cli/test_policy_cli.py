"""`personal policy list|show|check`."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

from personal.cli import cli
from personal.cli.policy import register
from personal.policy import Policy, load_policy

import pytest
from click.testing import CliRunner

if "policy" not in cli.commands:  # until personal.cli lists personal.cli.policy itself
    register(cli)


def _run(*args: str):
    return CliRunner().invoke(cli, ["policy", *args])


def test_list():
    result = _run("list")
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == ["default", "research", "strict"]
    data = json.loads(_run("list", "--json").output)
    assert data["strict"]["digest"] == load_policy("strict").digest()


@pytest.mark.parametrize("name", ["default", "strict", "research"])
def test_show_prints_a_policy_file_that_loads_back(name):
    result = _run("show", name)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"# policy {name!r} from ")
    assert f"# digest {load_policy(name).digest()}" in result.output
    assert Policy.from_toml(result.output) == load_policy(name)


def test_show_json_and_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(load_policy("strict").with_overrides({"training.steps": 3}).to_toml())
    result = _run("show", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["source"] == str(path) and data["name"] == "strict"
    assert data["policy"]["training"]["steps"] == 3
    assert data["digest"] == Policy.from_dict(data["policy"]).digest()


def test_show_missing_is_a_clean_error(tmp_path):
    result = _run("show", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "error: no policy file at" in result.output and "Traceback" not in result.output


def test_check_valid(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(load_policy("default").to_toml())
    result = _run("check", str(path))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok: {path} is a valid policy ('default', sha256:")
    data = json.loads(_run("check", str(path), "--json").output)
    assert data["valid"] is True and data["digest"] == load_policy("default").digest()


def test_check_invalid_names_every_problem(tmp_path):
    path = tmp_path / "bad.toml"
    text = load_policy("default").to_toml()
    text = text.replace("\nsteps = 4\n", "\nsteps = 0\n")
    text = text.replace("delta = 1e-06", 'delta = "small"')
    path.write_text(text + "\n[extra]\n")
    result = _run("check", str(path))
    assert result.exit_code == 2
    assert "error: invalid policy" in result.output and "(3 problems)" in result.output
    assert "training.steps = 0 (int): out of range: must be an integer in [1, 100000]" in (
        result.output
    )
    assert "privacy.delta = 'small' (str)" in result.output
    assert "extra: unknown key" in result.output
    data = json.loads(_run("check", str(path), "--json").output)
    assert data["valid"] is False and "training.steps" in data["error"]


def test_check_malformed_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[privacy\n")
    result = _run("check", str(path))
    assert result.exit_code == 2 and "not valid TOML" in result.output


def test_check_accepts_bundled_names():
    assert _run("check", "research").exit_code == 0


def test_show_json_names_the_bundled_file():
    result = _run("show", "default", "--json")
    source = json.loads(result.output)["source"]
    assert source.endswith("personal/policies/default.toml")
    with open(source, "rb") as handle:
        assert tomllib.load(handle)["name"] == "default"


def test_policy_commands_import_neither_mlx_nor_torch():
    code = (
        "import sys, personal.cli.policy, personal.policy; "
        "assert not {'mlx', 'torch', 'opacus'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

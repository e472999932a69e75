"""`personal --version` and `personal info`."""

from __future__ import annotations

import json
import subprocess
import sys

import personal
from personal.cli import cli

from click.testing import CliRunner


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and personal.__version__ in result.output


def test_info_json(tiny_model_factory):
    result = CliRunner().invoke(cli, ["info", str(tiny_model_factory("qwen3")), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["architecture"] == "qwen3" and data["vocab_size"] == 384
    assert data["fingerprint"].startswith("sha256:") and data["quantization"] is None
    assert data["parameters"] > 0


def test_info_quantized(tiny_model_factory):
    result = CliRunner().invoke(cli, ["info", str(tiny_model_factory("llama", quantize=True))])
    assert result.exit_code == 0 and "bits" in result.output


def test_info_missing_model_is_clean_error(tmp_path):
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "error: No model directory" in result.output


def test_console_script_runs_without_torch():
    code = "import sys, personal.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

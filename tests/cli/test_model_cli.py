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
    assert "kernels" in result.output  # personal.kernels: in use, or why not


def test_info_missing_model_is_clean_error(tmp_path):
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "error: No model directory" in result.output


def test_console_script_runs_without_torch():
    code = "import sys, personal.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_model(tmp_path):
    from gguf_files import Q4_1, Q8_0, tiny_llama_gguf

    tiny_llama_gguf(tmp_path / "tiny.gguf", kind=Q4_1, embed_kind=Q8_0)
    out = tmp_path / "tiny"
    args = ["import-model", str(tmp_path / "tiny.gguf"), str(out), "--dtype", "keep"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "imported tiny.gguf" in result.output and "fingerprint sha256:" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8


def test_import_model_chat_template_file(tmp_path):
    from gguf_files import tiny_llama_gguf

    tiny_llama_gguf(tmp_path / "base.gguf", template=None)
    result = CliRunner().invoke(
        cli, ["import-model", str(tmp_path / "base.gguf"), str(tmp_path / "a")]
    )
    assert result.exit_code == 2 and "--chat-template" in result.output
    (tmp_path / "chat.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    args = ["import-model", str(tmp_path / "base.gguf"), str(tmp_path / "b")]
    result = CliRunner().invoke(cli, [*args, "--chat-template", str(tmp_path / "chat.jinja")])
    assert result.exit_code == 0, result.output
    assert "m['content']" in (tmp_path / "b" / "tokenizer_config.json").read_text()


def test_import_model_bad_input_is_one_clean_line(tmp_path):
    from gguf_files import tiny_llama_gguf

    tiny_llama_gguf(tmp_path / "ok.gguf")
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "ok.gguf").read_bytes()[:300])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    cases = {
        "No GGUF file": [str(tmp_path / "missing.gguf"), str(tmp_path / "o1")],
        "truncated or corrupt": [str(tmp_path / "cut.gguf"), str(tmp_path / "o2")],
        "dtype must be one of": [str(tmp_path / "ok.gguf"), str(tmp_path / "o3"), "--dtype", "q2"],
        "already exists": [str(tmp_path / "ok.gguf"), str(tmp_path / "taken")],
    }
    for message, args in cases.items():
        result = CliRunner().invoke(cli, ["import-model", *args])
        assert result.exit_code == 2, (message, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1
        assert message in result.output and "Traceback" not in result.output
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir() if p.is_dir())

"""personal generate and personal adapters export (issue 21): the exported adapter loads in
the real mlx-lm (and PEFT) and computes what the store's model computes."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

from personal.cli import cli
from personal.errors import SeededNoiseWarning
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.privacy.noise import GaussianNoise
from personal.store import Passphrase, ScryptParams

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

PASS = "correct horse battery staple"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_factory):
    """One trained store for the module: the tests only read it (generate, export)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    key = Passphrase(PASS, ScryptParams(log_n=4, r=1, p=1))  # recorded: every open is cheap
    base = tiny_model_factory()
    policy = load_policy("research").with_overrides(
        {"store.synchronous": "NORMAL", "training.steps": 2, "gates.min_personal_gain": -1.0,
         "gates.max_general_regression": 1.0, "training.lora.num_layers": 1}
    )  # fmt: skip
    with Personalizer.open(tmp_path / "s", base, policy, key, create=True) as p:
        for i in range(24):
            p.log(f"text Ana that I'm {i} minutes late", f"Sent to Ana: {i} late.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            assert p.update(noise=GaussianNoise(seed=0), sampler_seed=0).adapter_version == 1
        tokens = mx.array([[1, 5, 9, 33, 70, 2]])
        expected = np.array(p.base.model(tokens))
    return tmp_path / "s", base, tokens, expected


def _run(*args: str):
    runner = CliRunner(env={"PERSONAL_PASSPHRASE": PASS})
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_generate_answers_through_the_active_adapter(trained):
    store, _, _, _ = trained
    result = _run("generate", store, "text Ana", "--json", "--max-tokens", "4")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert isinstance(data["text"], str) and 0 < data["confidence"] <= 1
    assert data["adapter_version"] == 1
    plain = _run("generate", store, "text Ana", "--max-tokens", "4")
    assert plain.exit_code == 0 and plain.output.strip() == data["text"].strip()


def test_the_mlx_lm_export_loads_in_mlx_lm_with_the_same_outputs(trained, tmp_path):
    from mlx_lm.utils import load

    store, base, tokens, expected = trained
    out = tmp_path / "mlx"
    result = _run("adapters", "export", store, out, "--format", "mlx-lm")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"adapters.safetensors", "adapter_config.json"}
    model, _ = load(str(base), adapter_path=str(out))
    assert np.allclose(np.array(model(tokens)), expected, atol=1e-4)
    # The command line an mlx-lm user runs.
    cmd = [sys.executable, "-m", "mlx_lm", "generate", "--model", str(base), "--adapter-path",
           str(out), "--prompt", "text Ana", "--max-tokens", "3"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    again = _run("adapters", "export", store, out)
    assert again.exit_code == 2 and "not empty" in again.output


def test_the_peft_export_loads_in_peft_with_the_same_outputs(trained, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    store, base, tokens, expected = trained
    out = tmp_path / "peft"
    result = _run("adapters", "export", store, out, "--format", "peft")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(model, str(out))
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(np.array(tokens).tolist())).logits.numpy()
    assert np.allclose(logits, expected, atol=1e-3)

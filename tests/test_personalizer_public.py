"""The Personalizer on a ChatML base, with public data as an input (default: self-generated)."""

from __future__ import annotations

import ast
import os
import warnings
from pathlib import Path

from personal.errors import PublicDataError, SeededNoiseWarning
from personal.personalizer import Personalizer
from personal.privacy.noise import GaussianNoise
from personal.public import PublicData
from personal.store import RawKey

import pytest
from chat_tokenizers import write_tokenizer
from round_policies import tiny_round_policy
from tiny_models import save_tiny_model

KEY = RawKey(bytes(range(32)))
SRC = Path(__file__).parents[1] / "src" / "personal"


@pytest.fixture(scope="module")
def chatml_bases(tmp_path_factory):
    tokenizer = write_tokenizer(tmp_path_factory.mktemp("chatml"), "chatml")
    return [
        save_tiny_model(tmp_path_factory.mktemp(f"m{seed}"), "llama", tokenizer, 384, seed=seed)
        for seed in (0, 1)
    ]


def _round(p: Personalizer) -> None:
    for i in range(6):
        p.log(f"What is the river number {i}?", f"River {i} flows east.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        report = p.update(noise=GaussianNoise(seed=1), sampler_seed=2)
    assert report.gates is not None and report.adapter_version is not None


def test_a_chatml_base_trains_gates_and_migrates_on_self_generated_data(
    tmp_path, chatml_bases
) -> None:
    policy = tiny_round_policy(**{"migration.distill_steps": 2})
    with Personalizer.open(tmp_path / "s", chatml_bases[0], policy, KEY, create=True) as p:
        _round(p)
        data = p.public_data()
        assert data.name == "self-generated" and len(data.gate) > 50
        cached = list((Path(os.environ["PERSONAL_CACHE_DIR"]) / "public").iterdir())
        assert len(cached) == 1  # generated once for this base, on first use
        reply = p.generate("What is the river number 1?", max_tokens=4)
        assert "<|eos|>" not in reply.text
        report = p.on_base_update(chatml_bases[1], strategy="distill")
        assert report.prompts == 64 and report.token_level and not report.charged
        assert set(p.public_data().prompts) == set(data.prompts)  # same bundled prompts...
        assert p.public_data().gate != data.gate  # ...answered by the new base itself


def test_public_data_passed_in_is_what_the_gate_uses(tmp_path, tiny_model_factory) -> None:
    data = PublicData.from_examples([(f"q{i}", f"Answer {i}.") for i in range(12)], name="mine")
    with Personalizer.open(
        tmp_path / "s", tiny_model_factory(), tiny_round_policy(), KEY, create=True,
        public_data=data,
    ) as p:  # fmt: skip
        assert p.public_data() is data
        gate, train = p.rounds.public_batches()
        assert sum(b.size for b in gate) == 3 and sum(b.size for b in train) == 9
    assert not (Path(os.environ["PERSONAL_CACHE_DIR"]) / "public").exists()  # nothing generated


def test_a_bad_public_data_file_fails_before_the_store_is_created(
    tmp_path, tiny_model_factory
) -> None:
    bad = tmp_path / "public.jsonl"
    bad.write_text('{"prompt": "q", "response": "a"}\n{"prompt": 3}\n')
    with pytest.raises(PublicDataError, match="line 2"):
        Personalizer.open(
            tmp_path / "s", tiny_model_factory(), None, KEY, create=True, public_data=bad
        )
    assert not (tmp_path / "s").exists()


def test_the_library_never_imports_the_simulators() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            if any(n.split(".")[0] in ("simulators", "personal_sim") for n in names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    # The `personal simulate` command is the one door: it runs the simulators, lazily.
    assert [o for o in offenders if not o.startswith("cli/simulate.py")] == []

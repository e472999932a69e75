"""The public corpus: reproducible, varied, slot-consistent, and skewable by a persona."""

from __future__ import annotations

import collections
import json
import random

import pytest

from personal_sim.public_corpus import (
    FRAMES,
    INTENTS,
    Interaction,
    generate_corpus,
    generate_texts,
    main,
    sample_interaction,
    split,
)
from personal_sim.world import CLOSED_SLOTS, SlotSkew, World


@pytest.fixture(scope="module")
def world() -> World:
    return World.default()


@pytest.fixture(scope="module")
def corpus() -> list[Interaction]:
    return generate_corpus(3000, seed=11)


def test_same_seed_same_corpus_other_seed_other_corpus() -> None:
    assert generate_corpus(300, seed=7) == generate_corpus(300, seed=7)
    assert generate_corpus(300, seed=7) != generate_corpus(300, seed=8)


def test_global_random_state_is_untouched() -> None:
    random.seed(123)
    before = random.random()
    random.seed(123)
    generate_corpus(50, seed=0)
    assert random.random() == before


def test_every_intent_and_frame_appears(corpus: list[Interaction]) -> None:
    assert {it.intent for it in corpus} == set(INTENTS)
    assert len(INTENTS) == 9
    rng, world = random.Random(0), World.default()
    for intent, frames in FRAMES.items():
        seen = {sample_interaction(rng, world, intent=intent).frame for _ in range(300)}
        assert seen == {f.name for f in frames}, intent


def test_variety(corpus: list[Interaction], world: World) -> None:
    prompts = sum(len(f.prompts) for frames in FRAMES.values() for f in frames)
    assert prompts >= 200
    assert all(len(world.values(slot)) >= 12 for slot in ("contact", "city", "artist", "task"))
    assert len({it.prompt for it in corpus}) > 0.7 * len(corpus)
    assert any(ch in "".join(it.response for it in corpus) for ch in "éñ")


def test_slot_values_appear_in_the_text() -> None:
    # Without typos every slot value is visible; outside small talk, in the response itself.
    clean = SlotSkew(typo_rate=0.0)
    for it in generate_corpus(1500, seed=3, skew=clean):
        text = (it.prompt + " " + it.response).lower()
        assert all(v.lower() in text for v in it.slots.values()), it
        if it.intent != "smalltalk":
            assert any(v.lower() in it.response.lower() for v in it.slots.values()), it


def test_underspecified_prompts_reveal_the_slot_only_in_the_response() -> None:
    rng, world = random.Random(5), World.default()
    found = 0
    for _ in range(400):
        it = sample_interaction(rng, world, intent="music")
        if it.frame == "anything":
            found += 1
            assert it.slots["artist"] in it.response
            assert it.slots["artist"].lower() not in it.prompt.lower()
    assert found > 30


def test_facts_are_consistent(corpus: list[Interaction], world: World) -> None:
    for it in corpus:
        if "capital" in it.slots:
            assert world.capitals[it.slots["country"]] == it.slots["capital"]
        if it.intent == "music":
            assert it.slots["song"] in world.artist_songs[it.slots["artist"]]
        if it.frame == "arithmetic":
            a, b, op = int(it.slots["a"]), int(it.slots["b"]), it.slots["op"]
            assert int(it.slots["result"]) == {"plus": a + b, "minus": a - b, "times": a * b}[op]


def _share(items: list[Interaction], slot: str, value: str) -> float:
    having = [it for it in items if slot in it.slots]
    return sum(it.slots[slot] == value for it in having) / len(having)


def test_skew_boost_changes_the_slot_distribution() -> None:
    rare = World.default().values("contact")[-1]
    skew = SlotSkew(boost={"contact": {rare: 60.0}})
    population = generate_corpus(2000, seed=1)
    persona = generate_corpus(2000, seed=1, skew=skew)
    assert _share(population, "contact", rare) < 0.01
    assert _share(persona, "contact", rare) > 0.04


def test_skew_bindings_fixed_values_and_intent_mix() -> None:
    skew = SlotSkew(
        fixed={"user_name": "Zebulon"},  # persona-only: not in the world's vocabulary
        contact_for={"mom": "Rosa"},
        address_for={"home": "1 Quiet Lane"},
        intent_boost={"smalltalk": 20.0},
    )
    items = generate_corpus(1500, seed=2, skew=skew)
    counts = collections.Counter(it.intent for it in items)
    assert counts["smalltalk"] > 0.4 * len(items)
    assert all(it.slots.get("user_name", "Zebulon") == "Zebulon" for it in items)
    rng, world = random.Random(0), World.default()
    for _ in range(300):
        it = sample_interaction(rng, world, intent="call", skew=skew)
        if it.slots.get("relation") == "mom":
            assert it.slots["contact"] == "Rosa" and "Rosa" in it.response
        it = sample_interaction(rng, world, intent="navigation", skew=skew)
        if it.frame == "home":
            assert "1 Quiet Lane" in it.response


def test_style_seed_changes_the_wording() -> None:
    def phrasing(skew: SlotSkew | None) -> collections.Counter[str]:
        rng, world = random.Random(9), World.default()
        items = (sample_interaction(rng, world, intent="smalltalk", skew=skew) for _ in range(3000))
        return collections.Counter(it.prompt.lower().strip("?.! ") for it in items)

    population, persona = phrasing(None), phrasing(SlotSkew(style_seed=42, style_strength=2.0))
    total = sum(population.values())
    tv = sum(abs(population[k] - persona[k]) for k in population.keys() | persona.keys()) / 2
    assert tv / total > 0.2


def test_random_persona_is_reproducible_and_valid(world: World) -> None:
    a, b = SlotSkew.random(random.Random(4)), SlotSkew.random(random.Random(4))
    assert a == b
    assert set(a.contact_for) == set(world.values("relation"))
    assert len(set(a.address_for.values())) == len(a.address_for)
    items = generate_corpus(200, seed=0, skew=a)
    assert items == generate_corpus(200, seed=0, skew=b)


def test_world_draw_weights_and_persona_only_values(world: World) -> None:
    weights = world.weights("city")
    assert sum(weights) == pytest.approx(1.0)
    assert list(weights) == sorted(weights, reverse=True)
    rng = random.Random(0)
    assert {world.draw(rng, "contact", {"Zebulon": 1e6}) for _ in range(20)} == {"Zebulon"}
    assert "artist" in CLOSED_SLOTS
    assert world.draw(rng, "artist", {"Nobody": 1e6}) in world.values("artist")
    jazz = world.genre_artists["jazz"]
    assert all(world.draw(rng, "artist", among=jazz) in jazz for _ in range(20))


def test_json_round_trip_keeps_unicode(corpus: list[Interaction]) -> None:
    for it in corpus:
        assert Interaction.from_json(it.to_json()) == it
    accented = next(it for it in corpus if "é" in it.to_json())
    assert "é" in accented.to_json()  # written as UTF-8, not as \\u escapes
    assert json.loads(accented.to_json())["intent"] == accented.intent


def test_splits_come_from_disjoint_streams() -> None:
    splits = split(5, 300, 150, 150)
    assert splits.train == generate_corpus(300, seed=5)
    assert [len(s) for s in splits] == [300, 150, 150]
    assert splits.validation != splits.test != splits.train[:150]
    assert split(5, 10, 150, 150).test == splits.test  # one split's size never moves another
    strict = split(5, 300, 150, 150, exclude_seen=True)
    pairs = [{(it.prompt, it.response) for it in part} for part in strict]
    assert not (pairs[0] & pairs[1]) and not (pairs[0] & pairs[2]) and not (pairs[1] & pairs[2])


def test_unknown_intent_is_rejected(world: World) -> None:
    with pytest.raises(ValueError, match="unknown intent"):
        sample_interaction(random.Random(0), world, intent="dance")


def test_generate_texts_and_cli(tmp_path) -> None:
    texts = generate_texts(20, seed=0)
    corpus = generate_corpus(20, seed=0)
    assert texts[0::2] == [it.prompt for it in corpus]
    assert texts[1::2] == [it.response for it in corpus]
    out = tmp_path / "corpus.jsonl"
    main(["--n", "20", "--seed", "0", "--out", str(out)])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [Interaction.from_json(line) for line in lines] == corpus

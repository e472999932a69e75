"""The per-unit Rényi filter: budget invariant under adaptive schedules, exclusion, composition,
charge-before-release, and state validation.

The guarantee under test (docs/privacy-accounting.md): a unit is admitted to a round only if,
after the round's charge, some order α of ORDERS has total RDP S(α) <= B(α); then every unit is
(ε, δ)-DP over its whole life, however the rounds were chosen (Feldman & Zrnic 2021, Thm. 3.1;
Lécuyer 2021; union bound over the orders).
"""

from __future__ import annotations

import copy
import functools
import json

from personal.errors import (
    PrivacyError,
    PrivacyParameterError,
    PrivacyStateError,
    UnitOverBudget,
)
from personal.privacy.filter import (
    PURPOSES,
    Charge,
    RenyiFilter,
    Selection,
    eligible_mask,
)
from personal.privacy.rdp import ORDERS, compose, filter_epsilon, fits_budget, sgm_rdp

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import (
    _compute_rdp_poisson_subsampled_gaussian as dpa_rdp,
)
from hypothesis import given, settings
from hypothesis import strategies as st

_INTEGER = np.array([float(a).is_integer() for a in ORDERS])
_INTEGER_ORDERS = np.asarray(ORDERS)[_INTEGER]

# Small menus keep sgm_rdp's cache warm (the hypothesis test runs hundreds of rounds); they still
# span cheap (σ=30, q=1e-3) to ruinous (σ=0.6, q=1) rounds, q = 0 and q = 1 included.
_SIGMAS = (0.6, 0.8, 1.0, 1.5, 2.0, 4.0, 8.0, 30.0)
_QS = (0.0, 1e-3, 0.01, 0.05, 0.2, 0.5, 1.0)


def _charge(purpose="training", q=0.01, sigma=1.0, steps=100) -> Charge:
    return Charge(purpose=purpose, sample_rate=q, noise_multiplier=sigma, steps=steps)


@functools.cache
def _dpa_one_step(q: float, sigma: float) -> np.ndarray:
    return dpa_rdp(q, sigma, _INTEGER_ORDERS)


def _independent_rdp(charges: list[Charge]) -> np.ndarray:
    """A unit's RDP at the integer orders of ORDERS, from dp-accounting's own implementation."""
    total = np.zeros(len(_INTEGER_ORDERS))
    for c in charges:
        if c.steps and c.sample_rate:
            total += c.steps * _dpa_one_step(c.sample_rate, c.noise_multiplier)
    return total


# --- the invariant under random adaptive schedules ----------------------------------------------


def _new_unit(n: int) -> str | int:
    return n if n % 3 == 0 else f"unit-{n}"  # str and int ids side by side


_schedules = {
    "data": st.data(),
    "epsilon": st.floats(0.3, 8.0),
    "delta": st.sampled_from([1e-9, 1e-7, 1e-5, 1e-3]),
    "rounds": st.integers(1, 25),
}


@settings(max_examples=25, deadline=None)
@given(**_schedules)
def test_no_unit_ever_exceeds_the_lifetime_budget(data, epsilon, delta, rounds) -> None:
    _random_adaptive_schedule(data, epsilon, delta, rounds)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(**_schedules)
def test_no_unit_ever_exceeds_the_lifetime_budget_many(data, epsilon, delta, rounds) -> None:
    _random_adaptive_schedule(data, epsilon, delta, rounds)


def _random_adaptive_schedule(data, epsilon: float, delta: float, rounds: int) -> None:
    """Random adaptive schedules: every round's parameters, candidates and charged subset are
    drawn *after* seeing the filter's current state (hypothesis draws interactively), units
    appear over time, and some rounds try to charge excluded units too."""
    rf = RenyiFilter(epsilon=epsilon, delta=delta)
    units: list[str | int] = []
    charged: dict[str | int, list[Charge]] = {}
    for _ in range(rounds):
        units += [_new_unit(len(units) + i) for i in range(data.draw(st.integers(0, 5)))]
        charge = Charge(
            purpose=data.draw(st.sampled_from(PURPOSES)),
            sample_rate=data.draw(st.sampled_from(_QS)),
            noise_multiplier=data.draw(st.sampled_from(_SIGMAS)),
            steps=data.draw(st.integers(0, 300)),
        )
        candidates = data.draw(st.lists(st.sampled_from(units), unique=True)) if units else []
        before = {u: rf.rdp_of(u) for u in units}
        eps_before = rf.epsilons()

        selection = rf.select(charge, candidates)
        assert rf.epsilons() == eps_before  # select is pure
        assert set(selection.eligible).isdisjoint(selection.excluded)
        assert sorted(map(str, selection.eligible + selection.excluded)) == sorted(
            map(str, candidates)
        )
        for u in selection.eligible:  # the rule, on past charges and public parameters only
            assert fits_budget(before[u], charge.rdp(), epsilon=epsilon, delta=delta)
        for u in selection.excluded:
            assert not fits_budget(before[u], charge.rdp(), epsilon=epsilon, delta=delta)

        if selection.excluded and data.draw(st.booleans()):
            # Charging an excluded unit is refused, all or nothing.
            with pytest.raises(UnitOverBudget):
                rf.charge(charge, [*selection.eligible, selection.excluded[0]])
            assert rf.epsilons() == eps_before

        # The round may use any subset of the eligible units; those it uses are charged.
        used = data.draw(st.lists(st.sampled_from(selection.eligible), unique=True)) if (
            selection.eligible
        ) else []  # fmt: skip
        rf.charge(charge, used)
        for u in used:
            charged.setdefault(u, []).append(charge)
        for u in units:  # excluded and unused units are never charged
            if u not in used:
                np.testing.assert_array_equal(rf.rdp_of(u), before[u])
        assert all(e <= epsilon for e in rf.epsilons().values())

    for u in units:
        history = charged.get(u, [])
        # Charges compose by summing RDP order by order ...
        expected = compose([c.rdp() for c in history])
        np.testing.assert_allclose(rf.rdp_of(u), expected, rtol=1e-12, atol=1e-15)
        # ... which an independent implementation (dp-accounting, integer orders) agrees with.
        np.testing.assert_allclose(
            rf.rdp_of(u)[_INTEGER], _independent_rdp(history), rtol=1e-9, atol=1e-12
        )
        assert rf.epsilon_of(u) == pytest.approx(
            float(filter_epsilon(expected, delta=delta)), abs=1e-12
        )
        assert rf.epsilon_of(u) <= epsilon
    assert len(rf) == rounds
    assert set(rf.units) == set(charged)

    # The state survives JSON and comes back identical.
    restored = RenyiFilter.from_state_dict(json.loads(json.dumps(rf.state_dict())))
    assert restored.epsilons() == rf.epsilons() and restored.history == rf.history


@settings(max_examples=30, deadline=None)
@given(
    sigma=st.floats(0.5, 50.0),
    q=st.floats(0.0, 1.0),
    steps=st.integers(0, 2000),
    epsilon=st.floats(0.1, 10.0),
    repeats=st.integers(1, 40),
)
def test_repeating_one_round_stops_exactly_at_the_budget(sigma, q, steps, epsilon, repeats):
    """Continuous σ and q: a unit is admitted while (and only while) it still fits."""
    rf = RenyiFilter(epsilon=epsilon, delta=1e-5)
    charge = _charge(q=q, sigma=sigma, steps=steps)
    admitted = 0
    for _ in range(repeats):
        selection = rf.select(charge, ["u"])
        rf.charge(charge, selection.eligible)
        admitted += len(selection.eligible)
        assert rf.epsilon_of("u") <= epsilon
    np.testing.assert_allclose(rf.rdp_of("u"), admitted * charge.rdp(), rtol=1e-12)
    if admitted < repeats:  # stopped: one more round would not have fitted
        assert not fits_budget(rf.rdp_of("u"), charge.rdp(), epsilon=epsilon, delta=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    sigma=st.floats(0.5, 20.0),
    q=st.floats(0.01, 1.0),
    steps=st.integers(1, 200),
    share=st.floats(0.01, 1.0),
    spent_rounds=st.integers(0, 20),
)
def test_a_capped_charge_never_takes_more_than_its_share(sigma, q, steps, share, spent_rounds):
    """max_share: an admitted unit spends at most ``share`` of what it had left."""
    rf = RenyiFilter(epsilon=8.0, delta=1e-5)
    earlier = _charge(q=0.1, sigma=2.0, steps=20)
    for _ in range(spent_rounds):
        rf.charge(earlier, rf.select(earlier, ["u"]).eligible)
    before = rf.epsilon_of("u")
    charge = _charge(q=q, sigma=sigma, steps=steps)
    capped = rf.select(charge, ["u"], max_share=share)
    assert set(capped.eligible) <= set(rf.select(charge, ["u"]).eligible)
    rf.charge(charge, capped.eligible)
    assert rf.epsilon_of("u") <= before + share * (8.0 - before) + 1e-9
    if not capped.eligible:  # excluded: the charge would indeed have cost more than the share
        after = filter_epsilon(rf.rdp_of("u") + charge.rdp(), delta=1e-5)
        assert after > before + share * (8.0 - before) or after > 8.0


def test_max_share_must_be_a_share() -> None:
    rf = RenyiFilter(epsilon=8.0, delta=1e-5)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(PrivacyParameterError, match="max_share"):
            rf.select(_charge(), ["u"], max_share=bad)


# --- composition and exclusion ------------------------------------------------------------------


def test_charges_compose_and_units_appear_over_time() -> None:
    rf = RenyiFilter(epsilon=8.0, delta=1e-5)
    a, b = _charge("training", 0.01, 1.0, 200), _charge("validation", 1.0, 20.0, 1)
    rf.charge(a, ["old", 7])
    rf.charge(b, ["old", 7, "new"])  # "new" appears in round 2
    rf.charge(a, ["new"])
    np.testing.assert_allclose(rf.rdp_of("old"), a.rdp() + b.rdp())
    np.testing.assert_allclose(rf.rdp_of(7), a.rdp() + b.rdp())
    np.testing.assert_allclose(rf.rdp_of("new"), b.rdp() + a.rdp())
    assert rf.epsilon_of("old") == rf.epsilon_of("new") > 0
    assert rf.epsilon_of("never-seen") == 0.0 and "never-seen" not in rf.units
    assert rf.units == ("old", 7, "new") and len(rf) == 3
    assert rf.history == ((a, ("old", 7)), (b, ("old", 7, "new")), (a, ("new",)))
    # "7" (str) and 7 (int) are different units.
    assert rf.epsilon_of("7") == 0.0


def test_filter_is_looser_than_plain_accounting_but_conservative() -> None:
    # The union bound over |ORDERS| = 32 orders costs: filter-ε is the conversion at δ/32.
    rf = RenyiFilter(epsilon=10.0, delta=1e-5)
    rf.charge(_charge(q=0.01, sigma=1.0, steps=1000), ["u"])
    assert rf.epsilon_of("u") == pytest.approx(2.6028582044229, rel=1e-9)  # vs 2.1078 plain


def test_excluded_units_are_reported_and_never_charged() -> None:
    rf = RenyiFilter(epsilon=1.0, delta=1e-5)
    heavy = _charge(q=0.5, sigma=1.0, steps=50)  # alone > ε = 1 for anyone
    light = _charge(q=0.001, sigma=5.0, steps=10)
    selection = rf.select(heavy, ["a", "b"])
    assert selection == Selection(charge=heavy, eligible=(), excluded=("a", "b"))
    rf.charge(heavy, selection.eligible)  # charging nobody records an empty round
    assert rf.epsilons() == {} and len(rf) == 1
    with pytest.raises(UnitOverBudget, match="charge only select"):
        rf.charge(heavy, ["a"])
    rf.charge(light, ["a"])
    before = rf.state_dict()
    with pytest.raises(UnitOverBudget):
        rf.charge(heavy, ["b", "a"])  # all or nothing: "b" is not charged either
    assert rf.state_dict() == before
    assert issubclass(UnitOverBudget, PrivacyError)


def test_eligible_mask_is_the_vectorised_rule() -> None:
    rng = np.random.default_rng(0)
    step = _charge(q=0.05, sigma=1.0, steps=20).rdp()
    current = rng.uniform(0, 40, size=(50, 1)) * step  # 0 to 40 earlier rounds' worth
    eps = float(filter_epsilon(21 * step, delta=1e-5))  # room for 21 such rounds
    mask = eligible_mask(current, step, epsilon=eps, delta=1e-5)
    assert mask.shape == (50,) and mask.dtype == bool and 0 < mask.sum() < 50
    expected = [fits_budget(c, step, epsilon=eps, delta=1e-5) for c in current]
    assert mask.tolist() == expected
    assert eligible_mask(np.zeros(len(ORDERS)), step, epsilon=eps, delta=1e-5).shape == (1,)


# --- charge before release ----------------------------------------------------------------------


def test_charging_happens_before_release_and_is_never_refunded() -> None:
    """The protocol every caller (the ledger, the training round) follows:

    1. ``select`` -- pure; decides on past charges and public parameters only;
    2. ``charge`` -- records the round against every eligible unit *before* the round reads
       private data or releases anything (noised gradients, an adapter, a metric);
    3. sample (Poisson, over ``selection.eligible`` only), train, release.

    So the charge is on the books when the release happens, and a round that dies half way
    stays charged -- it may already have released something, which cannot be proven either
    way afterwards. The filter offers no way to refund a charge.
    """
    rf = RenyiFilter(epsilon=4.0, delta=1e-5)
    charge = _charge(q=0.02, sigma=1.2, steps=100)
    selection = rf.select(charge, ["a", "b", "c"])
    released: list[dict] = []

    def run_round(units: tuple, crash_after: int | None = None) -> None:
        for step in range(3):
            # Whatever the round releases, the units it may have used are already charged.
            assert all(rf.epsilon_of(u) > 0 for u in units)
            released.append({"step": step})
            if step == crash_after:
                raise RuntimeError("the device went to sleep")

    rf.charge(charge, selection.eligible)  # 2. charge first
    spent = rf.epsilons()
    with pytest.raises(RuntimeError):
        run_round(selection.eligible, crash_after=1)  # 3. dies after releasing something
    assert released and rf.epsilons() == spent  # still charged: nothing was refunded
    assert not any(hasattr(rf, name) for name in ("refund", "uncharge", "undo", "reset"))


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"purpose": "fun"},
        {"purpose": None},
        {"sample_rate": 1.5},
        {"sample_rate": -0.1},
        {"sample_rate": True},
        {"sample_rate": "0.1"},
        {"noise_multiplier": 0.0},
        {"noise_multiplier": float("nan")},
        {"noise_multiplier": float("inf")},
        {"steps": -1},
        {"steps": 2.0},
        {"steps": True},
    ],
)
def test_charge_refuses_bad_parameters(kwargs: dict) -> None:
    base = {"purpose": "training", "sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 10}
    with pytest.raises(PrivacyParameterError):
        Charge(**{**base, **kwargs})


def test_charge_is_plain_data() -> None:
    c = Charge(purpose="fisher", sample_rate=1, noise_multiplier=np.float32(4.0), steps=np.int64(3))
    assert c.to_dict() == {
        "purpose": "fisher",
        "sample_rate": 1.0,
        "noise_multiplier": 4.0,
        "steps": 3,
    }
    assert type(c.sample_rate) is float and type(c.steps) is int
    assert Charge.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert Charge.from_dict({**c.to_dict(), "units": ["x"], "clip_norm": 1.0}) == c  # extra keys
    assert Charge.from_dict({**c.to_dict(), "steps": 3.0}) == c  # a JSON writer's 3.0
    for bad in (
        None,
        [],
        {"purpose": "fisher"},
        {**c.to_dict(), "steps": 3.5},
        {**c.to_dict(), "sample_rate": "1"},
        {**c.to_dict(), "purpose": "leak"},
    ):
        with pytest.raises(PrivacyStateError):
            Charge.from_dict(bad)  # type: ignore[arg-type]
    assert set(PURPOSES) == {"training", "replay", "validation", "fisher", "migration"}


@pytest.mark.parametrize(
    "units",
    ["abc", b"abc", ["a", "a"], [1, 1], [True], [1.0], [None], [("a",)], 5],
)
def test_bad_unit_lists_are_refused_and_change_nothing(units) -> None:
    rf = RenyiFilter(epsilon=4.0, delta=1e-5)
    rf.charge(_charge(), ["a"])
    before = rf.state_dict()
    with pytest.raises(PrivacyParameterError):
        rf.select(_charge(), units)
    with pytest.raises(PrivacyParameterError):
        rf.charge(_charge(), units)
    assert rf.state_dict() == before


def test_bad_budgets_and_charges_are_refused() -> None:
    for eps, delta in ((0.0, 1e-5), (-1.0, 1e-5), (float("inf"), 1e-5), (1.0, 0.0), (1.0, 1.0)):
        with pytest.raises(PrivacyParameterError):
            RenyiFilter(epsilon=eps, delta=delta)
    with pytest.raises(PrivacyParameterError):
        RenyiFilter(epsilon="1.0", delta=1e-5)  # type: ignore[arg-type]
    rf = RenyiFilter(epsilon=1.0, delta=1e-5)
    with pytest.raises(PrivacyParameterError):
        rf.select({"purpose": "training"}, ["a"])  # type: ignore[arg-type]
    with pytest.raises(PrivacyParameterError):
        rf.charge(_charge().to_dict(), ["a"])  # type: ignore[arg-type]


# --- state ---------------------------------------------------------------------------------------


def _filled() -> RenyiFilter:
    rf = RenyiFilter(epsilon=6.0, delta=1e-6)
    rf.charge(_charge("training", 0.02, 1.1, 150), ["a", "b", 3])
    rf.charge(_charge("validation", 1.0, 30.0, 1), ["a", 3])
    rf.charge(_charge("replay", 0.05, 2.0, 40), ["b", "c"])
    return rf


def test_state_dict_round_trip() -> None:
    rf = _filled()
    state = rf.state_dict()
    assert json.loads(json.dumps(state)) == state  # JSON-serialisable as is
    assert state["orders"] == list(ORDERS) and state["mechanism"] == "renyi-filter"
    again = RenyiFilter(epsilon=6.0, delta=1e-6)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.state_dict() == state and again.epsilons() == rf.epsilons()
    clone = RenyiFilter.from_state_dict(state)
    assert (clone.epsilon, clone.delta) == (6.0, 1e-6) and clone.history == rf.history
    # The restored filter keeps enforcing the budget from where the original left off.
    big = _charge("training", 0.5, 0.9, 100)
    assert clone.select(big, ["a", "new"]) == rf.select(big, ["a", "new"])
    empty = RenyiFilter(epsilon=1.0, delta=1e-5)
    assert RenyiFilter.from_state_dict(empty.state_dict()).state_dict() == empty.state_dict()


def _set(path, value):
    def mutate(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(key):
    return lambda state: state.pop(key)


def _append_unit(state):
    state["units"].append(["ghost", [0.0] * len(ORDERS)])


def _drop_unit_from_round(state):
    state["history"][0]["units"].remove("b")


def _lower_a_charge(state):  # the history edited, the unit table left as it was
    state["history"][0]["noise_multiplier"] = 5.0


def _consistent_over_budget(state):
    """History and unit table edited consistently, but some units are then over budget."""
    state["history"][2].update(noise_multiplier=0.5, sample_rate=1.0, steps=1000)
    for row in state["units"]:
        rdp = compose(Charge.from_dict(h).rdp() for h in state["history"] if row[0] in h["units"])
        row[1] = rdp.tolist()


def _lower_rdp(state):
    state["units"][0][1] = [0.0] * len(ORDERS)


TAMPERS = {
    "not a mapping": lambda s: None,
    "no history": _delete("history"),
    "no units": _delete("units"),
    "no orders": _delete("orders"),
    "other mechanism": _set(["mechanism"], "rdp"),
    "other version": _set(["version"], 2),
    "bool version": _set(["version"], True),
    "other grid": _set(["orders"], list(ORDERS[:-1])),
    "grid of strings": _set(["orders"], [str(a) for a in ORDERS]),
    "other epsilon": _set(["epsilon"], 60.0),
    "other delta": _set(["delta"], 1e-5),
    "epsilon as string": _set(["epsilon"], "6.0"),
    "history not a list": _set(["history"], {"0": {}}),
    "history entry not a mapping": _set(["history", 0], ["training", 0.02, 1.1, 150]),
    "units of a round as a string": _set(["history", 0, "units"], "ab"),
    "unit listed twice in a round": _set(["history", 0, "units"], ["a", "a", 3]),
    "bool unit id": _set(["history", 0, "units"], ["a", "b", True]),
    "unknown purpose": _set(["history", 1, "purpose"], "free"),
    "negative steps": _set(["history", 1, "steps"], -1),
    "sigma as string": _set(["history", 1, "noise_multiplier"], "30"),
    "nan sample rate": _set(["history", 1, "sample_rate"], float("nan")),
    "missing field": lambda s: s["history"][1].pop("steps"),
    "lowered RDP in the table": _lower_rdp,
    "short RDP curve": _set(["units", 0, 1], [0.0] * 3),
    "RDP of strings": _set(["units", 0, 1], ["0"] * len(ORDERS)),
    "negative RDP": _set(["units", 0, 1], [-1.0] * len(ORDERS)),
    "unit table not pairs": _set(["units", 0], ["a"]),
    "unit table not a list": _set(["units"], {"a": []}),
    "unit missing from the table": lambda s: s["units"].pop(),
    "unit not in any round": _append_unit,
    "round lost a unit": _drop_unit_from_round,
    "round made cheaper": _lower_a_charge,
    "consistent but over budget": _consistent_over_budget,
}


@pytest.mark.parametrize("name", list(TAMPERS))
def test_load_state_dict_rejects_tampered_state_and_changes_nothing(name: str) -> None:
    rf = _filled()
    target = RenyiFilter(epsilon=6.0, delta=1e-6)
    target.charge(_charge("migration", 0.1, 3.0, 10), ["z"])
    before = target.state_dict()
    state = copy.deepcopy(rf.state_dict())
    result = TAMPERS[name](state)
    if name == "not a mapping":
        state = result
    with pytest.raises(PrivacyStateError):
        target.load_state_dict(state)
    assert target.state_dict() == before
    if name not in ("other epsilon", "other delta"):  # from_state_dict takes the stored budget
        with pytest.raises(PrivacyStateError):
            RenyiFilter.from_state_dict(state)


def test_untampered_copy_of_the_tamper_fixture_loads() -> None:
    state = copy.deepcopy(_filled().state_dict())
    RenyiFilter.from_state_dict(state)  # the fixture itself is valid
    # A budget change alone is loadable only through from_state_dict (the stored budget).
    _set(["epsilon"], 60.0)(state)
    assert RenyiFilter.from_state_dict(state).epsilon == 60.0


def test_many_units_and_rounds_stay_cheap() -> None:
    rf = RenyiFilter(epsilon=8.0, delta=1e-5)
    charge = _charge(q=0.001, sigma=4.0, steps=20)
    for r in range(100):
        units = range(r * 100, r * 100 + 2000)  # 100 new units a round, 2000 candidates
        rf.charge(charge, rf.select(charge, units).eligible)
    assert len(rf.units) == 11_900
    eps = rf.epsilons()
    assert max(eps.values()) <= 8.0 and eps[0] < eps[5000]
    # Unit 5000 was a candidate (and eligible) in rounds 31..50: 20 charges of 20 steps.
    twenty = sgm_rdp(sample_rate=0.001, noise_multiplier=4.0, steps=400)
    assert eps[5000] == pytest.approx(filter_epsilon(twenty, delta=1e-5), rel=1e-12)

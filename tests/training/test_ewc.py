"""Online EWC: the penalty and its gradient, the online update, Fisher from public data and
from noised DP gradients (bias correction, through the DP step's hooks), sealed persistence."""

from __future__ import annotations

import math
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

from personal.errors import AdapterMismatch, ConfigError, SeededNoiseWarning, TamperDetected
from personal.model.batching import Batch
from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora
from personal.privacy.dpsgd import DPConfig, make_dp_step
from personal.privacy.noise import GaussianNoise
from personal.privacy.sampler import pack_units
from personal.store import RawKey, Store
from personal.training import ewc as ewc_module
from personal.training.ewc import (
    EWCState,
    FisherFromNoisedGradients,
    add_penalty_grad,
    ewc_gradient_transform,
    fisher_from_public,
    penalty,
    penalty_grad,
    update_state,
)

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tiny_models import build_tiny_model

KEY = RawKey(bytes(range(32)))
RNG = np.random.default_rng(0)


def _arr(*shape: int, scale: float = 1.0) -> mx.array:
    return mx.array((scale * RNG.standard_normal(shape)).astype(np.float32))


def _state(gamma: float = 0.9) -> EWCState:
    anchor = {"a.lora_a": _arr(4, 3), "a.lora_b": _arr(3, 2)}
    fisher = {k: mx.abs(_arr(*v.shape)) for k, v in anchor.items()}
    return EWCState(anchor, fisher, gamma)


def _noise(seed: int) -> GaussianNoise:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        return GaussianNoise(seed=seed)


def _np(tree: dict) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree.items()}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.create(tmp_path / "store", KEY) as opened:
        yield opened


# --- penalty ---------------------------------------------------------------------------------


def test_penalty_zero_at_anchor_and_quadratic() -> None:
    state = _state()
    assert penalty(state.anchor, state, 3.0).item() == 0.0
    direction = {k: _arr(*v.shape) for k, v in state.anchor.items()}
    values = []
    for t in (1.0, 2.0, 3.0):
        params = {k: state.anchor[k] + t * direction[k] for k in direction}
        values.append(penalty(params, state, 3.0).item())
    assert values[0] > 0
    np.testing.assert_allclose(values, [values[0], 4 * values[0], 9 * values[0]], rtol=1e-5)
    # By hand: (λ/2) Σ F d².
    by_hand = 1.5 * sum(
        float((np.array(state.fisher[k]) * np.array(d) ** 2).sum()) for k, d in direction.items()
    )
    np.testing.assert_allclose(values[0], by_hand, rtol=1e-5)
    assert penalty(params, state, 0.0).item() == 0.0


def test_penalty_grad_equals_autodiff_and_finite_differences() -> None:
    state = _state()
    params = {k: v + _arr(*v.shape, scale=0.5) for k, v in state.anchor.items()}
    auto = mx.grad(lambda p: penalty(p, state, 2.5))(params)
    mine = penalty_grad(params, state, 2.5)
    for name in params:
        np.testing.assert_allclose(np.array(mine[name]), np.array(auto[name]), rtol=1e-5, atol=1e-6)
    # One coordinate by central differences.
    name, eps = "a.lora_b", 1e-2
    bump = np.zeros(params[name].shape, dtype=np.float32)
    bump[1, 0] = eps
    plus = {**params, name: params[name] + mx.array(bump)}
    minus = {**params, name: params[name] - mx.array(bump)}
    fd = (penalty(plus, state, 2.5).item() - penalty(minus, state, 2.5).item()) / (2 * eps)
    np.testing.assert_allclose(fd, np.array(mine[name])[1, 0], rtol=1e-3)
    grads = {k: _arr(*v.shape) for k, v in params.items()}
    summed = add_penalty_grad(grads, params, state, 2.5)
    for k in grads:
        np.testing.assert_allclose(np.array(summed[k]), np.array(grads[k] + mine[k]), rtol=1e-6)
    assert ewc_gradient_transform(state, 2.5)(grads, params).keys() == grads.keys()


def test_mismatches_and_bad_values_are_refused() -> None:
    state = _state()
    with pytest.raises(AdapterMismatch):
        penalty({"a.lora_a": state.anchor["a.lora_a"]}, state, 1.0)
    with pytest.raises(AdapterMismatch):
        penalty({**state.anchor, "a.lora_b": mx.zeros((2, 3))}, state, 1.0)
    with pytest.raises(ConfigError):
        penalty(state.anchor, state, -1.0)
    with pytest.raises(ConfigError):
        EWCState(state.anchor, {k: -v for k, v in state.fisher.items()}, 0.5)
    with pytest.raises(ConfigError):
        EWCState(state.anchor, state.fisher, 1.5)
    with pytest.raises(AdapterMismatch):
        EWCState(state.anchor, {"a.lora_a": state.fisher["a.lora_a"]})


def test_nested_trees_are_flattened() -> None:
    state = _state()
    nested = {"a": {"lora_a": state.anchor["a.lora_a"], "lora_b": state.anchor["a.lora_b"]}}
    assert penalty(nested, state, 1.0).item() == 0.0


# --- online update ---------------------------------------------------------------------------


def test_online_update_math() -> None:
    first_anchor = {"w": mx.array([1.0, 2.0])}
    first = update_state(None, first_anchor, {"w": mx.array([0.5, 1.0])}, 0.8)
    np.testing.assert_array_equal(np.array(first.fisher["w"]), [0.5, 1.0])
    assert first.gamma == 0.8
    second = update_state(first, {"w": mx.array([3.0, 4.0])}, {"w": mx.array([1.0, 0.0])})
    np.testing.assert_allclose(np.array(second.fisher["w"]), [0.8 * 0.5 + 1.0, 0.8 * 1.0])
    np.testing.assert_array_equal(np.array(second.anchor["w"]), [3.0, 4.0])
    third = update_state(second, {"w": mx.array([0.0, 0.0])}, {"w": mx.array([0.0, 2.0])}, 0.0)
    np.testing.assert_array_equal(np.array(third.fisher["w"]), [0.0, 2.0])  # γ=0: forget
    np.testing.assert_array_equal(np.array(first.fisher["w"]), [0.5, 1.0])  # not mutated
    with pytest.raises(AdapterMismatch):
        update_state(first, first_anchor, {"v": mx.array([1.0, 1.0])})


# --- Fisher from public data -----------------------------------------------------------------


def _linear(n_in: int = 3, n_out: int = 1) -> nn.Module:
    model = nn.Linear(n_in, n_out, bias=False)
    model.weight = mx.array(RNG.standard_normal((n_out, n_in)).astype(np.float32))
    return model


def _sq_loss(model: nn.Module, x: mx.array, y: mx.array) -> mx.array:
    return ((model(x) - y) ** 2).sum(axis=-1)  # (S,) one loss per row


def test_fisher_from_public_matches_hand_computed_diagonal() -> None:
    model = _linear()
    w = np.array(model.weight)
    xs, ys = RNG.standard_normal((7, 3)).astype(np.float32), RNG.standard_normal((7, 1))
    ys = ys.astype(np.float32)
    batches = [(mx.array(xs[:4]), mx.array(ys[:4])), (mx.array(xs[4:]), mx.array(ys[4:]))]
    fisher = fisher_from_public(model, batches, loss=_sq_loss)
    grads = 2 * (xs @ w.T - ys) * xs  # (7, 3): d/dw of (w·x - y)² per row
    expected = (grads**2).mean(axis=0).reshape(1, 3)
    assert set(fisher) == {"weight"}
    np.testing.assert_allclose(np.array(fisher["weight"]), expected, rtol=1e-5)
    np.testing.assert_array_equal(np.array(model.weight), w)  # the model is left as it was
    # A UnitBatch: padding rows do not count.
    packed = pack_units([[(xs[i], ys[i])] for i in range(5)], 5.0, slots=8)
    padded = fisher_from_public(model, [packed], loss=_sq_loss)
    np.testing.assert_allclose(
        np.array(padded["weight"]), (grads[:5] ** 2).mean(axis=0).reshape(1, 3), rtol=1e-5
    )
    with pytest.raises(ConfigError):
        fisher_from_public(model, [], loss=_sq_loss)


def test_fisher_from_public_on_lora_covers_the_adapter() -> None:
    model, _ = build_tiny_model("llama", 96, seed=0)
    inject_lora(model, LoRAConfig(rank=2), seed=0)
    tokens = mx.array(RNG.integers(1, 96, (3, 9)).astype(np.int32))
    batch = Batch(tokens[:, :-1], tokens[:, 1:], mx.ones((3, 8), dtype=mx.float32))
    fisher = fisher_from_public(model, [batch])
    adapter = get_adapter_weights(model)
    assert set(fisher) == set(adapter)
    for name, value in fisher.items():
        assert value.shape == adapter[name].shape and value.dtype == mx.float32
        assert bool(mx.all(mx.isfinite(value) & (value >= 0)).item())
    # B = 0 at injection, so lora_a has no gradient yet; lora_b does.
    assert any(float(v.sum().item()) > 0 for k, v in fisher.items() if k.endswith("lora_b"))


# --- Fisher from noised DP gradients ---------------------------------------------------------


def _dp_linear_step(sigma: float, clip: float, fisher, *, lr: float = 0.0, **kw):
    model = _linear(40, 25)  # 1000 parameters
    step = make_dp_step(
        model,
        optim.SGD(learning_rate=lr),
        DPConfig(sigma, clip),
        loss=_sum_loss,
        noise=_noise(1),
        on_release=fisher,
        **kw,
    )
    return model, step


def _sum_loss(model: nn.Module, x: mx.array) -> mx.array:
    return model(x).sum(axis=-1)  # (S,); the gradient w.r.t. W is x over outputs: constant


def test_pure_noise_steps_corrected_fisher_is_zero() -> None:
    sigma, clip, size = 1.3, 0.7, 4.0
    fisher = FisherFromNoisedGradients(noise_std=sigma * clip, expected_size=size)
    _, step = _dp_linear_step(sigma, clip, fisher)
    for _ in range(400):
        step.empty(size)  # no unit sampled: the release is noise alone
    assert fisher.steps == 400
    bias = (sigma * clip / size) ** 2
    assert fisher.bias == pytest.approx(bias)
    raw = np.array(fisher.uncorrected()["weight"])
    assert raw.mean() == pytest.approx(bias, rel=0.02)
    corrected = np.array(fisher.estimate()["weight"])
    assert corrected.min() >= 0.0
    assert corrected.mean() < 0.05 * bias  # the floor leaves only small positive parts


def test_constant_gradient_plus_noise_corrected_fisher_is_g_squared() -> None:
    # The release of a DP step, as DPStep._release makes it: privatize the clipped sum, / B.
    sigma, clip, size = 1.0, 100.0, 25.0  # noise std on the mean: σC/B = 4
    fisher = FisherFromNoisedGradients(noise_std=sigma * clip, expected_size=size)
    g = np.linspace(-6.0, 6.0, 1000).astype(np.float32).reshape(25, 40)  # g² from 0 to 2.25·bias
    noise = _noise(2)
    for _ in range(2000):
        released = noise.privatize_tree({"w": mx.array(size * g)}, sigma * clip)
        fisher({k: v / size for k, v in released.items()})
    bias = fisher.bias
    assert bias == pytest.approx(16.0)
    raw = np.array(fisher.uncorrected()["w"])
    estimate = np.array(fisher.estimate()["w"])
    assert abs(raw.mean() - ((g**2).mean() + bias)) < 0.02 * bias
    assert abs(estimate.mean() - (g**2).mean()) < 0.02 * bias
    # Per coordinate within the Monte-Carlo error of 2000 steps (sd ≤ 0.06·bias here).
    assert np.abs(estimate - g**2).max() < 0.3 * bias


def test_constant_gradient_through_the_dp_step_hook() -> None:
    sigma, clip, size = 0.1, 1000.0, 25.0  # σC/B = 4 again
    fisher = FisherFromNoisedGradients(noise_std=sigma * clip, expected_size=size)
    _, step = _dp_linear_step(sigma, clip, fisher)
    x = np.linspace(-6.0, 6.0, 40).astype(np.float32)
    # 25 one-row units with the same gradient 1 ⊗ x (norm 112 < C, so not clipped): the sum
    # divided by B is 1 ⊗ x.
    batch = pack_units([[(x,)] for _ in range(25)], size, slots=32)
    for _ in range(120):
        step(batch)
    estimate = np.array(fisher.estimate()["weight"])  # (25, 40)
    # Mean over coordinates: sd ≈ sqrt((4·g²·b + 2b²) / (1000·120)) ≈ 0.01·b.
    assert abs(estimate.mean() - (x**2).mean()) < 0.06 * fisher.bias
    np.testing.assert_allclose(estimate.mean(axis=0), x**2, atol=0.4 * fisher.bias)


def test_pure_noise_fisher_under_quantile_clipping_uses_each_steps_noise_std() -> None:
    """Under quantile clipping every release has its own std σ_Δ·C_t: the step reports each
    one and the bias is their mean of squares (here C moves on pure-noise counts)."""
    from personal.privacy.dpsgd import NoiseObserver
    from personal.privacy.quantile import QuantileClipping

    sigma, clip, size = 1.3, 0.7, 40.0
    fisher = FisherFromNoisedGradients(noise_std=sigma * clip, expected_size=size)
    assert isinstance(fisher, NoiseObserver)
    quantile = QuantileClipping(learning_rate=1.0, count_noise=0.5)
    model = _linear(40, 25)
    step = make_dp_step(
        model, optim.SGD(learning_rate=0.0), DPConfig(sigma, clip, quantile=quantile),
        loss=_sum_loss, noise=_noise(1), on_release=fisher,
    )  # fmt: skip
    stds = [step.empty(size).noise_std for _ in range(400)]
    assert len(set(stds)) > 100  # C moved
    bias = float(np.mean(np.square(stds))) / size**2
    assert fisher.bias == pytest.approx(bias)
    raw = np.array(fisher.uncorrected()["weight"])
    assert raw.mean() == pytest.approx(bias, rel=0.03)
    assert np.array(fisher.estimate()["weight"]).mean() < 0.1 * bias
    assert abs((sigma * clip / size) ** 2 - bias) > 0.2 * bias  # the first std would be wrong


def test_fisher_validation() -> None:
    with pytest.raises(ConfigError):
        FisherFromNoisedGradients(noise_std=-1.0, expected_size=1.0)
    with pytest.raises(ConfigError):
        FisherFromNoisedGradients(noise_std=1.0, expected_size=0.0)
    with pytest.raises(ConfigError):
        FisherFromNoisedGradients(noise_std=1.0, expected_size=1.0).estimate()
    with pytest.raises(ConfigError):
        FisherFromNoisedGradients(noise_std=1.0, expected_size=1.0).observe_noise_std(math.nan)


# --- hooks of the DP step --------------------------------------------------------------------


@pytest.mark.parametrize("compile", [False, True])
def test_dp_step_hooks_see_normalised_release_and_transform_reaches_optimizer(
    compile: bool,
) -> None:
    seen: list[dict[str, mx.array]] = []
    model = _linear(6, 2)
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    anchor = {"weight": mx.array(before["weight"] + 1.0)}
    state = EWCState(anchor, {"weight": mx.full((2, 6), 0.5)}, 1.0)
    lam = 2.0
    step = make_dp_step(
        model,
        optim.SGD(learning_rate=1.0),
        DPConfig(0.0, 1e3),
        loss=_sum_loss,
        compile=compile,
        on_release=seen.append,
        transform=ewc_gradient_transform(state, lam),
    )
    x = np.arange(6, dtype=np.float32)
    step(pack_units([[(x,)], [(2 * x,)]], 4.0, slots=2))  # σ = 0: the release is exact
    assert len(seen) == 1
    release = np.array(seen[0]["weight"])
    np.testing.assert_allclose(release, np.broadcast_to(3 * x / 4.0, (2, 6)), rtol=1e-6)
    # SGD(lr=1) on release + λ F (θ - θ*) = release + 2 · 0.5 · (-1).
    after = np.array(model.weight)
    np.testing.assert_allclose(after, before["weight"] - (release - 1.0), rtol=1e-5, atol=1e-6)
    step.empty(4.0)
    assert len(seen) == 2 and float(np.abs(np.array(seen[1]["weight"])).max()) == 0.0


def test_strong_ewc_keeps_the_adapter_at_its_anchor() -> None:
    model, _ = build_tiny_model("llama", 96, seed=1)
    inject_lora(model, LoRAConfig(rank=2), seed=1)
    anchor = {k: mx.array(v) for k, v in get_adapter_weights(model).items()}
    state = EWCState(anchor, {k: mx.ones(v.shape) for k, v in anchor.items()})
    tokens = RNG.integers(1, 96, (4, 9)).astype(np.int32)
    units = [[(t[:-1], t[1:], np.ones(8, dtype=np.float32))] for t in tokens]
    batch = pack_units(units, 4.0, slots=4)

    def drift(lam: float) -> float:
        from personal.model.lora import set_adapter_weights

        set_adapter_weights(model, anchor)
        step = make_dp_step(
            model,
            optim.SGD(learning_rate=0.05),
            DPConfig(0.5, 1.0),
            noise=_noise(3),
            transform=ewc_gradient_transform(state, lam),
            compile=False,
        )
        for _ in range(5):
            step(batch)
        now = get_adapter_weights(model)
        return sum(float(((now[k] - anchor[k]) ** 2).sum().item()) for k in anchor)

    assert drift(19.0) < 0.2 * drift(0.0)


# --- persistence -----------------------------------------------------------------------------


def _bits(value: mx.array) -> bytes:
    view = value.view(mx.uint16) if value.dtype in (mx.bfloat16, mx.float16) else value
    return np.array(view).tobytes()


def test_persistence_round_trip_is_bit_identical(tmp_path: Path) -> None:
    path = tmp_path / "store"
    state = _state(0.37)
    anchor = {**state.anchor, "b.lora_a": _arr(2, 5).astype(mx.bfloat16)}
    fisher = {**state.fisher, "b.lora_a": mx.abs(_arr(2, 5)) * 1e-30}
    state = EWCState(anchor, fisher, 0.1 + 0.2)  # a gamma with no short decimal form
    with Store.create(path, KEY) as store:
        assert EWCState.load(store) is None
        state.save(store)
    with Store.open(path, KEY) as store:
        loaded = EWCState.load(store)
        assert loaded is not None and loaded.gamma == state.gamma
        for mine, theirs in ((state.anchor, loaded.anchor), (state.fisher, loaded.fisher)):
            assert set(mine) == set(theirs)
            for k in mine:
                assert theirs[k].dtype == mine[k].dtype and theirs[k].shape == mine[k].shape
                assert _bits(theirs[k]) == _bits(mine[k])
        assert EWCState.delete(store) is True
        assert EWCState.load(store) is None and EWCState.delete(store) is False


def test_tampering_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Store.create(path, KEY) as store:
        _state().save(store)
    conn = sqlite3.connect(path / "store.db")
    try:
        (blob,) = conn.execute(f"SELECT sealed FROM {ewc_module.TABLE}").fetchone()
        middle = len(blob) // 2
        flipped = bytes(blob[:middle]) + bytes([blob[middle] ^ 0x10]) + bytes(blob[middle + 1 :])
        conn.execute(f"UPDATE {ewc_module.TABLE} SET sealed = ?", [flipped])
        conn.commit()
    finally:
        conn.close()
    with Store.open(path, KEY) as store, pytest.raises(TamperDetected):
        EWCState.load(store)

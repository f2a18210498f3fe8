"""Tests of experiments/depth/losses.py: warp, SSIM, smoothness, the 32 monodepth losses."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import covjax
from covjax import static_weighting
from experiments.depth import losses
from experiments.depth.losses import (
    LOSS_NAMES,
    bilinear_sampler_1d_h,
    disparity_smoothness,
    equal_group_weights,
    generate_image_left,
    generate_image_right,
    hand_tuned_weights,
    monodepth_losses,
    scale_pyramid,
    ssim,
)

_sampler = jax.jit(bilinear_sampler_1d_h)
_losses = jax.jit(monodepth_losses)


def _random_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _shift_oracle(images: np.ndarray, pixel_offsets: np.ndarray) -> np.ndarray:
    """Per-pixel loop: sample column x + o of the zero-extended row, linearly."""
    batch, height, width, _ = images.shape
    out = np.zeros_like(images, dtype=np.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                position = x + pixel_offsets[b, y, x]
                left = int(np.floor(position))
                frac = position - left
                for column, weight in ((left, 1.0 - frac), (left + 1, frac)):
                    if 0 <= column < width:
                        out[b, y, x] += weight * images[b, y, column]
    return out


@pytest.mark.parametrize("shift", [-3, -1, 0, 2, 5])
def test_warp_integer_shift_with_zero_padding(shift: int) -> None:
    images = _random_images((2, 4, 16, 3))
    width = images.shape[2]
    out = np.asarray(_sampler(images, np.full(images.shape[:3], shift / width, np.float32)))
    expected = np.zeros_like(images)
    if shift >= 0:
        expected[:, :, : width - shift] = images[:, :, shift:]
    else:
        expected[:, :, -shift:] = images[:, :, :shift]
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("shift", [-2.25, 0.5, 1.75])
def test_warp_fractional_shift(shift: float) -> None:
    images = _random_images((1, 3, 12, 2), seed=1)
    offsets = np.full(images.shape[:3], shift / images.shape[2], np.float32)
    out = np.asarray(_sampler(images, offsets))
    whole = int(np.floor(shift))
    frac = shift - whole
    padded = np.pad(images, ((0, 0), (0, 0), (20, 20), (0, 0)))
    columns = np.arange(images.shape[2]) + 20 + whole
    expected = (1 - frac) * padded[:, :, columns] + frac * padded[:, :, columns + 1]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Shifts beyond a pixel sample the last column wholly outside: zero padding.
    if shift >= 1:
        assert np.all(out[:, :, -1] == 0)


@given(seed=st.integers(0, 2**16), scale=st.floats(0.05, 0.6))
def test_warp_matches_loop_oracle_for_varying_offsets(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(1, 3, 10, 2)).astype(np.float32)
    offsets = rng.uniform(-scale, scale, size=images.shape[:3]).astype(np.float32)
    out = np.asarray(_sampler(images, offsets[..., None]))
    expected = _shift_oracle(images, offsets.astype(np.float64) * images.shape[2])
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_warp_gradient_matches_finite_differences() -> None:
    images = _random_images((1, 2, 8, 1), seed=3)
    offsets = np.random.default_rng(4).uniform(-0.2, 0.2, images.shape[:3]).astype(np.float32)
    weights = _random_images(images.shape, seed=5)

    def objective(o: jax.Array) -> jax.Array:
        return jnp.sum(weights * bilinear_sampler_1d_h(images, o))

    grad = np.asarray(jax.grad(objective)(jnp.asarray(offsets)))
    eps = 1e-3
    for index in [(0, 0, 1), (0, 1, 4), (0, 1, 6)]:
        step = np.zeros_like(offsets)
        step[index] = eps
        numeric = (objective(offsets + step) - objective(offsets - step)) / (2 * eps)
        np.testing.assert_allclose(grad[index], float(numeric), rtol=2e-2, atol=1e-3)


def test_generate_images_directions() -> None:
    """Î_l(x) = I_r(x − d) and Î_r(x) = I_l(x + d) on a pair shifted by 2 pixels."""
    width, shift = 16, 2
    left = _random_images((1, 2, width, 3), seed=6)
    left[:, :, :shift] = 0  # content only where both views see it
    right = np.zeros_like(left)
    right[:, :, : width - shift] = left[:, :, shift:]  # right(x) = left(x + shift)
    disp = np.full((1, 2, width, 1), shift / width, np.float32)
    np.testing.assert_allclose(np.asarray(generate_image_left(right, disp)), left, atol=1e-6)
    np.testing.assert_allclose(np.asarray(generate_image_right(left, disp)), right, atol=1e-6)


def _ssim_oracle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM written from the formula with explicit 3×3 windows, in float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    batch, height, width, channels = x.shape
    out = np.zeros((batch, height - 2, width - 2, channels))
    c1, c2 = 0.01**2, 0.03**2
    for i in range(height - 2):
        for j in range(width - 2):
            wx = x[:, i : i + 3, j : j + 3].reshape(batch, 9, channels)
            wy = y[:, i : i + 3, j : j + 3].reshape(batch, 9, channels)
            mx, my = wx.mean(1), wy.mean(1)
            vx, vy = wx.var(1), wy.var(1)  # population variance, as E[x²] − E[x]²
            cov = ((wx - mx[:, None]) * (wy - my[:, None])).mean(1)
            value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            out[:, i, j] = np.clip((1 - value) / 2, 0, 1)
    return out


def test_ssim_matches_numpy_oracle() -> None:
    x = _random_images((2, 6, 9, 3), seed=7)
    y = np.clip(x + 0.2 * _random_images(x.shape, seed=8) - 0.1, 0, 1)
    out = np.asarray(jax.jit(ssim)(x, y))
    chex.assert_shape(out, (2, 4, 7, 3))
    np.testing.assert_allclose(out, _ssim_oracle(x, y), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ssim(x, x)), 0.0, atol=1e-5)
    # Anti-correlated images are maximally dissimilar, but clipped to [0, 1].
    assert float(jnp.max(ssim(x, 1 - x))) <= 1.0


def test_smoothness_on_constant_and_ramp() -> None:
    height, width = 6, 10
    image = np.full((1, height, width, 3), 0.5, np.float32)
    constant = np.full((1, height, width, 1), 0.1, np.float32)
    assert float(disparity_smoothness(constant, image)) == 0.0
    # d = a·x: |∂x d| = a except the replicated last column; ∂y d = 0; no image edges.
    slope = 0.01
    ramp = slope * np.broadcast_to(np.arange(width, dtype=np.float32), (1, height, width))
    expected = slope * (width - 1) / width
    np.testing.assert_allclose(float(disparity_smoothness(ramp, image)), expected, rtol=1e-5)
    # Along a vertical image edge of contrast c the x-penalty is damped by e^{−c}.
    edge_image = image.copy()
    edge_image[:, :, width // 2 :] = 0.9
    damped = slope * ((width - 2) + np.exp(-0.4)) / width
    np.testing.assert_allclose(float(disparity_smoothness(ramp, edge_image)), damped, rtol=1e-5)
    # The y direction: d = a·y gives a·(H − 1)/H.
    ramp_y = slope * np.broadcast_to(
        np.arange(height, dtype=np.float32)[:, None], (1, height, width)
    )
    np.testing.assert_allclose(
        float(disparity_smoothness(ramp_y, image)), slope * (height - 1) / height, rtol=1e-5
    )


def test_scale_pyramid_is_block_average_and_keeps_constants() -> None:
    image = _random_images((1, 16, 32, 3), seed=9)
    pyramid = [np.asarray(level) for level in scale_pyramid(image)]
    assert [level.shape for level in pyramid] == [(1, 16 // 2**s, 32 // 2**s, 3) for s in range(4)]
    # Half-pixel bilinear ×1/2 without antialiasing averages 2×2 blocks.
    blocks = image.reshape(1, 8, 2, 16, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(pyramid[1], blocks, atol=1e-6)
    # ×1/4 samples between pixels 4i+1 and 4i+2.
    middle = image.reshape(1, 4, 4, 8, 4, 3)[:, :, 1:3, :, 1:3].mean(axis=(2, 4))
    np.testing.assert_allclose(pyramid[2], middle, atol=1e-6)
    constant = np.full((2, 16, 32, 3), 0.3, np.float32)
    for level in scale_pyramid(constant):
        np.testing.assert_allclose(np.asarray(level), 0.3, atol=1e-6)


def _stereo_pair(shift: int, height: int = 32, width: int = 64) -> tuple[np.ndarray, ...]:
    """A left/right pair with right(x) = left(x + shift), content away from the borders."""
    rng = np.random.default_rng(10)
    coarse = rng.uniform(size=(1, height // 8, width // 8, 3))
    left = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.float32)
    margin = 2 * shift
    left[:, :, :margin] = 0
    left[:, :, -margin:] = 0
    right = np.zeros_like(left)
    right[:, :, : width - shift] = left[:, :, shift:]
    return left, right


def _constant_disparities(fraction: float, height: int, width: int) -> tuple[jax.Array, ...]:
    return tuple(
        jnp.full((1, height // 2**s, width // 2**s, 2), fraction, jnp.float32) for s in range(4)
    )


def test_loss_names_and_order() -> None:
    assert len(LOSS_NAMES) == 32 and len(set(LOSS_NAMES)) == 32
    assert LOSS_NAMES[:8] == tuple(
        f"l1/{view}/s{s}" for view in ("left", "right") for s in range(4)
    )
    assert [name.split("/")[0] for name in LOSS_NAMES[::8]] == ["l1", "ssim", "lr", "smooth"]
    left, right = _stereo_pair(8)
    values = _losses(_constant_disparities(0.1, 32, 64), left, right)
    # (jit returns dicts with sorted keys: LOSS_NAMES, not the dict, carries the order.)
    assert set(values) == set(LOSS_NAMES)
    for value in values.values():
        assert value.shape == () and value.dtype == jnp.float32
    # covjax names them by key: the same 32 names (in sorted order).
    assert sorted(covjax.loss_names(values)) == sorted(LOSS_NAMES)


def test_perfect_disparity_gives_zero_photometric_loss() -> None:
    height, width, shift = 32, 64, 8  # 8 pixels = 1 pixel at scale 3
    left, right = _stereo_pair(shift, height, width)
    perfect = _losses(_constant_disparities(shift / width, height, width), left, right)
    wrong = _losses(_constant_disparities(0.5 * shift / width, height, width), left, right)
    for group in ("l1", "ssim"):
        for view in ("left", "right"):
            for scale in range(4):
                name = f"{group}/{view}/s{scale}"
                assert float(perfect[name]) < 1e-6, name
                assert float(wrong[name]) > 1e-3, name
    # Constant disparities: no smoothness loss; LR only where the warp leaves the image.
    for view in ("left", "right"):
        for scale in range(4):
            assert float(perfect[f"smooth/{view}/s{scale}"]) == 0.0
            # the first/last `shift` pixels of each row see zero padding.
            np.testing.assert_allclose(
                float(perfect[f"lr/{view}/s{scale}"]), shift / width * shift / width, rtol=1e-5
            )


def test_losses_under_bfloat16_and_gradients() -> None:
    left, right = _stereo_pair(8)
    disparities = _constant_disparities(0.1, 32, 64)
    reference = _losses(disparities, left, right)
    low = _losses(
        tuple(d.astype(jnp.bfloat16) for d in disparities),
        jnp.asarray(left, jnp.bfloat16),
        jnp.asarray(right, jnp.bfloat16),
    )
    for name in LOSS_NAMES:
        assert low[name].dtype == jnp.float32
        np.testing.assert_allclose(float(low[name]), float(reference[name]), rtol=0.05, atol=2e-3)

    # Every loss depends on the disparities (the network's only output).
    def total(ds: tuple[jax.Array, ...]) -> jax.Array:
        return sum(monodepth_losses(ds, left, right).values())

    noisy = tuple(
        d + 0.01 * jax.random.normal(jax.random.key(s), d.shape) for s, d in enumerate(disparities)
    )
    grads = jax.jit(jax.grad(total))(noisy)
    for grad in grads:
        chex.assert_tree_all_finite(grad)
        assert float(jnp.abs(grad).sum()) > 0


def test_bad_inputs_are_rejected() -> None:
    left, right = _stereo_pair(8)
    disparities = _constant_disparities(0.1, 32, 64)
    with pytest.raises(ValueError, match="expected 4 disparity maps"):
        monodepth_losses(disparities[:3], left, right)
    with pytest.raises(ValueError, match="scale 1"):
        monodepth_losses((disparities[0], disparities[0], *disparities[2:]), left, right)
    with pytest.raises(ValueError, match="differ in shape"):
        monodepth_losses(disparities, left, right[:, :16])
    with pytest.raises(ValueError, match="do not match"):
        bilinear_sampler_1d_h(left, np.zeros((1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        ssim(left, right[:, :16])


def test_static_weights() -> None:
    hand = hand_tuned_weights()
    assert tuple(hand) == LOSS_NAMES
    np.testing.assert_allclose(sum(hand.values()), 1.0, rtol=1e-12)
    group_sums = {
        g: sum(v for k, v in hand.items() if k.startswith(g + "/")) for g in losses.GROUPS
    }
    np.testing.assert_allclose(
        [group_sums[g] for g in ("ssim", "l1", "lr", "smooth")],
        [0.85 / 2.1, 0.15 / 2.1, 1.0 / 2.1, 0.1 / 2.1],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        [group_sums[g] for g in ("ssim", "l1", "lr", "smooth")],
        [0.405, 0.071, 0.476, 0.048],
        atol=1e-3,
    )
    np.testing.assert_allclose(hand["ssim/left/s0"], 0.85 / 2.1 / 8, rtol=1e-12)
    equal = equal_group_weights()
    assert tuple(equal) == LOSS_NAMES
    np.testing.assert_allclose(list(equal.values()), 1.0 / 32, rtol=1e-12)
    # A subset keeps each group's share split over the losses present.
    subset = hand_tuned_weights(["l1/left/s0", "ssim/left/s0", "ssim/right/s0"])
    np.testing.assert_allclose(subset["l1/left/s0"], 0.15 / 1.0, rtol=1e-12)
    np.testing.assert_allclose(subset["ssim/right/s0"], 0.85 / 2, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown monodepth losses"):
        hand_tuned_weights(["photometric"])
    # They plug into covjax's static weighting with the losses' structure.
    left, right = _stereo_pair(8)
    values = _losses(_constant_disparities(0.1, 32, 64), left, right)
    scheme = static_weighting(hand)
    weights, _ = scheme.update(values, scheme.init(values))
    np.testing.assert_allclose(
        float(covjax.weighted_sum(values, weights)),
        sum(hand[k] * float(v) for k, v in values.items()),
        rtol=1e-5,
    )

"""monodepth's 32 self-supervised stereo losses, kept separate for a weighting scheme.

Godard, Mac Aodha and Brostow, "Unsupervised Monocular Depth Estimation with
Left-Right Consistency", CVPR 2017, as used (unsummed) by Groenendijk et al.,
"Multi-Loss Weighting with Coefficient of Variations", WACV 2021 (https://arxiv.org/abs/2009.01717).

At each scale s = 0..3 (an image pyramid by bilinear downsampling) and for
each view, with d_l, d_r the predicted disparities (fractions of the width)::

    Î_l(x) = I_r(x − d_l(x))            Î_r(x) = I_l(x + d_r(x))      (bilinear, zero padded)
    L1      = mean |Î − I|
    SSIM    = mean clip((1 − SSIM(Î, I)) / 2, 0, 1)       (3×3 mean-pool statistics, VALID)
    LR      = mean |d_l − d_r(x − d_l)|    (right view: mean |d_r − d_l(x + d_r)|)
    smooth  = (mean |∂x d| e^{−mean_c |∂x I|} + mean |∂y d| e^{−mean_c |∂y I|}) / 2^s

monodepth sums them as α·SSIM + (1 − α)·L1 (α = 0.85) + LR + 0.1·smoothness;
here every one is its own loss and a weighting scheme weighs them. The 32
names, in the reference code's order (:data:`LOSS_NAMES`): ``l1/left/s0`` … ``l1/left/s3``,
``l1/right/s0`` … ``l1/right/s3``, then the same for ``ssim``, ``lr`` and
``smooth``.

Reference details reproduced: the pyramid is PyTorch's bilinear resize with
``align_corners=False`` and no antialiasing; image gradients are forward
differences with a replicated last row/column (so the means run over H×W).
The warp is monodepth's ``bilinear_sampler_1d_h``: the pixel at column x
samples column x + offset·W of the zero-extended image, so a zero offset is
the identity. (The CoV release's PyTorch sampler instead maps columns with
``grid_sample(align_corners=False)`` on a ``linspace(-1, 1)`` grid, a
sub-pixel stretch that is not the identity at zero offset; we keep Godard's.)

Everything is jittable; inputs may be bf16 but every loss is computed in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
from jax import Array

NUM_SCALES = 4
VIEWS = ("left", "right")
GROUPS = ("l1", "ssim", "lr", "smooth")
#: The 32 loss names in the reference code's order (group, view, scale).
LOSS_NAMES: tuple[str, ...] = tuple(
    f"{group}/{view}/s{scale}" for group in GROUPS for view in VIEWS for scale in range(NUM_SCALES)
)
#: monodepth's loss weights: α = 0.85 on SSIM, 1 − α on L1, LR 1, smoothness 0.1.
MONODEPTH_GROUP_WEIGHTS = {"l1": 0.15, "ssim": 0.85, "lr": 1.0, "smooth": 0.1}
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _as_float32(x: Array) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"expected a floating-point array, got dtype {x.dtype}.")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_nhwc(name: str, x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be NHWC (B, H, W, C), got shape {x.shape}.")


def bilinear_sampler_1d_h(images: Array, offsets: Array) -> Array:
    """Sample ``images`` horizontally at x + offsets·W, bilinear, zero outside.

    monodepth's sampler: output[b, y, x] = Σ_k w_k I[b, y, x_k] with x_k the two
    columns around x + offsets[b, y, x]·W, and I = 0 outside [0, W − 1].
    Differentiable in both arguments (almost everywhere).

    Args:
      images: (B, H, W, C).
      offsets: (B, H, W) or (B, H, W, 1), horizontal shift as a fraction of W.

    Returns:
      (B, H, W, C), in the promoted float dtype of the inputs (at least float32).
    """
    _check_nhwc("bilinear_sampler_1d_h: images", images)
    images = _as_float32(images)
    offsets = _as_float32(offsets)
    if offsets.ndim == 4:
        if offsets.shape[-1] != 1:
            raise ValueError(
                "bilinear_sampler_1d_h: offsets must be (B, H, W) or (B, H, W, 1), "
                f"got shape {offsets.shape}."
            )
        offsets = offsets[..., 0]
    if offsets.shape != images.shape[:3]:
        raise ValueError(
            f"bilinear_sampler_1d_h: offsets of shape {offsets.shape} do not match images of "
            f"shape {images.shape} (need (B, H, W) = {images.shape[:3]})."
        )
    width = images.shape[2]
    columns = jnp.arange(width, dtype=offsets.dtype)
    x = columns[None, None, :] + offsets * width
    x0 = jnp.floor(x)
    weight_right = x - x0  # carries the gradient w.r.t. the offsets
    weight_left = 1.0 - weight_right
    x0 = x0.astype(jnp.int32)

    def gather(index: Array) -> Array:
        inside = (index >= 0) & (index < width)
        clipped = jnp.clip(index, 0, width - 1)
        values = jnp.take_along_axis(images, clipped[..., None], axis=2)
        return jnp.where(inside[..., None], values, 0.0)

    return weight_left[..., None] * gather(x0) + weight_right[..., None] * gather(x0 + 1)


def generate_image_left(right: Array, disp_left: Array) -> Array:
    """Reconstruct the left view from the right one: Î_l(x) = I_r(x − d_l(x))."""
    return bilinear_sampler_1d_h(right, -_as_float32(disp_left))


def generate_image_right(left: Array, disp_right: Array) -> Array:
    """Reconstruct the right view from the left one: Î_r(x) = I_l(x + d_r(x))."""
    return bilinear_sampler_1d_h(left, disp_right)


def _mean_pool_3x3(x: Array) -> Array:
    summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "VALID")
    return summed / 9.0


def ssim(x: Array, y: Array) -> Array:
    """monodepth's SSIM dissimilarity map clip((1 − SSIM(x, y)) / 2, 0, 1).

    Local statistics are 3×3 means without padding, so the map is
    (B, H − 2, W − 2, C)::

        SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),

    C1 = 0.01², C2 = 0.03² (images in [0, 1]).
    """
    _check_nhwc("ssim: x", x)
    if jnp.shape(x) != jnp.shape(y):
        raise ValueError(f"ssim: x and y must have the same shape, got {x.shape} and {y.shape}.")
    x, y = _as_float32(x), _as_float32(y)
    mu_x, mu_y = _mean_pool_3x3(x), _mean_pool_3x3(y)
    sigma_x = _mean_pool_3x3(x * x) - mu_x**2
    sigma_y = _mean_pool_3x3(y * y) - mu_y**2
    sigma_xy = _mean_pool_3x3(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return jnp.clip((1 - numerator / denominator) / 2, 0.0, 1.0)


def gradient_x(x: Array) -> Array:
    """Forward difference x[:, :, j] − x[:, :, j + 1], last column replicated (→ 0)."""
    padded = jnp.concatenate([x, x[:, :, -1:]], axis=2)
    return padded[:, :, :-1] - padded[:, :, 1:]


def gradient_y(x: Array) -> Array:
    """Forward difference x[:, i] − x[:, i + 1], last row replicated (→ 0)."""
    padded = jnp.concatenate([x, x[:, -1:]], axis=1)
    return padded[:, :-1] - padded[:, 1:]


def disparity_smoothness(disp: Array, image: Array) -> Array:
    """Edge-aware smoothness mean |∂x d| e^{−mean_c |∂x I|} + mean |∂y d| e^{−mean_c |∂y I|}.

    Args:
      disp: (B, H, W) or (B, H, W, 1) disparity.
      image: (B, H, W, C) image at the same resolution.

    Returns:
      The scalar loss, without the 1/2^s scale factor (see :func:`monodepth_losses`).
    """
    _check_nhwc("disparity_smoothness: image", image)
    disp, image = _as_float32(disp), _as_float32(image)
    if disp.ndim == 3:
        disp = disp[..., None]
    if disp.shape != (*image.shape[:3], 1):
        raise ValueError(
            f"disparity_smoothness: disparity of shape {disp.shape} does not match the image "
            f"of shape {image.shape}."
        )
    weight_x = jnp.exp(-jnp.mean(jnp.abs(gradient_x(image)), axis=-1, keepdims=True))
    weight_y = jnp.exp(-jnp.mean(jnp.abs(gradient_y(image)), axis=-1, keepdims=True))
    return jnp.mean(jnp.abs(gradient_x(disp) * weight_x)) + jnp.mean(
        jnp.abs(gradient_y(disp) * weight_y)
    )


def scale_pyramid(image: Array, num_scales: int = NUM_SCALES) -> list[Array]:
    """[image, image/2, image/4, ...]: bilinear (half-pixel centres, no antialiasing).

    Scale s has size (H // 2^s, W // 2^s), as PyTorch's ``interpolate(...,
    mode="bilinear", align_corners=False)`` in the reference.
    """
    _check_nhwc("scale_pyramid: image", image)
    image = _as_float32(image)
    batch, height, width, channels = image.shape
    pyramid = [image]
    for scale in range(1, num_scales):
        size = (batch, height // 2**scale, width // 2**scale, channels)
        pyramid.append(jax.image.resize(image, size, "bilinear", antialias=False))
    return pyramid


def monodepth_losses(disparities: Sequence[Array], left: Array, right: Array) -> dict[str, Array]:
    """The 32 monodepth losses of one batch, as ``{name: scalar}`` in :data:`LOSS_NAMES` order.

    Args:
      disparities: 4 arrays (B, H/2^s, W/2^s, 2), full resolution first;
        channel 0 the left disparity, 1 the right (fractions of the width),
        as returned by :class:`~experiments.depth.models.MonoDepth`.
      left, right: (B, H, W, 3) stereo images in [0, 1].

    Returns:
      A dict of 32 float32 scalars. (covjax names pytree leaves by key and JAX
      flattens dicts in sorted key order, so index-based consumers should use
      :data:`LOSS_NAMES`, not the dict order, to map a loss vector to names.)
    """
    _check_nhwc("monodepth_losses: left", left)
    if jnp.shape(left) != jnp.shape(right):
        raise ValueError(
            f"monodepth_losses: left and right images differ in shape: {left.shape} vs "
            f"{right.shape}."
        )
    if len(disparities) != NUM_SCALES:
        raise ValueError(
            f"monodepth_losses: expected {NUM_SCALES} disparity maps (one per scale), "
            f"got {len(disparities)}."
        )
    batch, height, width, _ = left.shape
    for scale, disp in enumerate(disparities):
        expected = (batch, height // 2**scale, width // 2**scale, 2)
        if jnp.shape(disp) != expected:
            raise ValueError(
                f"monodepth_losses: disparity at scale {scale} has shape {jnp.shape(disp)}, "
                f"expected {expected} (left and right disparity channels)."
            )
    left_pyramid = scale_pyramid(left)
    right_pyramid = scale_pyramid(right)
    losses: dict[str, dict[str, list[Array]]] = {
        group: {view: [] for view in VIEWS} for group in GROUPS
    }
    for scale in range(NUM_SCALES):
        disp = _as_float32(disparities[scale])
        disp_left, disp_right = disp[..., 0:1], disp[..., 1:2]
        image = {"left": left_pyramid[scale], "right": right_pyramid[scale]}
        estimate = {
            "left": generate_image_left(image["right"], disp_left),
            "right": generate_image_right(image["left"], disp_right),
        }
        # Each disparity map warped into the other view by that view's disparity.
        disp_estimate = {
            "left": generate_image_left(disp_right, disp_left),
            "right": generate_image_right(disp_left, disp_right),
        }
        own_disp = {"left": disp_left, "right": disp_right}
        for view in VIEWS:
            losses["l1"][view].append(jnp.mean(jnp.abs(estimate[view] - image[view])))
            losses["ssim"][view].append(jnp.mean(ssim(estimate[view], image[view])))
            losses["lr"][view].append(jnp.mean(jnp.abs(disp_estimate[view] - own_disp[view])))
            losses["smooth"][view].append(
                disparity_smoothness(own_disp[view], image[view]) / 2**scale
            )
    return {
        f"{group}/{view}/s{scale}": losses[group][view][scale]
        for group in GROUPS
        for view in VIEWS
        for scale in range(NUM_SCALES)
    }


def _group_weights(group_weights: dict[str, float], names: Iterable[str]) -> dict[str, float]:
    names = tuple(names)
    unknown = sorted(set(names) - set(LOSS_NAMES))
    if unknown:
        raise ValueError(
            f"unknown monodepth losses {unknown}; they are named like {LOSS_NAMES[0]!r}."
        )
    if not names:
        raise ValueError("need at least one loss name.")
    counts = {group: sum(name.split("/")[0] == group for name in names) for group in GROUPS}
    # Normalize over the groups present, so that the weights always sum to 1.
    total = sum(weight for group, weight in group_weights.items() if counts[group])
    return {
        name: group_weights[group] / total / counts[group]
        for name in names
        for group in (name.split("/")[0],)
    }


def hand_tuned_weights(names: Iterable[str] = LOSS_NAMES) -> dict[str, float]:
    """monodepth's weights (SSIM 0.85, L1 0.15, LR 1, smoothness 0.1; Godard et al. 2017).

    The four group weights are normalized to sum 1 (≈ 0.405, 0.071, 0.476,
    0.048 for SSIM, L1, LR, smoothness) and each is split evenly over the
    losses of its group present in ``names`` (8 each by default).
    """
    return _group_weights(MONODEPTH_GROUP_WEIGHTS, names)


def equal_group_weights(names: Iterable[str] = LOSS_NAMES) -> dict[str, float]:
    """The reference's static default: 0.25 per group, split evenly within each group."""
    return _group_weights(dict.fromkeys(GROUPS, 1.0), names)

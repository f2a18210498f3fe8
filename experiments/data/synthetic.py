"""An offline synthetic stereo driving dataset, rendered by vectorised ray casting.

Every experiment must be runnable without the real datasets (none of which can be
downloaded here), so this module renders driving-like scenes from a seed, with
numpy only, and stores them as a TFDS dataset (:class:`SyntheticStereo`) that goes
through the same input pipeline as KITTI or Cityscapes.

Scene (world coordinates: X right, Y up, Z forward, metres; the left camera sits at
``(0, camera_height, 0)`` looking along +Z, the right camera ``baseline`` metres to
its right; both are rectified pinhole cameras with the same intrinsics):

* a ground plane ``Y = 0``: a road of random width and offset, sidewalks beside it,
  dashed lane markings;
* buildings (axis-aligned boxes with window grids) on both sides at random
  setbacks, heights and lengths, with gaps, and a row of buildings closing the
  street 40–62 m ahead (so every ground pixel has a finite depth);
* vehicles (boxes, some trucks) at many depths, poles, and trees (trunk box and
  spherical crown), which occlude each other and the buildings;
* a sky gradient (no depth).

Textures are functions of the 3-D hit point (sums of random sinusoids, per-object
scale and colour, plus lane markings and windows), so a surface point has the same
colour in both views and photometric stereo matching carries signal. Shading is
Lambertian (a random sun direction, ambient level and exposure per scene) with a
little distance haze; everything is view-independent, which keeps
``left(x) == right(x - disparity)`` away from occlusions.

Ray directions are ``((u - cx) / f, -(v - cy) / f, 1)`` for pixel centres
``(u, v) = (col + 0.5, row + 0.5)`` and ``(cx, cy) = (W / 2, H / 2)``, so the ray
parameter of a hit *is* its depth ``z`` and ``disparity_px = focal · baseline / z``
(right image: ``x_right = x_left - disparity_px``).

Camera: ``focal = 0.58 · width`` pixels and ``baseline = 0.54`` m, KITTI's ratios.
Depths range from about 1.5 m to 62 m, i.e. disparities of about 0.5 %–20 % of the
width, as on KITTI.

Semantic classes (``CLASS_NAMES``; 255 = nothing is never produced by the renderer,
since every pixel is sky or a surface, but the input pipeline uses it for padding):

====  ===========
id    class
====  ===========
0     sky
1     road
2     sidewalk
3     building
4     vehicle
5     pole
6     vegetation
====  ===========

Surface normals are unit vectors in *camera* coordinates (x right, y down,
z forward): the road's normal is ``(0, -1, 0)``; sky pixels have normal 0.

Example features (shared data contract): ``left``, ``right`` uint8 [H, W, 3];
``depth`` float32 [H, W] (0 on sky); ``semantic`` int32 [H, W]; ``normals`` float32
[H, W, 3]; ``focal``, ``baseline`` float32 scalars; plus the right view's targets
``depth_right``, ``semantic_right``, ``normals_right`` (so that the flip-and-swap
augmentation keeps full supervision) and ``index`` (int64, the example's number in
its split).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from experiments.data.preparation import prepare_once
from experiments.data.tfds_compat import ensure_importlib_resources

__all__ = [
    "BASELINE_M",
    "CLASS_NAMES",
    "FOCAL_PER_WIDTH",
    "IGNORE_LABEL",
    "NUM_CLASSES",
    "SPLIT_IDS",
    "Camera",
    "Scene",
    "SyntheticStereo",
    "SyntheticStereoConfig",
    "View",
    "camera_for",
    "generate_example",
    "load",
    "main",
    "preview",
    "render_view",
    "sample_scene",
]

CLASS_NAMES: tuple[str, ...] = (
    "sky",
    "road",
    "sidewalk",
    "building",
    "vehicle",
    "pole",
    "vegetation",
)
NUM_CLASSES = len(CLASS_NAMES)
SKY, ROAD, SIDEWALK, BUILDING, VEHICLE, POLE, VEGETATION = range(NUM_CLASSES)
IGNORE_LABEL = 255

# KITTI's camera: focal ≈ 721 px at 1242 px width, baseline 0.54 m.
FOCAL_PER_WIDTH = 0.58
BASELINE_M = 0.54
CAMERA_HEIGHT_M = 1.65

# Distinct, fixed streams of scenes per split (a scene depends only on
# (seed, split, index), so any number of examples can be made in any order).
SPLIT_IDS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}

# Images up to this size are stored uncompressed (see SyntheticStereo._info).
_RAW_IMAGE_MAX_PIXELS = 64 * 128

# Sinusoids of the 3-D texture: directions and frequencies are fixed per scene.
_NUM_WAVES = 8


class Camera(NamedTuple):
    """A rectified stereo rig: pinhole intrinsics shared by both views.

    Attributes:
      height, width: image size in pixels.
      focal: focal length in pixels (same horizontally and vertically).
      baseline: distance between the two camera centres, metres.
      camera_height: height of the cameras above the ground plane, metres.
    """

    height: int
    width: int
    focal: float
    baseline: float
    camera_height: float = CAMERA_HEIGHT_M


def camera_for(height: int, width: int) -> Camera:
    """The KITTI-like camera of the synthetic data at a given resolution."""
    if height < 2 or width < 2:
        raise ValueError(f"image size must be at least 2×2, got {height}×{width}")
    return Camera(height, width, FOCAL_PER_WIDTH * width, BASELINE_M)


class Scene(NamedTuple):
    """Geometry and appearance of one scene (all float32 arrays, metres).

    Boxes are axis-aligned ``[box_lo, box_hi]``; spheres are ``(center, radius)``.
    Every object has a class label, an RGB albedo and a texture scale (cycles per
    metre multiplier). The ground carries the road ``|X - road_center| < road_half``,
    then sidewalks.
    """

    box_lo: np.ndarray  # [N, 3]
    box_hi: np.ndarray  # [N, 3]
    box_label: np.ndarray  # [N] int
    box_albedo: np.ndarray  # [N, 3]
    box_texture_scale: np.ndarray  # [N]
    sphere_center: np.ndarray  # [M, 3]
    sphere_radius: np.ndarray  # [M]
    sphere_albedo: np.ndarray  # [M, 3]
    road_center: float
    road_half: float
    road_albedo: np.ndarray  # [3]
    sidewalk_albedo: np.ndarray  # [3]
    wave_vectors: np.ndarray  # [_NUM_WAVES, 3] (radians per metre)
    wave_phases: np.ndarray  # [_NUM_WAVES]
    sun: np.ndarray  # [3], unit, world coordinates, pointing towards the sun
    ambient: float
    exposure: float
    sky_horizon: np.ndarray  # [3]
    sky_zenith: np.ndarray  # [3]
    haze_distance: float


class View(NamedTuple):
    """One rendered view: image and per-pixel targets.

    Attributes:
      image: float32 [H, W, 3] in [0, 1].
      depth: float32 [H, W], metres along the optical axis, 0 on sky.
      semantic: int32 [H, W] class ids.
      normals: float32 [H, W, 3] unit normals in camera coordinates, 0 on sky.
    """

    image: np.ndarray
    depth: np.ndarray
    semantic: np.ndarray
    normals: np.ndarray


def _jitter(rng: np.random.Generator, base: tuple[float, float, float], amount: float):
    """A colour near ``base``: per-channel multiplicative jitter, clipped to [0, 1]."""
    colour = np.asarray(base) * rng.uniform(1.0 - amount, 1.0 + amount, size=3)
    return np.clip(colour, 0.02, 1.0)


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draws a random street scene (see the module docstring for its content)."""
    lo: list[list[float]] = []
    hi: list[list[float]] = []
    labels: list[int] = []
    albedos: list[np.ndarray] = []
    scales: list[float] = []

    def add_box(box_lo, box_hi, label: int, albedo: np.ndarray, scale: float) -> None:
        lo.append(list(box_lo))
        hi.append(list(box_hi))
        labels.append(label)
        albedos.append(albedo)
        scales.append(scale)

    road_center = rng.uniform(-1.5, 1.5)
    road_half = rng.uniform(3.0, 6.0)
    sidewalk = rng.uniform(1.5, 4.0)
    street_end = rng.uniform(40.0, 62.0)

    building_palette = (
        (0.62, 0.55, 0.48),
        (0.55, 0.55, 0.58),
        (0.70, 0.62, 0.50),
        (0.5, 0.4, 0.35),
    )
    # Buildings along both sides, at various setbacks, with occasional gaps.
    for side in (-1.0, 1.0):
        z = rng.uniform(-2.0, 4.0)
        while z < street_end:
            length = rng.uniform(6.0, 20.0)
            if rng.uniform() > 0.15:
                front = road_center + side * (road_half + sidewalk + rng.uniform(0.0, 8.0))
                back = front + side * rng.uniform(8.0, 20.0)
                add_box(
                    (min(front, back), 0.0, max(z, 0.5)),
                    (max(front, back), rng.uniform(4.0, 25.0), min(z + length, street_end + 10)),
                    BUILDING,
                    _jitter(rng, building_palette[rng.integers(len(building_palette))], 0.15),
                    rng.uniform(0.7, 1.5),
                )
            z += length + (rng.uniform(1.0, 8.0) if rng.uniform() < 0.3 else 0.0)
    # The row of buildings that closes the street (no gaps: it hides the horizon).
    x = -90.0
    while x < 90.0:
        width = rng.uniform(10.0, 25.0)
        depth0 = street_end + rng.uniform(0.0, 4.0)
        add_box(
            (x, 0.0, depth0),
            (x + width, rng.uniform(6.0, 30.0), depth0 + 10.0),
            BUILDING,
            _jitter(rng, building_palette[rng.integers(len(building_palette))], 0.15),
            rng.uniform(0.7, 1.5),
        )
        x += width
    # Vehicles, in lanes or parked, cars and a few trucks.
    vehicle_palette = (
        (0.8, 0.1, 0.1),
        (0.1, 0.2, 0.7),
        (0.85, 0.85, 0.85),
        (0.15, 0.15, 0.15),
        (0.9, 0.75, 0.1),
        (0.3, 0.5, 0.3),
    )
    for _ in range(rng.integers(2, 9)):
        truck = rng.uniform() < 0.15
        width = rng.uniform(2.2, 2.5) if truck else rng.uniform(1.6, 2.0)
        height = rng.uniform(2.8, 3.6) if truck else rng.uniform(1.3, 1.9)
        length = rng.uniform(6.0, 10.0) if truck else rng.uniform(3.5, 5.0)
        x_mid = road_center + rng.uniform(-road_half + width / 2, road_half - width / 2)
        # Skewed towards the camera, so that close-up disparities (up to ~20 % of
        # the width) occur.
        z_near = 1.8 + (street_end - 7.0) * rng.uniform() ** 1.5
        if abs(x_mid) < width / 2 + 1.2:
            z_near = max(z_near, 6.0)  # right ahead: do not fill the whole view
        add_box(
            (x_mid - width / 2, 0.0, z_near),
            (x_mid + width / 2, height, z_near + length),
            VEHICLE,
            _jitter(rng, vehicle_palette[rng.integers(len(vehicle_palette))], 0.1),
            rng.uniform(1.5, 3.0),
        )
    # Poles at the kerbs.
    for _ in range(rng.integers(2, 8)):
        side = rng.choice((-1.0, 1.0))
        x_mid = road_center + side * (road_half + rng.uniform(0.3, 1.2))
        thickness = rng.uniform(0.15, 0.35)
        z_near = rng.uniform(1.5, street_end)
        add_box(
            (x_mid - thickness / 2, 0.0, z_near),
            (x_mid + thickness / 2, rng.uniform(3.0, 9.0), z_near + thickness),
            POLE,
            _jitter(rng, (0.45, 0.45, 0.5), 0.2),
            rng.uniform(3.0, 6.0),
        )
    # Trees on the sidewalks: a trunk (box) and a crown (sphere).
    centers: list[list[float]] = []
    radii: list[float] = []
    crown_albedos: list[np.ndarray] = []
    for _ in range(rng.integers(0, 6)):
        side = rng.choice((-1.0, 1.0))
        x_mid = road_center + side * (road_half + rng.uniform(0.8, max(sidewalk, 1.0)))
        z_mid = rng.uniform(4.0, street_end)
        trunk = rng.uniform(2.0, 4.0)
        radius = rng.uniform(1.2, 3.0)
        add_box(
            (x_mid - 0.2, 0.0, z_mid - 0.2),
            (x_mid + 0.2, trunk + radius * 0.5, z_mid + 0.2),
            VEGETATION,
            _jitter(rng, (0.35, 0.25, 0.15), 0.2),
            rng.uniform(3.0, 6.0),
        )
        centers.append([x_mid, trunk + radius * 0.8, z_mid])
        radii.append(radius)
        crown_albedos.append(_jitter(rng, (0.2, 0.5, 0.15), 0.25))

    # Texture: random directions, log-uniform frequencies from 0.4 to 6 cycles per metre.
    directions = rng.normal(size=(_NUM_WAVES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = np.exp(rng.uniform(np.log(0.4), np.log(6.0), size=(_NUM_WAVES, 1)))
    elevation = rng.uniform(0.35, 1.2)
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    sun = np.array(
        [
            np.cos(elevation) * np.cos(azimuth),
            np.sin(elevation),
            np.cos(elevation) * np.sin(azimuth),
        ]
    )
    f32 = np.float32
    return Scene(
        box_lo=np.asarray(lo, f32),
        box_hi=np.asarray(hi, f32),
        box_label=np.asarray(labels, np.int32),
        box_albedo=np.asarray(albedos, f32),
        box_texture_scale=np.asarray(scales, f32),
        sphere_center=np.asarray(centers, f32).reshape(-1, 3),
        sphere_radius=np.asarray(radii, f32),
        sphere_albedo=np.asarray(crown_albedos, f32).reshape(-1, 3),
        road_center=float(road_center),
        road_half=float(road_half),
        road_albedo=_jitter(rng, (0.3, 0.3, 0.32), 0.15).astype(f32),
        sidewalk_albedo=_jitter(rng, (0.6, 0.58, 0.55), 0.1).astype(f32),
        wave_vectors=(2.0 * np.pi * frequencies * directions).astype(f32),
        wave_phases=rng.uniform(0.0, 2.0 * np.pi, size=_NUM_WAVES).astype(f32),
        sun=sun.astype(f32),
        ambient=float(rng.uniform(0.25, 0.5)),
        exposure=float(rng.uniform(0.8, 1.2)),
        sky_horizon=_jitter(rng, (0.78, 0.85, 0.95), 0.08).astype(f32),
        sky_zenith=_jitter(rng, (0.35, 0.55, 0.9), 0.15).astype(f32),
        haze_distance=float(rng.uniform(150.0, 400.0)),
    )


def _nonzero(values: np.ndarray) -> np.ndarray:
    """Replaces exact zeros (a ray parallel to a slab) by a tiny value of either sign."""
    return np.where(values == 0.0, np.float32(1e-12), values)


def _screen_windows(
    lo: np.ndarray, hi: np.ndarray, camera: Camera, camera_x: float
) -> list[tuple[int, int, int, int, int]]:
    """``(i, r0, r1, c0, c1)``: the image rows and columns that can see box ``i``.

    Boxes are ``[lo[i], hi[i]]``; boxes outside the image are left out.

    The projection of a box lying in front of the camera is inside the bounding
    rectangle of its 8 projected corners, so ray casting can skip every other
    pixel; a box reaching behind the camera gets the whole image. One pixel of
    margin absorbs rounding.
    """
    H, W, f = camera.height, camera.width, camera.focal
    corners_x = np.stack([lo[:, 0], hi[:, 0]], axis=1) - camera_x  # [N, 2]
    corners_y = np.stack([lo[:, 1], hi[:, 1]], axis=1) - camera.camera_height
    corners_z = np.maximum(np.stack([lo[:, 2], hi[:, 2]], axis=1), 1e-3)
    u = f * corners_x[:, :, None] / corners_z[:, None, :] + W / 2  # [N, 2, 2]
    v = -f * corners_y[:, :, None] / corners_z[:, None, :] + H / 2
    c0 = np.clip(np.floor(u.min(axis=(1, 2)) - 0.5) - 1, 0, W).astype(int)
    c1 = np.clip(np.ceil(u.max(axis=(1, 2)) - 0.5) + 2, 0, W).astype(int)
    r0 = np.clip(np.floor(v.min(axis=(1, 2)) - 0.5) - 1, 0, H).astype(int)
    r1 = np.clip(np.ceil(v.max(axis=(1, 2)) - 0.5) + 2, 0, H).astype(int)
    behind = lo[:, 2] <= 1e-3
    c0[behind], c1[behind], r0[behind], r1[behind] = 0, W, 0, H
    return [
        (i, a, b, c, d)
        for i, (a, b, c, d) in enumerate(
            zip(r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist(), strict=True)
        )
        if b > a and d > c
    ]


def render_view(scene: Scene, camera: Camera, camera_x: float = 0.0) -> View:
    """Ray-casts one view of ``scene`` from the camera centre ``(camera_x, h, 0)``.

    Args:
      scene: from :func:`sample_scene`.
      camera: intrinsics (only ``camera_height`` of the rig is used for the centre).
      camera_x: X of the camera centre; 0 for the left view, ``baseline`` for the right.

    Returns:
      the rendered :class:`View`.
    """
    H, W, f = camera.height, camera.width, np.float32(camera.focal)
    f32 = np.float32
    ox, oy = f32(camera_x), f32(camera.camera_height)
    dx = ((np.arange(W, dtype=f32) + 0.5) - W / 2) / f  # [W], per column
    dy = -((np.arange(H, dtype=f32) + 0.5) - H / 2) / f  # [H], per row (world Y is up)
    dx_safe, dy_safe = _nonzero(dx), _nonzero(dy)
    inf = f32(np.inf)

    # Z-buffer over all objects; object ids: 0 = ground, 1..N boxes, N+1.. spheres.
    # Ground plane Y = 0: hit where the ray goes down.
    depth = np.where(dy < 0, -oy / dy_safe, inf)[:, None] * np.ones((1, W), f32)
    winner = np.zeros((H, W), np.int64)

    # Boxes: slab test. Since the ray's z component is 1, the Z slab is [lo_z, hi_z]
    # itself, the X slab depends on the column only and the Y slab on the row only.
    tx1 = (scene.box_lo[:, 0:1] - ox) / dx_safe  # [N, W]
    tx2 = (scene.box_hi[:, 0:1] - ox) / dx_safe
    ty1 = (scene.box_lo[:, 1:2] - oy) / dy_safe  # [N, H]
    ty2 = (scene.box_hi[:, 1:2] - oy) / dy_safe
    tx_near, tx_far = np.minimum(tx1, tx2), np.maximum(tx1, tx2)
    ty_near, ty_far = np.minimum(ty1, ty2), np.maximum(ty1, ty2)
    num_boxes = len(scene.box_label)
    windows = _screen_windows(scene.box_lo, scene.box_hi, camera, ox)
    for i, r0, r1, c0, c1 in windows:
        t_near = np.maximum(
            np.maximum(tx_near[i, None, c0:c1], ty_near[i, r0:r1, None]), scene.box_lo[i, 2]
        )
        t_far = np.minimum(
            np.minimum(tx_far[i, None, c0:c1], ty_far[i, r0:r1, None]), scene.box_hi[i, 2]
        )
        closer = (t_near <= t_far) & (t_near > 0) & (t_near < depth[r0:r1, c0:c1])
        depth[r0:r1, c0:c1] = np.where(closer, t_near, depth[r0:r1, c0:c1])
        winner[r0:r1, c0:c1] = np.where(closer, i + 1, winner[r0:r1, c0:c1])

    # Spheres: |o + t d - c|² = r², nearest root.
    num_spheres = len(scene.sphere_radius)
    radius = scene.sphere_radius[:, None]
    windows = _screen_windows(
        scene.sphere_center - radius, scene.sphere_center + radius, camera, ox
    )
    for i, r0, r1, c0, c1 in windows:
        wx, wy = dx[None, c0:c1], dy[r0:r1, None]
        oc = np.array([ox, oy, 0.0], f32) - scene.sphere_center[i]
        a = wx * wx + wy * wy + 1.0
        b = 2.0 * (wx * oc[0] + wy * oc[1] + oc[2])
        c = oc @ oc - scene.sphere_radius[i] ** 2
        disc = b * b - 4.0 * a * c
        root = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
        closer = (disc >= 0) & (root > 0) & (root < depth[r0:r1, c0:c1])
        depth[r0:r1, c0:c1] = np.where(closer, root, depth[r0:r1, c0:c1])
        winner[r0:r1, c0:c1] = np.where(closer, num_boxes + 1 + i, winner[r0:r1, c0:c1])

    hit = np.isfinite(depth)
    depth = np.where(hit, depth, 0.0).astype(f32)
    is_ground = hit & (winner == 0)
    is_box = hit & (winner >= 1) & (winner <= num_boxes)
    is_sphere = hit & (winner > num_boxes)
    box_index = np.clip(winner - 1, 0, max(num_boxes - 1, 0))
    sphere_index = np.clip(winner - 1 - num_boxes, 0, max(num_spheres - 1, 0))

    # Hit points, world coordinates.
    X = ox + depth * dx[None, :]
    Y = oy + depth * dy[:, None]
    Z = depth
    point = np.stack([X, Y, Z], axis=-1)

    # Normals (world), labels and albedo per surface kind.
    normal = np.zeros((H, W, 3), f32)
    normal[is_ground] = (0.0, 1.0, 0.0)
    on_road = np.abs(X - scene.road_center) < scene.road_half
    semantic = np.full((H, W), SKY, np.int32)
    semantic[is_ground] = np.where(on_road, ROAD, SIDEWALK)[is_ground]
    albedo = np.zeros((H, W, 3), f32)
    albedo[is_ground & on_road] = scene.road_albedo
    albedo[is_ground & ~on_road] = scene.sidewalk_albedo
    texture_scale = np.ones((H, W), f32)

    if num_boxes:
        rows, cols = np.nonzero(is_box)
        index = box_index[rows, cols]
        t = depth[rows, cols]
        # The entering face is the slab whose near plane gave t_near.
        from_x = t == tx_near[index, cols]
        from_y = ~from_x & (t == ty_near[index, rows])
        from_z = ~from_x & ~from_y
        face = np.zeros((len(rows), 3), f32)
        face[from_x, 0] = -np.sign(dx[cols[from_x]])
        face[from_y, 1] = -np.sign(dy[rows[from_y]])
        face[from_z, 2] = -1.0
        normal[rows, cols] = face
        semantic[rows, cols] = scene.box_label[index]
        albedo[rows, cols] = scene.box_albedo[index]
        texture_scale[rows, cols] = scene.box_texture_scale[index]
    if num_spheres:
        rows, cols = np.nonzero(is_sphere)
        index = sphere_index[rows, cols]
        radial = point[rows, cols] - scene.sphere_center[index]
        # Normalized explicitly: dividing by the radius leaves float32 hit-point error.
        normal[rows, cols] = radial / np.linalg.norm(radial, axis=-1, keepdims=True)
        semantic[rows, cols] = VEGETATION
        albedo[rows, cols] = scene.sphere_albedo[index]
        texture_scale[rows, cols] = 2.5

    # Procedural texture, a function of the 3-D point: sum of sinusoids in [-1, 1].
    phase = (point * texture_scale[..., None]) @ scene.wave_vectors.T + scene.wave_phases
    pattern = np.mean(np.sin(phase), axis=-1) * np.sqrt(2.0 * _NUM_WAVES / 4.0)
    texture = np.clip(0.75 + 0.35 * pattern, 0.3, 1.2)
    # Lane markings (dashed centre line, solid edges) and building windows.
    lane = is_ground & (
        ((np.abs(X - scene.road_center) < 0.12) & (np.mod(Z, 6.0) < 3.0))
        | (np.abs(np.abs(X - scene.road_center) - (scene.road_half - 0.25)) < 0.1)
    )
    # Windows: a grid on the vertical faces of buildings, in facade coordinates.
    rows, cols = np.nonzero((semantic == BUILDING) & (np.abs(normal[..., 1]) < 0.5))
    facade_u = np.where(np.abs(normal[rows, cols, 0]) > 0.5, Z[rows, cols], X[rows, cols])
    facade_u, facade_v = np.mod(facade_u, 3.0), Y[rows, cols]
    in_window = (
        (facade_u > 0.9)
        & (facade_u < 2.1)
        & (np.mod(facade_v, 3.2) > 1.0)
        & (np.mod(facade_v, 3.2) < 2.4)
        & (facade_v > 1.5)
    )
    windows = np.zeros((H, W), bool)
    windows[rows[in_window], cols[in_window]] = True
    colour = albedo * texture[..., None]
    colour[lane] = 0.9 * texture[lane, None]
    colour[windows] = np.array([0.12, 0.16, 0.22], f32) * (0.6 + 0.8 * texture[windows, None])

    # Lambertian shading with ambient light, then haze towards the horizon colour.
    lambert = np.maximum(normal @ scene.sun, 0.0)
    shade = scene.ambient + (1.0 - scene.ambient) * lambert
    haze = np.exp(-depth / scene.haze_distance)[..., None]
    colour = colour * shade[..., None] * haze + scene.sky_horizon * (1.0 - haze)
    # Sky: a gradient with the elevation of the ray (the same in both views).
    elevation = np.clip(dy / np.sqrt(1.0 + dy * dy), 0.0, 1.0)[:, None, None] ** 0.6
    sky = scene.sky_horizon * (1.0 - elevation) + scene.sky_zenith * elevation
    colour = np.where(hit[..., None], colour, sky)
    image = np.clip(colour * scene.exposure, 0.0, 1.0).astype(f32)

    # Camera coordinates are (x right, y down, z forward): flip the world's Y.
    normals_camera = normal * np.array([1.0, -1.0, 1.0], f32)
    return View(image=image, depth=depth, semantic=semantic, normals=normals_camera)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255.0).astype(np.uint8)


def generate_example(
    seed: int, split: str, index: int, height: int, width: int
) -> dict[str, np.ndarray]:
    """Renders example ``index`` of ``split``: a pure function of its arguments.

    Returns:
      a contract dict (see the module docstring) of numpy arrays.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"synthetic: unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    scene = sample_scene(rng)
    camera = camera_for(height, width)
    left = render_view(scene, camera, 0.0)
    right = render_view(scene, camera, camera.baseline)
    return {
        "left": _to_uint8(left.image),
        "right": _to_uint8(right.image),
        "depth": left.depth,
        "semantic": left.semantic,
        "normals": left.normals,
        "depth_right": right.depth,
        "semantic_right": right.semantic,
        "normals_right": right.normals,
        "focal": np.float32(camera.focal),
        "baseline": np.float32(camera.baseline),
        "index": np.int64(index),
    }


# --------------------------------------------------------------------------- TFDS


@dataclasses.dataclass(eq=False)
class SyntheticStereoConfig(tfds.core.BuilderConfig):
    """Resolution, split sizes and seed of a synthetic stereo dataset."""

    height: int = 64
    width: int = 128
    num_train: int = 2000
    num_validation: int = 200
    num_test: int = 200
    seed: int = 0


def _config_name(
    height: int, width: int, num_train: int, num_validation: int, num_test: int, seed: int
) -> str:
    return f"{height}x{width}_n{num_train}-{num_validation}-{num_test}_s{seed}"


def _make_config(
    height: int, width: int, num_train: int, num_validation: int, num_test: int, seed: int
) -> SyntheticStereoConfig:
    return SyntheticStereoConfig(
        name=_config_name(height, width, num_train, num_validation, num_test, seed),
        description=(
            f"{height}×{width} stereo pairs; {num_train}/{num_validation}/{num_test} "
            f"train/validation/test examples; seed {seed}."
        ),
        height=height,
        width=width,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
    )


class SyntheticStereo(tfds.core.GeneratorBasedBuilder):
    """Offline synthetic stereo driving scenes (see :mod:`experiments.data.synthetic`).

    Nothing is downloaded: ``download_and_prepare()`` renders the examples,
    and says so (in place of TFDS's "Downloading and preparing dataset").
    """

    # TFDS finds a builder's metadata and code through importlib.resources on the
    # top-level package, which fails when `experiments` is imported as a namespace
    # package (e.g. through an editable install, from outside the repository):
    # point it at this file directly.
    pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(os.path.abspath(__file__))

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}  # noqa: RUF012 (TFDS's class attribute)
    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS's class attribute)
        _make_config(64, 128, 2000, 200, 200, 0),
        _make_config(128, 256, 2000, 200, 200, 0),
        _make_config(256, 512, 2000, 200, 200, 0),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        H, W = config.height, config.width
        # Small images are stored as raw bytes: their fine textures barely compress
        # and PNG encoding would take longer than rendering them. Larger ones are
        # smoother per pixel and PNG halves the disk use. zlib for the targets.
        zlib = tfds.features.Encoding.ZLIB
        if H * W <= _RAW_IMAGE_MAX_PIXELS:
            image = tfds.features.Tensor(
                shape=(H, W, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
            )
        else:
            image = tfds.features.Image(shape=(H, W, 3), dtype=np.uint8, encoding_format="png")
        features = {
            "left": image,
            "right": image,
            "focal": tfds.features.Scalar(np.float32),
            "baseline": tfds.features.Scalar(np.float32),
            "index": tfds.features.Scalar(np.int64),
        }
        for suffix in ("", "_right"):
            features["depth" + suffix] = tfds.features.Tensor(
                shape=(H, W), dtype=np.float32, encoding=zlib
            )
            # Class ids fit a byte; stored as uint8 and widened to int32 on reading.
            features["semantic" + suffix] = tfds.features.Tensor(
                shape=(H, W), dtype=np.uint8, encoding=zlib
            )
            # float16 halves the size and the compression time (unit length to ~1e-3).
            features["normals" + suffix] = tfds.features.Tensor(
                shape=(H, W, 3), dtype=np.float16, encoding=zlib
            )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            description=__doc__.split("\n\n")[0],
            supervised_keys=None,
            # Keep the examples in index order (the training pipeline shuffles).
            disable_shuffling=True,
        )

    # TFDS's announcements speak of downloading; these say what happens here.
    def _log_download_bytes(self) -> None:
        config = self.builder_config
        count = config.num_train + config.num_validation + config.num_test
        self._generation_start = time.perf_counter()
        print(
            f"Generating the synthetic dataset ({count} scenes, {config.height}×{config.width}) "
            f"into {self.data_dir} ...",
            flush=True,
        )

    def _log_download_done(self) -> None:
        seconds = time.perf_counter() - getattr(self, "_generation_start", time.perf_counter())
        print(f"Synthetic dataset ready in {seconds:.0f} s: {self.data_dir}", flush=True)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "validation": self._generate_examples("validation", config.num_validation),
            "test": self._generate_examples("test", config.num_test),
        }

    def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        for index in range(count):
            example = generate_example(config.seed, split, index, config.height, config.width)
            for suffix in ("", "_right"):
                example["semantic" + suffix] = example["semantic" + suffix].astype(np.uint8)
                example["normals" + suffix] = example["normals" + suffix].astype(np.float16)
            yield index, example


def _to_contract_dtypes(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Widens the stored uint8 labels and float16 normals to the contract's dtypes."""
    example = dict(example)
    for suffix in ("", "_right"):
        example["semantic" + suffix] = tf.cast(example["semantic" + suffix], tf.int32)
        example["normals" + suffix] = tf.cast(example["normals" + suffix], tf.float32)
    return example


def load(
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    height: int = 64,
    width: int = 128,
    num_train: int = 2000,
    num_validation: int = 200,
    num_test: int = 200,
    seed: int = 0,
) -> tf.data.Dataset:
    """The synthetic stereo dataset; renders and stores it in ``data_dir`` the first time.

    Args:
      split: ``"train"``, ``"validation"`` (or ``"val"``) or ``"test"``.
      data_dir: TFDS data directory; the examples go to
        ``<data_dir>/synthetic_stereo/<config>/1.0.0``. ``None`` uses TFDS's
        default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). In a
        multi-process JAX run, process 0 renders and the others wait for it
        (:func:`experiments.data.preparation.prepare_once`).
      height, width: resolution (even numbers, e.g. 64×128 … 256×512).
      num_train, num_validation, num_test: split sizes. Example ``i`` of a split
        does not depend on the sizes, so a bigger dataset extends a smaller one.
      seed: scene seed.

    Returns:
      a ``tf.data.Dataset`` of contract dicts in index order.
    """
    split = {"val": "validation"}.get(split, split)
    if split not in SPLIT_IDS:
        raise ValueError(f"synthetic: unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < 2 or value % 2:
            raise ValueError(f"synthetic: {name} must be an even integer ≥ 2, got {value!r}")
    for name, value in (
        ("num_train", num_train),
        ("num_validation", num_validation),
        ("num_test", num_test),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"synthetic: {name} must be a positive integer, got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    name = _config_name(height, width, num_train, num_validation, num_test, seed)
    config: str | SyntheticStereoConfig
    if name in SyntheticStereo.builder_configs:
        config = name
    else:
        config = _make_config(height, width, num_train, num_validation, num_test, seed)
    if data_dir is None:
        data_dir = tfds.core.constants.DATA_DIR
    data_dir = os.path.expanduser(os.fspath(data_dir))

    def generate(builder: SyntheticStereo) -> None:
        ensure_importlib_resources()
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False,
                compute_stats=tfds.download.ComputeStatsMode.SKIP,
            )
        )

    # In a multi-process run, process 0 renders and the others wait to read.
    builder = prepare_once(lambda: SyntheticStereo(config=config, data_dir=data_dir), generate)
    # No TFDS auto-cache: it would hold every decoded feature of both views in
    # memory (about 370 kB per 64×128 example); the input pipeline can cache just
    # the features an experiment uses (make_train_dataset(keys=..., cache=True)).
    dataset = builder.as_dataset(
        split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False)
    )
    return dataset.map(_to_contract_dtypes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def preview(example: dict[str, np.ndarray]) -> np.ndarray:
    """A uint8 [H, 5W, 3] strip: left, right, inverse depth, classes, normals."""
    depth = example["depth"]
    inverse = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-6), 0.0)
    inverse = np.round(255 * inverse / max(inverse.max(), 1e-6)).astype(np.uint8)
    palette = np.array(
        [
            [70, 130, 180],
            [128, 64, 128],
            [244, 35, 232],
            [70, 70, 70],
            [0, 0, 142],
            [153, 153, 153],
            [107, 142, 35],
        ],
        np.uint8,
    )
    classes = palette[np.minimum(example["semantic"], NUM_CLASSES - 1)]
    normals = np.round((example["normals"] + 1.0) * 127.5).astype(np.uint8)
    gray = np.repeat(inverse[..., None], 3, axis=-1)
    return np.concatenate([example["left"], example["right"], gray, classes, normals], axis=1)


def main(argv: list[str] | None = None) -> None:
    """Builds a synthetic dataset into a TFDS data directory (and writes a preview)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data_dir", default=None, help="TFDS data directory")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_validation", type=int, default=200)
    parser.add_argument("--num_test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", default=None, help="PNG path for a 4-example preview")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    dataset = load(
        "train",
        args.data_dir,
        height=args.height,
        width=args.width,
        num_train=args.num_train,
        num_validation=args.num_validation,
        num_test=args.num_test,
        seed=args.seed,
    )
    print(f"ready in {time.perf_counter() - start:.1f} s")
    if args.preview:
        from PIL import Image

        rows = [preview(example) for example in dataset.take(4).as_numpy_iterator()]
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.preview)
        print(f"preview written to {args.preview}")


if __name__ == "__main__":
    main()

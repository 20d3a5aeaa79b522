"""Synthetic ETH3D scenes: an analytic facade ray-cast into the exact ETH3D on-disk layout.

Real ETH3D cannot be downloaded in CI, so tests, the demo and benchmarks use scenes generated here.
``generate_scene`` writes, as if the per-scene archives dslr_undistorted, dslr_jpg (calibration only),
dslr_depth and dslr_occlusion (masks only) had been extracted::

    <root>/<scene>/images/dslr_images_undistorted/DSC_xxxx.JPG    PINHOLE renders (JPEG q95)
    <root>/<scene>/dslr_calibration_undistorted/{cameras,images,points3D}.txt
    <root>/<scene>/dslr_calibration_jpg/{cameras,images,points3D}.txt   THIN_PRISM_FISHEYE
    <root>/<scene>/ground_truth_depth/dslr_images/DSC_xxxx.JPG    raw float32 LE, distorted frame
    <root>/<scene>/masks_for_images/dslr_images/DSC_xxxx.png      uint8 0/1/2 (not every image)
    <root>/<scene>/synth_truth.json                               generator parameters (not ETH3D)

The geometry (metres) lives in a *facade frame*: x along the wall, y into the building (the wall's
front face is y = 0, cameras stand at y < 0), z up. The world ("laser scan") frame is a seeded rigid
transform of it. ``SceneGeometry`` gives the analytic truth (exact z-depth, renders, ray hits) for any
camera, so engine tests can compare against it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from numba import njit, prange
from PIL import Image as PILImage

from dataengine.camera import (
    PINHOLE,
    THIN_PRISM_FISHEYE,
    Camera,
    format_float,
    qvec_to_rotmat,
    rotmat_to_qvec,
    thin_prism_distort_normalized,
)

TRUTH_FILE = "synth_truth.json"
TRUTH_FORMAT = "dataengine.synth/1"

# Full-resolution ETH3D DSLR (Nikon D3X) and a real THIN_PRISM_FISHEYE calibration (courtyard).
FULL_WIDTH, FULL_HEIGHT = 6048, 4032
REFERENCE_THIN_PRISM = np.array(
    [3411.42, 3410.02, 3041.29, 2014.07, 0.21047, 0.21102, -5.36231e-06, 0.00051541,
     -0.158023, 0.406856, -8.46499e-05, 0.000861313]
)

# Surface materials (also the ``materials`` codes SceneGeometry returns).
SKY, GROUND, WALL, REVEAL, GLASS, DOOR, CONCRETE, METAL, STONE, ROOF = range(10)
MATERIAL_NAMES = ("sky", "ground", "wall", "reveal", "glass", "door", "concrete", "metal", "stone",
                  "roof")

# Mask values of ETH3D's dataset pipeline (src/opt/image.h MaskType).
MASK_NONE, MASK_OBS, MASK_EVAL_OBS = 0, 1, 2

_CAMERAS_HEADER = (
    "# Camera list with one line of data per camera:\n"
    "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
    "# Number of cameras: {n}\n"
)
_IMAGES_HEADER = (
    "# Image list with two lines of data per image:\n"
    "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
    "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
    "# Number of images: {n}, mean observations per image: {mean}\n"
)
_POINTS_HEADER = (
    "# 3D point list with one line of data per point:\n"
    "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
    "# Number of points: {n}, mean track length: {mean}\n"
)


# ==================================================================================================
# Ray casting kernels (numba). Geometry arrays, all in the facade frame:
#   boxes (nb,6) [x0,y0,z0,x1,y1,z1] solid boxes in front of the wall, box_mat (nb,)
#   building (6,) the building block; its front face y = 0 has recessed openings
#   openings (no,5) [x0,x1,z0,z1,depth] window/door recesses cut into the front face, opening_mat (no,)
#   ground (4,) [x0,x1,y0,y1] extent of the ground plane z = 0
#   light (8,) sun direction (3, unit, towards the sun), ambient, diffuse, texture min wavelength,
#         ground-floor height, texture seed
# ==================================================================================================
_T_EPS = 1e-9


@njit(cache=True, inline="always")
def _slab_axis(o, d, lo, hi, a, tnear, tfar, axis, sign):
    """One axis of the slab test; returns the updated (tnear, tfar, axis, sign); tnear = inf on miss."""
    if d == 0.0:
        if o < lo or o > hi:
            return np.inf, tfar, axis, sign
        return tnear, tfar, axis, sign
    ta = (lo - o) / d
    tb = (hi - o) / d
    if ta < tb:
        if ta > tnear:
            tnear, axis, sign = ta, a, -1.0
        if tb < tfar:
            tfar = tb
    else:
        if tb > tnear:
            tnear, axis, sign = tb, a, 1.0
        if ta < tfar:
            tfar = ta
    return tnear, tfar, axis, sign


@njit(cache=True)
def _slab_enter(ox, oy, oz, dx, dy, dz, x0, y0, z0, x1, y1, z1):
    """Entry parameter, entry axis and outward-normal sign of a ray into a box (inf if missed)."""
    tnear, tfar, axis, sign = _slab_axis(ox, dx, x0, x1, 0, -np.inf, np.inf, -1, 0.0)
    tnear, tfar, axis, sign = _slab_axis(oy, dy, y0, y1, 1, tnear, tfar, axis, sign)
    tnear, tfar, axis, sign = _slab_axis(oz, dz, z0, z1, 2, tnear, tfar, axis, sign)
    if tnear > tfar or tnear <= _T_EPS:
        return np.inf, -1, 0.0
    return tnear, axis, sign


@njit(cache=True)
def _recess_exit(ox, oy, oz, dx, dy, dz, opening):
    """First wall of an opening's recess hit by a ray that is inside the recess (axis, sign, t)."""
    x0, x1, z0, z1, depth = opening[0], opening[1], opening[2], opening[3], opening[4]
    t_best, axis, sign = np.inf, -1, 0.0
    if dy > 0.0:
        t_best, axis, sign = (depth - oy) / dy, 1, -1.0
    if dx > 0.0:
        tx = (x1 - ox) / dx
        if tx < t_best:
            t_best, axis, sign = tx, 0, -1.0
    elif dx < 0.0:
        tx = (x0 - ox) / dx
        if tx < t_best:
            t_best, axis, sign = tx, 0, 1.0
    if dz > 0.0:
        tz = (z1 - oz) / dz
        if tz < t_best:
            t_best, axis, sign = tz, 2, -1.0
    elif dz < 0.0:
        tz = (z0 - oz) / dz
        if tz < t_best:
            t_best, axis, sign = tz, 2, 1.0
    return t_best, axis, sign


@njit(cache=True)
def _nearest_hit(ox, oy, oz, dx, dy, dz, boxes, box_mat, building, openings, opening_mat, ground):
    """Nearest surface along o + t d (t > 0): (t, material, normal axis, normal sign, primitive)."""
    t_best, mat, axis, sign, prim = np.inf, SKY, -1, 0.0, -1
    # Ground plane z = 0, seen from above.
    if dz < 0.0 and oz > 0.0:
        tg = -oz / dz
        gx = ox + tg * dx
        gy = oy + tg * dy
        if ground[0] <= gx <= ground[1] and ground[2] <= gy <= ground[3]:
            t_best, mat, axis, sign, prim = tg, GROUND, 2, 1.0, -1
    # Building block, with recessed openings in its front face.
    tb, ab, sb = _slab_enter(ox, oy, oz, dx, dy, dz, building[0], building[1], building[2],
                             building[3], building[4], building[5])
    if tb < t_best:
        if ab == 1 and sb < 0.0:
            hx = ox + tb * dx
            hz = oz + tb * dz
            k_open = -1
            for k in range(openings.shape[0]):
                if openings[k, 0] < hx < openings[k, 1] and openings[k, 2] < hz < openings[k, 3]:
                    k_open = k
                    break
            if k_open < 0:
                t_best, mat, axis, sign, prim = tb, WALL, 1, -1.0, -1
            else:
                tr, ar, sr = _recess_exit(ox, oy, oz, dx, dy, dz, openings[k_open])
                if tr < t_best:
                    mat = opening_mat[k_open] if ar == 1 else REVEAL
                    t_best, axis, sign, prim = tr, ar, sr, k_open
        elif ab == 2 and sb > 0.0:
            t_best, mat, axis, sign, prim = tb, ROOF, 2, 1.0, -1
        else:
            t_best, mat, axis, sign, prim = tb, WALL, ab, sb, -1
    # Free-standing and protruding boxes (balcony, cornice, plinth, lamp post, ...).
    for k in range(boxes.shape[0]):
        tk, ak, sk = _slab_enter(ox, oy, oz, dx, dy, dz, boxes[k, 0], boxes[k, 1], boxes[k, 2],
                                 boxes[k, 3], boxes[k, 4], boxes[k, 5])
        if tk < t_best:
            t_best, mat, axis, sign, prim = tk, box_mat[k], ak, sk, k
    return t_best, mat, axis, sign, prim


@njit(cache=True)
def _in_sunlight(px, py, pz, mat, prim, boxes, box_mat, building, openings, opening_mat, ground,
                 light):
    """Shadow ray towards the sun from a surface point (already offset along its normal)."""
    sx, sy, sz = light[0], light[1], light[2]
    if mat == GLASS or mat == DOOR or mat == REVEAL:
        # Inside a recess: the sun must leave through the opening before meeting a reveal.
        if sy >= 0.0:
            return False
        op = openings[prim]
        t_front = -py / sy
        tr, ar, sr = _recess_exit(px, py, pz, sx, sy, sz, op)
        if ar == 0 or ar == 2:
            if tr < t_front:
                return False
    t, m, a, s, k = _nearest_hit(px, py, pz, sx, sy, sz, boxes, box_mat, building, openings,
                                 opening_mat, ground)
    return not np.isfinite(t)


@njit(cache=True)
def _hash01(ix, iy, salt):
    h = (ix * 0x27D4EB2D) ^ (iy * 0x165667B1) ^ (salt * 0x9E3779B1)
    h &= 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    h ^= h >> 15
    return h / 4294967295.0


@njit(cache=True)
def _value_noise(x, y, salt):
    fx = math.floor(x)
    fy = math.floor(y)
    ix = np.int64(fx)
    iy = np.int64(fy)
    tx = x - fx
    ty = y - fy
    sx = tx * tx * (3.0 - 2.0 * tx)
    sy = ty * ty * (3.0 - 2.0 * ty)
    a = _hash01(ix, iy, salt)
    b = _hash01(ix + 1, iy, salt)
    c = _hash01(ix, iy + 1, salt)
    d = _hash01(ix + 1, iy + 1, salt)
    return (a + (b - a) * sx) + ((c + (d - c) * sx) - (a + (b - a) * sx)) * sy


@njit(cache=True)
def _fbm(x, y, wl_max, wl_min, gain, salt):
    """Zero-mean fractal noise, octaves from wl_max down to wl_min (faded out below wl_min)."""
    total = 0.0
    amp = 1.0
    wl = wl_max
    octave = 0
    while wl > 0.5 * wl_min and octave < 24:
        fade = min(1.0, (wl - 0.5 * wl_min) / (0.5 * wl_min))
        total += amp * fade * (_value_noise(x / wl + 17.31 * octave, y / wl + 31.77 * octave,
                                            salt + octave) - 0.5)
        amp *= gain
        wl *= 0.5
        octave += 1
    return total


@njit(cache=True)
def _pulse_integral(x, period, width):
    cell = math.floor(x / period)
    return cell * width + min(x - cell * period, width)


@njit(cache=True)
def _filtered_lines(x, period, width, filter_width):
    """Box-filtered coverage of lines [k*period, k*period + width): band-limited joints."""
    w = max(filter_width, 1e-9)
    return (_pulse_integral(x + 0.5 * w, period, width) - _pulse_integral(x - 0.5 * w, period, width)) / w


@njit(cache=True)
def _tiles(s, u, tile_w, tile_h, joint, filter_width, salt):
    """Running-bond tiles: (joint coverage in [0,1], per-tile random value in [0,1])."""
    row = math.floor(u / tile_h)
    shifted = s + 0.5 * tile_w * (row % 2)
    j_h = _filtered_lines(u, tile_h, joint, filter_width)
    j_v = _filtered_lines(shifted, tile_w, joint, filter_width)
    coverage = 1.0 - (1.0 - j_h) * (1.0 - j_v)
    tile_value = _hash01(np.int64(math.floor(shifted / tile_w)), np.int64(row), salt)
    return coverage, tile_value


@njit(cache=True)
def _albedo(px, py, pz, axis, mat, prim, openings, light):
    """Surface colour (RGB in [0,1]) as a function of world position only (multi-view consistent)."""
    wl = light[5]
    ground_floor = light[6]
    seed = np.int64(light[7])
    if axis == 0:
        s, u = py, pz
    elif axis == 1:
        s, u = px, pz
    else:
        s, u = px, py
    fine = _fbm(s, u, 0.4, wl, 0.85, seed + 100 * mat)
    if mat == GROUND:
        cov, tv = _tiles(s, u, 0.30, 0.15, 0.012, wl, seed + 1)
        base = 0.36 + 0.12 * tv + 0.10 * _fbm(s, u, 6.0, max(wl, 0.4), 0.5, seed + 2)
        r, g, b = base * 1.05, base, base * 0.92
        r, g, b = r * (1 - cov) + 0.22 * cov, g * (1 - cov) + 0.21 * cov, b * (1 - cov) + 0.19 * cov
    elif mat == WALL and pz < ground_floor:
        cov, tv = _tiles(s, u, 0.90, 0.45, 0.015, wl, seed + 3)
        base = 0.62 + 0.10 * tv
        r, g, b = base * 1.06, base, base * 0.86
        r, g, b = r * (1 - cov) + 0.45 * cov, g * (1 - cov) + 0.43 * cov, b * (1 - cov) + 0.38 * cov
    elif mat == WALL:
        stain = _fbm(s, u, 4.0, max(wl, 0.25), 0.55, seed + 4)
        band = _filtered_lines(u - ground_floor, 3.2, 0.12, wl)  # string course at floor levels
        r = 0.80 + 0.18 * stain
        g = 0.66 + 0.16 * stain
        b = 0.48 + 0.12 * stain
        r, g, b = r * (1 - band) + 0.86 * band, g * (1 - band) + 0.83 * band, b * (1 - band) + 0.76 * band
    elif mat == GLASS:
        op = openings[prim]
        frame = 0.07
        lu = px - op[0]
        lv = pz - op[2]
        w_open = op[1] - op[0]
        h_open = op[3] - op[2]
        edge = max(_filtered_lines(lu + frame, w_open, 2 * frame, wl),
                   _filtered_lines(lv + frame, h_open, 2 * frame, wl))
        mullion = max(_filtered_lines(lu - 0.5 * w_open + 0.03, 1e6, 0.06, wl),
                      _filtered_lines(lv - 0.62 * h_open + 0.03, 1e6, 0.06, wl))
        cov = max(edge, mullion)
        refl = _fbm(px, pz, 3.0, max(wl, 0.1), 0.6, seed + 5)
        r, g, b = 0.14 + 0.25 * refl, 0.19 + 0.28 * refl, 0.25 + 0.30 * refl
        r, g, b = r * (1 - cov) + 0.86 * cov, g * (1 - cov) + 0.86 * cov, b * (1 - cov) + 0.83 * cov
    elif mat == DOOR:
        cov = _filtered_lines(px, 0.12, 0.008, wl)
        grain = _fbm(px * 20.0, pz, 0.6, wl, 0.6, seed + 6)
        r, g, b = 0.38 + 0.2 * grain, 0.23 + 0.12 * grain, 0.12 + 0.06 * grain
        r, g, b = r * (1 - cov) + 0.12 * cov, g * (1 - cov) + 0.08 * cov, b * (1 - cov) + 0.05 * cov
    elif mat == CONCRETE:
        r, g, b = 0.62, 0.62, 0.60
    elif mat == METAL:
        r, g, b = 0.16, 0.24, 0.18
    elif mat == ROOF:
        cov, tv = _tiles(s, u, 0.25, 0.20, 0.01, wl, seed + 7)
        base = 0.32 + 0.08 * tv
        r, g, b = base * (1 - cov) + 0.2 * cov, base * 0.6 * (1 - cov) + 0.15 * cov, base * 0.5
    else:  # REVEAL, STONE
        r, g, b = 0.76, 0.73, 0.66
    m = 1.0 + 0.5 * fine
    return r * m, g * m, b * m


@njit(cache=True)
def _shade(px, py, pz, axis, sign, mat, prim, dx, dy, dz, boxes, box_mat, building, openings,
           opening_mat, ground, light):
    """Lambertian colour (RGB in [0,1]) under sun + sky light with cast shadows; sky if no hit."""
    if mat == SKY:
        norm = math.sqrt(dx * dx + dy * dy + dz * dz)
        e = min(1.0, max(0.0, dz / norm))
        return 0.86 - 0.40 * e, 0.89 - 0.28 * e, 0.93 - 0.07 * e
    r, g, b = _albedo(px, py, pz, axis, mat, prim, openings, light)
    n_dot_l = sign * light[axis]
    shade = light[3]
    if n_dot_l > 0.0:
        off = 1e-5
        ox = px + (off * sign if axis == 0 else 0.0)
        oy = py + (off * sign if axis == 1 else 0.0)
        oz = pz + (off * sign if axis == 2 else 0.0)
        if _in_sunlight(ox, oy, oz, mat, prim, boxes, box_mat, building, openings, opening_mat,
                        ground, light):
            shade += light[4] * n_dot_l
    return r * shade, g * shade, b * shade


@njit(cache=True)
def _pixel_ray(K_inv, R_fc, fu, fv):
    """Facade-frame direction of the ray through OpenCV pixel (fu, fv), and its camera z (= 1)."""
    cx = K_inv[0, 0] * fu + K_inv[0, 1] * fv + K_inv[0, 2]
    cy = K_inv[1, 0] * fu + K_inv[1, 1] * fv + K_inv[1, 2]
    cz = K_inv[2, 0] * fu + K_inv[2, 1] * fv + K_inv[2, 2]
    dx = R_fc[0, 0] * cx + R_fc[0, 1] * cy + R_fc[0, 2] * cz
    dy = R_fc[1, 0] * cx + R_fc[1, 1] * cy + R_fc[1, 2] * cz
    dz = R_fc[2, 0] * cx + R_fc[2, 1] * cy + R_fc[2, 2] * cz
    return dx, dy, dz, cz


@njit(cache=True, parallel=True)
def _render_pinhole_kernel(K_inv, R_fc, C_f, width, height, supersample, want_colour, boxes,
                           box_mat, building, openings, opening_mat, ground, light, depth, rgb):
    """Per pixel: z-depth at the pixel centre and (optionally) the colour, box-filtered over
    supersample x supersample sub-pixel rays."""
    ox, oy, oz = C_f[0], C_f[1], C_f[2]
    for v in prange(height):
        for u in range(width):
            dx, dy, dz, cz = _pixel_ray(K_inv, R_fc, float(u), float(v))
            t, mat, axis, sign, prim = _nearest_hit(ox, oy, oz, dx, dy, dz, boxes, box_mat,
                                                    building, openings, opening_mat, ground)
            depth[v, u] = t * cz
            if not want_colour:
                continue
            if supersample == 1:
                r, g, b = _shade(ox + t * dx, oy + t * dy, oz + t * dz, axis, sign, mat, prim, dx,
                                 dy, dz, boxes, box_mat, building, openings, opening_mat, ground,
                                 light)
                rgb[v, u, 0], rgb[v, u, 1], rgb[v, u, 2] = r, g, b
                continue
            for sv in range(supersample):
                for su in range(supersample):
                    fu = u + (su + 0.5) / supersample - 0.5
                    fv = v + (sv + 0.5) / supersample - 0.5
                    dx, dy, dz, cz = _pixel_ray(K_inv, R_fc, fu, fv)
                    t, mat, axis, sign, prim = _nearest_hit(ox, oy, oz, dx, dy, dz, boxes, box_mat,
                                                            building, openings, opening_mat, ground)
                    r, g, b = _shade(ox + t * dx, oy + t * dy, oz + t * dz, axis, sign, mat, prim,
                                     dx, dy, dz, boxes, box_mat, building, openings, opening_mat,
                                     ground, light)
                    rgb[v, u, 0] += r
                    rgb[v, u, 1] += g
                    rgb[v, u, 2] += b
            n = supersample * supersample
            rgb[v, u, 0] /= n
            rgb[v, u, 1] /= n
            rgb[v, u, 2] /= n


@njit(cache=True)
def _trace_into(i, ox, oy, oz, dx, dy, dz, want_colour, boxes, box_mat, building, openings,
                opening_mat, ground, light, t_out, mat_out, rgb_out):
    """Nearest hit of one ray (and its shaded colour if wanted) written to slot i of the outputs."""
    t, mat, axis, sign, prim = _nearest_hit(ox, oy, oz, dx, dy, dz, boxes, box_mat, building,
                                            openings, opening_mat, ground)
    t_out[i] = t
    mat_out[i] = mat
    if want_colour:
        r, g, b = _shade(ox + t * dx, oy + t * dy, oz + t * dz, axis, sign, mat, prim, dx, dy,
                         dz, boxes, box_mat, building, openings, opening_mat, ground, light)
        rgb_out[i, 0] = r
        rgb_out[i, 1] = g
        rgb_out[i, 2] = b


@njit(cache=True, parallel=True)
def _cast_kernel(origins, dirs, want_colour, boxes, box_mat, building, openings, opening_mat,
                 ground, light, t_out, mat_out, rgb_out):
    for i in prange(origins.shape[0]):
        ox, oy, oz = origins[i, 0], origins[i, 1], origins[i, 2]
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        _trace_into(i, ox, oy, oz, dx, dy, dz, want_colour, boxes, box_mat, building, openings,
                    opening_mat, ground, light, t_out, mat_out, rgb_out)


@njit(cache=True, parallel=True)
def _cast_camera_kernel(rays_n, R_fc, C_f, want_colour, boxes, box_mat, building, openings,
                        opening_mat, ground, light, t_out, mat_out, rgb_out):
    """Cast camera rays given as pinhole-normalized (x/z, y/z) (N,2); t_out is the z-depth."""
    ox, oy, oz = C_f[0], C_f[1], C_f[2]
    for i in prange(rays_n.shape[0]):
        cx, cy = rays_n[i, 0], rays_n[i, 1]
        dx = R_fc[0, 0] * cx + R_fc[0, 1] * cy + R_fc[0, 2]
        dy = R_fc[1, 0] * cx + R_fc[1, 1] * cy + R_fc[1, 2]
        dz = R_fc[2, 0] * cx + R_fc[2, 1] * cy + R_fc[2, 2]
        _trace_into(i, ox, oy, oz, dx, dy, dz, want_colour, boxes, box_mat, building, openings,
                    opening_mat, ground, light, t_out, mat_out, rgb_out)


@njit(cache=True, parallel=True)
def _thin_prism_pixel_rays_kernel(params, width, height, out):
    """Pinhole-normalized rays (H,W,2) through the COLMAP pixel centres of a THIN_PRISM_FISHEYE
    camera: per-pixel Newton inversion, the scalar twin of camera.thin_prism_unproject."""
    fx, fy, cx, cy = params[0], params[1], params[2], params[3]
    k1, k2, p1, p2, k3, k4, sx1, sy1 = (params[4], params[5], params[6], params[7], params[8],
                                        params[9], params[10], params[11])
    for v in prange(height):
        for u in range(width):
            tu = (u + 0.5 - cx) / fx
            tv = (v + 0.5 - cy) / fy
            uf, vf = tu, tv
            for _ in range(30):
                t2 = uf * uf + vf * vf
                radial = t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
                dr = k1 + t2 * (2.0 * k2 + t2 * (3.0 * k3 + t2 * 4.0 * k4))
                res_u = uf + uf * radial + 2.0 * p1 * uf * vf + p2 * (t2 + 2.0 * uf * uf) + sx1 * t2 - tu
                res_v = vf + vf * radial + 2.0 * p2 * uf * vf + p1 * (t2 + 2.0 * vf * vf) + sy1 * t2 - tv
                j00 = 1.0 + radial + 2.0 * uf * uf * dr + 2.0 * p1 * vf + 6.0 * p2 * uf + 2.0 * sx1 * uf
                j01 = 2.0 * uf * vf * dr + 2.0 * p1 * uf + 2.0 * p2 * vf + 2.0 * sx1 * vf
                j10 = 2.0 * uf * vf * dr + 2.0 * p2 * vf + 2.0 * p1 * uf + 2.0 * sy1 * uf
                j11 = 1.0 + radial + 2.0 * vf * vf * dr + 2.0 * p2 * uf + 6.0 * p1 * vf + 2.0 * sy1 * vf
                det = j00 * j11 - j01 * j10
                su = (j11 * res_u - j01 * res_v) / det
                sv = (-j10 * res_u + j00 * res_v) / det
                uf -= su
                vf -= sv
                if su * su + sv * sv < 1e-26:
                    break
            theta = math.sqrt(uf * uf + vf * vf)
            factor = math.tan(theta) / theta if theta > 1e-15 else 1.0
            out[v, u, 0] = uf * factor
            out[v, u, 1] = vf * factor


def pixel_centre_rays(camera: Camera) -> np.ndarray:
    """Pinhole-normalized rays (H,W,2) through every COLMAP pixel centre (+0.5) of a camera (fast)."""
    if camera.model == PINHOLE:
        fx, fy, cx, cy = camera.params
        u = (np.arange(camera.width) + 0.5 - cx) / fx
        v = (np.arange(camera.height) + 0.5 - cy) / fy
        return np.stack(np.broadcast_arrays(u[None, :], v[:, None]), axis=-1).copy()
    out = np.empty((camera.height, camera.width, 2))
    _thin_prism_pixel_rays_kernel(camera.params, camera.width, camera.height, out)
    return out


# ==================================================================================================
# Scene description and analytic truth
# ==================================================================================================
@dataclass(eq=False)
class SceneGeometry:
    """The analytic facade: exact ray hits, z-depth and renders for any camera.

    All public methods take world-frame quantities and world-to-camera poses
    (``X_cam = R @ X_world + t``, OpenCV axes).
    """

    boxes: np.ndarray  # (nb, 6) facade frame
    box_mat: np.ndarray  # (nb,)
    building: np.ndarray  # (6,)
    openings: np.ndarray  # (no, 5)
    opening_mat: np.ndarray  # (no,)
    ground: np.ndarray  # (4,)
    light: np.ndarray  # (8,)
    facade_from_world_R: np.ndarray  # X_facade = R @ X_world + t
    facade_from_world_t: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.ascontiguousarray(self.boxes, dtype=np.float64).reshape(-1, 6)
        self.box_mat = np.ascontiguousarray(self.box_mat, dtype=np.int64).reshape(-1)
        self.building = np.ascontiguousarray(self.building, dtype=np.float64).reshape(6)
        self.openings = np.ascontiguousarray(self.openings, dtype=np.float64).reshape(-1, 5)
        self.opening_mat = np.ascontiguousarray(self.opening_mat, dtype=np.int64).reshape(-1)
        self.ground = np.ascontiguousarray(self.ground, dtype=np.float64).reshape(4)
        self.light = np.ascontiguousarray(self.light, dtype=np.float64).reshape(8)
        self.facade_from_world_R = np.asarray(self.facade_from_world_R, dtype=np.float64).reshape(3, 3)
        self.facade_from_world_t = np.asarray(self.facade_from_world_t, dtype=np.float64).reshape(3)

    # ---------------------------------------------------------------- serialisation
    @property
    def texture_min_wavelength(self) -> float:
        """Finest texture wavelength (metres); the texture is band-limited above it."""
        return float(self.light[5])

    def to_dict(self) -> dict:
        return {
            "boxes": self.boxes.tolist(), "box_materials": self.box_mat.tolist(),
            "building": self.building.tolist(), "openings": self.openings.tolist(),
            "opening_materials": self.opening_mat.tolist(), "ground": self.ground.tolist(),
            "sun_direction": self.light[:3].tolist(), "ambient": float(self.light[3]),
            "diffuse": float(self.light[4]), "texture_min_wavelength": float(self.light[5]),
            "ground_floor_height": float(self.light[6]), "texture_seed": int(self.light[7]),
            "facade_from_world_R": self.facade_from_world_R.tolist(),
            "facade_from_world_t": self.facade_from_world_t.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SceneGeometry":
        light = [*d["sun_direction"], d["ambient"], d["diffuse"], d["texture_min_wavelength"],
                 d["ground_floor_height"], d["texture_seed"]]
        return cls(d["boxes"], d["box_materials"], d["building"], d["openings"],
                   d["opening_materials"], d["ground"], light, d["facade_from_world_R"],
                   d["facade_from_world_t"])

    @classmethod
    def from_scene_dir(cls, scene_dir: str | Path) -> "SceneGeometry":
        """Load the truth of a scene written by ``generate_scene`` (reads ``synth_truth.json``)."""
        path = Path(scene_dir) / TRUTH_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a synthetic scene (no {TRUTH_FILE})")
        try:
            truth = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        if truth.get("format") != TRUTH_FORMAT:
            raise ValueError(f"{path}: unknown format {truth.get('format')!r}, expected {TRUTH_FORMAT!r}")
        return cls.from_dict(truth["geometry"])

    # ---------------------------------------------------------------- frames
    def _arrays(self):
        return (self.boxes, self.box_mat, self.building, self.openings, self.opening_mat,
                self.ground, self.light)

    def _to_facade(self, points_w: np.ndarray) -> np.ndarray:
        return points_w @ self.facade_from_world_R.T + self.facade_from_world_t

    def _to_world(self, points_f: np.ndarray) -> np.ndarray:
        return (points_f - self.facade_from_world_t) @ self.facade_from_world_R

    def _camera_in_facade(self, R: np.ndarray, t: np.ndarray):
        R = np.asarray(R, dtype=np.float64).reshape(3, 3)
        t = np.asarray(t, dtype=np.float64).reshape(3)
        centre_w = -R.T @ t
        R_fc = self.facade_from_world_R @ R.T
        return np.ascontiguousarray(R_fc), self._to_facade(centre_w[None])[0]

    # ---------------------------------------------------------------- ray level
    def _cast(self, origins_w, dirs_w, want_colour: bool):
        origins_w = np.asarray(origins_w, dtype=np.float64).reshape(-1, 3)
        dirs_w = np.asarray(dirs_w, dtype=np.float64).reshape(-1, 3)
        if origins_w.shape != dirs_w.shape:
            raise ValueError(f"origins {origins_w.shape} and dirs {dirs_w.shape} differ in shape")
        o_f = np.ascontiguousarray(self._to_facade(origins_w))
        d_f = np.ascontiguousarray(dirs_w @ self.facade_from_world_R.T)
        n = len(o_f)
        t = np.empty(n)
        mat = np.empty(n, dtype=np.int64)
        rgb = np.zeros((n if want_colour else 0, 3), dtype=np.float32)
        _cast_kernel(o_f, d_f, want_colour, *self._arrays(), t, mat, rgb)
        return t, mat, rgb

    def cast_rays(self, origins: np.ndarray, dirs: np.ndarray):
        """World rays o + t d -> (t (N,), points (N,3), colours (N,3) uint8).

        ``t`` is in units of ``dirs`` (metres for unit dirs); misses give t = inf, points = nan and
        the sky colour. Colours are the shaded surface colour the renders use.
        """
        t, _, rgb = self._cast(origins, dirs, True)
        hit = np.isfinite(t)
        points = np.full((len(t), 3), np.nan)
        o = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
        d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
        points[hit] = o[hit] + t[hit, None] * d[hit]
        return t, points, _float_to_u8(rgb)

    def materials(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Material code (SKY, GROUND, WALL, ..., see MATERIAL_NAMES) hit by each world ray."""
        return self._cast(origins, dirs, False)[1]

    def visible(self, points: np.ndarray, camera_centre: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
        """Whether surface points (N,3) are unoccluded from a camera centre, within ``tolerance`` m
        (the ETH3D pipeline's default occlusion threshold)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        centre = np.asarray(camera_centre, dtype=np.float64).reshape(1, 3)
        dirs = points - centre
        t, _, _ = self._cast(np.broadcast_to(centre, points.shape), dirs, False)
        dist = np.linalg.norm(dirs, axis=1)
        return t >= 1.0 - tolerance / np.maximum(dist, 1e-12)

    # ---------------------------------------------------------------- camera level
    def _render(self, K, R, t, width, height, supersample, want_colour):
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        if abs(K[2, 0]) + abs(K[2, 1]) > 0 or K[2, 2] != 1.0:
            raise ValueError(f"K must have last row [0, 0, 1], got {K[2].tolist()}")
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        R_fc, C_f = self._camera_in_facade(R, t)
        depth = np.empty((int(height), int(width)))
        rgb = np.zeros((int(height), int(width), 3) if want_colour else (0, 0, 3), dtype=np.float32)
        _render_pinhole_kernel(np.linalg.inv(K), R_fc, C_f, int(width), int(height),
                               int(supersample), want_colour, *self._arrays(), depth, rgb)
        return depth, rgb

    def zdepth(self, K, R, t, width: int, height: int) -> np.ndarray:
        """(H,W) float64 camera-axis depth (metres) through the OpenCV pixel centres of a pinhole
        camera (pixel (u,v) integer = centre); inf where the ray hits nothing (sky)."""
        return self._render(K, R, t, width, height, 1, False)[0]

    def render(self, K, R, t, width: int, height: int, supersample: int = 1) -> np.ndarray:
        """(H,W,3) uint8 image of a pinhole camera (OpenCV K), the same way the scene's JPEGs were
        rendered. ``supersample=k`` averages k x k sub-pixel rays (an area filter, e.g. to compare
        with a downscaled image)."""
        return _float_to_u8(self._render(K, R, t, width, height, supersample, True)[1])

    def cast_camera_rays(self, rays_n: np.ndarray, R, t, want_colour: bool = True):
        """Camera rays given as pinhole-normalized (x/z, y/z) (..., 2) of a camera with pose (R, t)
        -> (z-depth (...), material (...), colour (..., 3) uint8 or None)."""
        rays_n = np.asarray(rays_n, dtype=np.float64)
        shape = rays_n.shape[:-1]
        flat = np.ascontiguousarray(rays_n.reshape(-1, 2))
        R_fc, C_f = self._camera_in_facade(R, t)
        n = len(flat)
        z = np.empty(n)
        mat = np.empty(n, dtype=np.int64)
        rgb = np.zeros((n if want_colour else 0, 3), dtype=np.float32)
        _cast_camera_kernel(flat, R_fc, C_f, want_colour, *self._arrays(), z, mat, rgb)
        colour = _float_to_u8(rgb).reshape(*shape, 3) if want_colour else None
        return z.reshape(shape), mat.reshape(shape), colour

    def zdepth_camera(self, camera: Camera, R, t) -> np.ndarray:
        """(H,W) z-depth through the COLMAP pixel centres (+0.5) of any camera model, e.g. the
        distorted THIN_PRISM_FISHEYE camera of the GT depth maps; inf = no surface."""
        return self.cast_camera_rays(pixel_centre_rays(camera), R, t, want_colour=False)[0]


def _float_to_u8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * np.float32(255.0)), 0, 255).astype(np.uint8)


# ==================================================================================================
# Scene construction (seeded)
# ==================================================================================================
# The texture's finest wavelength spans this many pixels at this distance (metres) in the
# undistorted images, so neighbouring views sample consistent colours (no aliasing) while the
# images keep realistic high-frequency detail.
_TEXTURE_MIN_WAVELENGTH_PX = 3.0
_TEXTURE_REFERENCE_DISTANCE_M = 6.0


def build_facade(rng: np.random.Generator, scale: float) -> tuple[SceneGeometry, dict]:
    """A seeded facade: wall with recessed windows, a door with steps, balconies, cornice, plinth,
    a lamp post, the ground; metres, facade frame. Returns the geometry and its parameters."""
    width = float(rng.uniform(20.0, 26.0))
    ground_floor, floor_height = 4.0, 3.2
    upper_floors = int(rng.integers(3, 5))
    height = ground_floor + upper_floors * floor_height + 0.8
    columns = int(width // 2.7)
    pitch = width / columns
    centre_col = columns // 2
    recess = float(rng.uniform(0.22, 0.30))
    window_w = float(rng.uniform(1.1, 1.3))
    balcony_floors = {1: centre_col, 2 + int(rng.integers(0, upper_floors - 1)): int(rng.choice([1, columns - 2]))}

    openings, opening_mat = [], []
    for col in range(columns):
        xc = -width / 2 + pitch * (col + 0.5)
        if col == centre_col:  # entrance door, reached by three steps
            openings.append([xc - 0.8, xc + 0.8, 0.5, 3.1, recess + 0.15])
            opening_mat.append(DOOR)
        else:
            openings.append([xc - 0.75, xc + 0.75, 0.9, 3.1, recess])
            opening_mat.append(GLASS)
        for floor in range(1, upper_floors + 1):
            z_floor = ground_floor + (floor - 1) * floor_height
            z0 = z_floor if balcony_floors.get(floor) == col else z_floor + 0.9  # balcony door
            openings.append([xc - window_w / 2, xc + window_w / 2, z0, z_floor + 2.35, recess])
            opening_mat.append(GLASS)

    x_door = -width / 2 + pitch * (centre_col + 0.5)
    boxes, box_mat = [], []

    def box(x0, y0, z0, x1, y1, z1, mat):
        boxes.append([x0, y0, z0, x1, y1, z1])
        box_mat.append(mat)

    box(-width / 2 - 0.05, -0.06, 0.0, width / 2 + 0.05, 0.0, 0.45, CONCRETE)  # plinth
    box(-width / 2 - 0.3, -0.45, height - 0.65, width / 2 + 0.3, 0.0, height - 0.3, STONE)  # cornice
    for step in range(3):  # entrance steps
        box(x_door - 1.1, -0.75 + 0.25 * step, 0.17 * step, x_door + 1.1, 0.0, 0.17 * (step + 1), CONCRETE)
    for floor, col in balcony_floors.items():
        z = ground_floor + (floor - 1) * floor_height
        xc = -width / 2 + pitch * (col + 0.5)
        x0, x1, y0 = xc - 1.6, xc + 1.6, -1.3
        box(x0, y0, z - 0.18, x1, 0.0, z, CONCRETE)  # slab
        box(x0, y0, z, x1, y0 + 0.1, z + 1.0, CONCRETE)  # front parapet
        box(x0, y0, z, x0 + 0.1, 0.0, z + 1.0, CONCRETE)  # side parapets
        box(x1 - 0.1, y0, z, x1, 0.0, z + 1.0, CONCRETE)
    x_lamp = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.22, 0.38) * width)
    box(x_lamp - 0.07, -3.57, 0.0, x_lamp + 0.07, -3.43, 4.2, METAL)  # lamp post
    box(x_lamp - 0.25, -3.75, 4.2, x_lamp + 0.25, -3.25, 4.55, METAL)

    sun_azimuth = np.radians(rng.uniform(-50.0, 50.0))
    sun_elevation = np.radians(rng.uniform(30.0, 50.0))
    sun = [np.sin(sun_azimuth) * np.cos(sun_elevation), -np.cos(sun_azimuth) * np.cos(sun_elevation),
           np.sin(sun_elevation)]
    min_wavelength = (_TEXTURE_MIN_WAVELENGTH_PX * _TEXTURE_REFERENCE_DISTANCE_M
                      / (REFERENCE_THIN_PRISM[0] * scale))
    light = [*sun, 0.38, 0.72, min_wavelength, ground_floor, int(rng.integers(0, 2**20))]

    yaw = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    facade_from_world_R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    facade_from_world_t = np.array([rng.uniform(-40, 40), rng.uniform(-40, 40), rng.uniform(-3, 3)])
    geometry = SceneGeometry(
        boxes=np.array(boxes), box_mat=np.array(box_mat),
        building=np.array([-width / 2, 0.0, 0.0, width / 2, 14.0, height]),
        openings=np.array(openings), opening_mat=np.array(opening_mat),
        ground=np.array([-50.0, 50.0, -50.0, 30.0]), light=np.array(light, dtype=np.float64),
        facade_from_world_R=facade_from_world_R, facade_from_world_t=facade_from_world_t,
    )
    params = {"width_m": width, "height_m": height, "upper_floors": upper_floors,
              "window_columns": columns, "recess_depth_m": recess, "lamp_post_x_m": x_lamp,
              "balconies": [{"floor": f, "column": c} for f, c in sorted(balcony_floors.items())]}
    return geometry, params


def distorted_cameras(rng: np.random.Generator, count: int, scale: float) -> list[Camera]:
    """THIN_PRISM_FISHEYE cameras (one per focus setting) around the real ETH3D calibration,
    quantised to the 6 significant digits the text files hold."""
    width, height = round(FULL_WIDTH * scale), round(FULL_HEIGHT * scale)
    ref = REFERENCE_THIN_PRISM
    cameras = []
    for camera_id in range(count):
        fx = ref[0] * scale * (1.0 + rng.normal(0.0, 0.003))
        fy = fx * (ref[1] / ref[0]) * (1.0 + rng.normal(0.0, 2e-4))
        cx = (ref[2] - FULL_WIDTH / 2 + rng.normal(0.0, 8.0)) * scale + width / 2
        cy = (ref[3] - FULL_HEIGHT / 2 + rng.normal(0.0, 8.0)) * scale + height / 2
        k1, k2 = ref[4] + rng.normal(0, 0.004), ref[5] + rng.normal(0, 0.006)
        p1, p2 = ref[6] + rng.normal(0, 2e-5), ref[7] + rng.normal(0, 1e-4)
        k3, k4 = ref[8] + rng.normal(0, 0.008), ref[9] + rng.normal(0, 0.015)
        sx1, sy1 = ref[10] + rng.normal(0, 5e-5), ref[11] + rng.normal(0, 1e-4)
        params = [fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, sx1, sy1]
        cameras.append(Camera(camera_id, THIN_PRISM_FISHEYE, width, height,
                              [float(format_float(p)) for p in params]))
    return cameras


def undistorted_camera(distorted: Camera) -> Camera:
    """The PINHOLE camera ETH3D's undistortion produces: same focal length, and the largest
    centred size whose every pixel centre maps inside the distorted image (no blank pixels)."""
    W, H = distorted.width, distorted.height
    fx, fy, cx, cy = distorted.params[:4]
    n = 4096
    xs, ys = np.linspace(0.5, W - 0.5, n), np.linspace(0.5, H - 0.5, n)

    def pinhole(xy):  # distorted pixels -> pinhole pixels with the same f and c
        return distorted.unproject(xy) * [fx, fy] + [cx, cy]

    left = pinhole(np.c_[np.full(n, 0.5), ys])[:, 0].max()
    right = pinhole(np.c_[np.full(n, W - 0.5), ys])[:, 0].min()
    top = pinhole(np.c_[xs, np.full(n, 0.5)])[:, 1].max()
    bottom = pinhole(np.c_[xs, np.full(n, H - 0.5)])[:, 1].min()
    width, height = int(np.floor(right - left)), int(np.floor(bottom - top))
    centre_x, centre_y = 0.5 * (left + right), 0.5 * (top + bottom)
    for _ in range(200):
        cx_u = float(format_float(cx - (centre_x - width / 2)))
        cy_u = float(format_float(cy - (centre_y - height / 2)))
        camera = Camera(distorted.camera_id, PINHOLE, width, height, [fx, fy, cx_u, cy_u])
        if _maps_inside(camera, distorted):
            return camera
        width, height = width - 2, height - 2
    raise RuntimeError(f"could not fit an undistorted image inside the distorted camera {distorted}")


def undistorted_to_distorted(xy_undistorted: np.ndarray, undistorted: Camera, distorted: Camera) -> np.ndarray:
    """COLMAP pixels of the undistorted PINHOLE image -> COLMAP pixels of the distorted image."""
    return thin_prism_distort_normalized(undistorted.unproject(xy_undistorted), distorted.params)


def _maps_inside(undistorted: Camera, distorted: Camera) -> bool:
    W, H = undistorted.width, undistorted.height
    xs, ys = np.arange(W) + 0.5, np.arange(H) + 0.5
    border = np.concatenate([np.c_[xs, np.full(W, 0.5)], np.c_[xs, np.full(W, H - 0.5)],
                             np.c_[np.full(H, 0.5), ys], np.c_[np.full(H, W - 0.5), ys]])
    xy = undistorted_to_distorted(border, undistorted, distorted)
    return bool(np.all((xy >= 0.5) & (xy <= [distorted.width - 0.5, distorted.height - 0.5])))


def capture_poses(rng: np.random.Generator, count: int, geometry: SceneGeometry) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """World-to-camera poses along a hand-held capture arc in front of the facade, in name order:
    consecutive views overlap strongly; modest pitch, yaw and roll. Each pose is (R, t, text) with
    R, t exactly what a reader reconstructs from ``text`` (the images.txt "QW QX QY QZ TX TY TZ")."""
    radius = rng.uniform(10.5, 12.5)
    span = np.radians(min(70.0, 10.0 + 4.0 * (count - 1)))
    angles = np.linspace(-span / 2, span / 2, count) + rng.normal(0, np.radians(0.6), count)
    poses = []
    for a in angles:
        centre = np.array([radius * np.sin(a), 2.0 - radius * np.cos(a), rng.uniform(1.45, 1.9)])
        centre[:2] += rng.normal(0, 0.25, 2)
        target = np.array([0.55 * centre[0] + rng.normal(0, 0.8), 0.0, rng.uniform(2.0, 4.5)])
        forward = (target - centre) / np.linalg.norm(target - centre)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        roll = rng.normal(0, np.radians(1.5))
        cr, sr = np.cos(roll), np.sin(roll)
        right, down = cr * right + sr * down, -sr * right + cr * down
        cam_from_facade = np.stack([right, down, forward])
        R = cam_from_facade @ geometry.facade_from_world_R
        centre_w = geometry._to_world(centre[None])[0]
        poses.append(_quantised_pose(R, -R @ centre_w))
    return poses


def _quantised_pose(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The pose exactly as a reader of the 6-significant-digit images.txt line reconstructs it."""
    text = " ".join(format_float(v) for v in [*rotmat_to_qvec(R), *t])
    values = np.array([float(v) for v in text.split()])
    return qvec_to_rotmat(values[:4]), values[4:], text


# ==================================================================================================
# Laser scan -> sparse GT depth (ETH3D dataset-pipeline semantics)
# ==================================================================================================
# Angular step of the simulated scanner, in undistorted pixels at the same distance: ~2.6 px
# spacing gives ETH3D-like sparse GT (about 5-15 % of the distorted pixels).
_SCAN_STEP_PX = 3.5
_SCAN_MAX_RANGE_M = 80.0
_OCCLUSION_THRESHOLD_M = 0.01  # dataset-pipeline default occlusion_depth_threshold


def simulate_laser_scan(geometry: SceneGeometry, scale: float, rng: np.random.Generator) -> np.ndarray:
    """World-frame points (M,3) of two terrestrial laser scans in front of the facade.

    The angular step scales with the image scale, so the GT density in pixels is scale-invariant.
    Only surfaces a scanner sees get points (the balcony casts scan shadows, as in real scans).
    """
    step = _SCAN_STEP_PX / (REFERENCE_THIN_PRISM[0] * scale)
    width = geometry.building[3] - geometry.building[0]
    scanners = [np.array([-0.2 * width, -9.0, 1.7]), np.array([0.2 * width, -11.0, 1.7])]
    points = []
    for position in scanners:
        az = np.arange(np.radians(-75), np.radians(75), step) + rng.uniform(0, step)
        el = np.arange(np.radians(-40), np.radians(65), step) + rng.uniform(0, step)
        for el_chunk in np.array_split(el, max(1, len(el) // 256)):
            A, E = np.meshgrid(az, el_chunk)
            dirs = np.stack([np.cos(E) * np.sin(A), np.cos(E) * np.cos(A), np.sin(E)], -1).reshape(-1, 3)
            origins = np.ascontiguousarray(np.broadcast_to(position, dirs.shape))
            t = np.empty(len(dirs))
            mat = np.empty(len(dirs), dtype=np.int64)
            _cast_kernel(origins, np.ascontiguousarray(dirs), False, *geometry._arrays(), t, mat,
                         np.zeros((0, 3), np.float32))
            keep = t < _SCAN_MAX_RANGE_M
            points.append(position + t[keep, None] * dirs[keep])
    return geometry._to_world(np.concatenate(points))


@dataclass
class _Splats:
    """Scan points that project into one distorted image and are visible there."""

    point_index: np.ndarray  # into the scan
    pixel: np.ndarray  # linear pixel index iy * W + ix, ix = floor(x_colmap)
    z: np.ndarray


def _max_field_angle(camera: Camera) -> float:
    """Largest angle off the optical axis the distorted image sees (from its border pixels)."""
    W, H = camera.width, camera.height
    border = np.array([[0, 0], [W, 0], [0, H], [W, H], [W / 2, 0], [W / 2, H], [0, H / 2], [W, H / 2]])
    uv = camera.unproject(border)
    return float(np.arctan(np.hypot(uv[:, 0], uv[:, 1])).max())


def project_scan(geometry: SceneGeometry, scan_w: np.ndarray, camera: Camera, R, t) -> _Splats:
    """Project scan points through the THIN_PRISM_FISHEYE camera; keep in-image, visible points."""
    xyz = scan_w @ R.T + t
    in_front = xyz[:, 2] > 1e-6
    angle = np.arctan(np.hypot(xyz[:, 0], xyz[:, 1]) / np.where(in_front, xyz[:, 2], 1.0))
    # Beyond the field of view the distortion polynomial is meaningless (it may fold back inside).
    candidates = np.flatnonzero(in_front & (angle <= _max_field_angle(camera) + 0.02))
    xy = camera.project(xyz[candidates])
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < camera.width) & (xy[:, 1] >= 0) & (xy[:, 1] < camera.height)
    candidates, xy = candidates[inside], xy[inside]
    visible = geometry.visible(scan_w[candidates], -R.T @ t, _OCCLUSION_THRESHOLD_M)
    candidates, xy = candidates[visible], xy[visible]
    ix = np.floor(xy[:, 0]).astype(np.int64)
    iy = np.floor(xy[:, 1]).astype(np.int64)
    return _Splats(candidates, iy * camera.width + ix, xyz[candidates, 2])


def splat_depth(splats: _Splats, width: int, height: int, mask: np.ndarray | None) -> np.ndarray:
    """Min z-buffer of one-pixel splats; +inf = no GT; GT removed where mask == 2 (kEvalObs)."""
    depth = np.full(width * height, np.inf, dtype=np.float32)
    pixel, z = splats.pixel, splats.z.astype(np.float32)
    if mask is not None:
        keep = mask.reshape(-1)[pixel] != MASK_EVAL_OBS
        pixel, z = pixel[keep], z[keep]
    np.minimum.at(depth, pixel, z)
    return depth.reshape(height, width)


# ==================================================================================================
# Masks (distorted geometry)
# ==================================================================================================
def make_mask(geometry: SceneGeometry, camera: Camera, R, t, rays_cam: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    # rays_cam: pixel_centre_rays(camera), shared by all images of the camera
    """uint8 mask: 1 (kObs) on window glass (reflections: geometry right, colour unreliable),
    2 (kEvalObs) on a transient object region (e.g. a passer-by), 0 elsewhere."""
    W, H = camera.width, camera.height
    materials = geometry.cast_camera_rays(rays_cam, R, t, want_colour=False)[1]
    mask = np.where(materials == GLASS, MASK_OBS, MASK_NONE).astype(np.uint8)
    # A passer-by: a person-sized ellipse standing in the lower half of the image.
    cx, cy = rng.uniform(0.15, 0.85) * W, rng.uniform(0.62, 0.8) * H
    ax, ay = rng.uniform(0.025, 0.045) * W, rng.uniform(0.10, 0.16) * H
    x0, x1 = max(0, int(cx - ax)), min(W, int(cx + ax) + 1)
    y0, y1 = max(0, int(cy - ay)), min(H, int(cy + ay) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    person = ((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1.0
    mask[y0:y1, x0:x1][person] = MASK_EVAL_OBS
    return mask


# ==================================================================================================
# Sparse COLMAP model (keypoints, tracks) consistent in both calibrations
# ==================================================================================================
_KEYPOINT_SAMPLES_PER_IMAGE = 160
_KEYPOINT_NOISE_PX = 0.3  # at scale 1; keypoint localisation noise of the POINTS2D entries
_UNTRACKED_FRACTION = 0.4  # POINTS2D entries with POINT3D_ID -1, relative to tracked ones


@dataclass
class _Image:
    name: str  # DSC_xxxx.JPG
    image_id: int
    camera_id: int
    R: np.ndarray
    t: np.ndarray
    pose_text: str

    @property
    def centre(self) -> np.ndarray:
        return -self.R.T @ self.t


@dataclass
class _SparseModel:
    keypoints_u: list  # per image (n,2) undistorted COLMAP pixels
    keypoints_d: list  # per image (n,2) distorted COLMAP pixels
    point_ids: list  # per image (n,) int64, -1 = untracked
    xyz: np.ndarray  # (P,3) world
    colours: np.ndarray  # (P,3) uint8
    ids: np.ndarray  # (P,) POINT3D_ID
    errors: np.ndarray  # (P,) mean reprojection error, px
    tracks: list  # per point [(image_id, point2D_idx), ...]


def build_sparse_model(geometry: SceneGeometry, images: list[_Image], undistorted: list[Camera],
                       distorted: list[Camera], rng: np.random.Generator, empty_image: int,
                       scale: float) -> _SparseModel:
    """Keypoints on the true surfaces seen by >= 2 images, with noisy POINTS2D, -1 keypoints and
    one image without any keypoint (an EMPTY POINTS2D line, which breaks naive parsers)."""
    pool, pool_colours = [], []
    for i, im in enumerate(images):
        if i == empty_image:
            continue
        cam = undistorted[im.camera_id]
        xy = rng.uniform([0.0, 0.0], [cam.width, cam.height], (_KEYPOINT_SAMPLES_PER_IMAGE, 2))
        dirs = np.c_[cam.unproject(xy), np.ones(len(xy))] @ im.R
        t, pts, colours = geometry.cast_rays(np.broadcast_to(im.centre, dirs.shape), dirs)
        hit = np.isfinite(t)
        pool.append(pts[hit])
        pool_colours.append(colours[hit])
    points = np.concatenate(pool)
    colours = np.concatenate(pool_colours)
    # The text file keeps 6 significant digits; observations must match what readers get back.
    points = np.array([[float(format_float(v)) for v in p] for p in points]).reshape(-1, 3)

    observed = []
    counts = np.zeros(len(points), dtype=np.int64)
    for i, im in enumerate(images):
        if i == empty_image:
            observed.append((np.zeros(0, np.int64), np.zeros((0, 2))))
            continue
        cam = undistorted[im.camera_id]
        xyz = points @ im.R.T + im.t
        front = xyz[:, 2] > 0.1
        xy = np.full((len(points), 2), -1.0)
        xy[front] = cam.project(xyz[front])
        inside = front & np.all((xy >= 1.0) & (xy <= [cam.width - 1.0, cam.height - 1.0]), axis=1)
        idx = np.flatnonzero(inside)
        idx = idx[geometry.visible(points[idx], im.centre, _OCCLUSION_THRESHOLD_M)]
        observed.append((idx, xy[idx]))
        counts[idx] += 1

    tracked = np.flatnonzero(counts >= 2)
    new_index = np.full(len(points), -1)
    new_index[tracked] = np.arange(len(tracked))
    ids = np.sort(rng.choice(np.arange(1, 3 * len(tracked) + 10), len(tracked), replace=False))
    tracks: list = [[] for _ in tracked]
    residuals: list = [[] for _ in tracked]
    model = _SparseModel([], [], [], points[tracked], colours[tracked], ids, np.zeros(len(tracked)), tracks)
    noise = _KEYPOINT_NOISE_PX * max(scale, 0.25)
    for i, im in enumerate(images):
        cam_u, cam_d = undistorted[im.camera_id], distorted[im.camera_id]
        idx, xy = observed[i]
        keep = new_index[idx] >= 0
        idx, xy_exact = new_index[idx[keep]], xy[keep]
        n_untracked = 0 if i == empty_image else int(round(_UNTRACKED_FRACTION * len(idx))) + 3
        xy_obs = xy_exact + rng.normal(0.0, noise, xy_exact.shape)
        xy_free = rng.uniform([0.0, 0.0], [cam_u.width, cam_u.height], (n_untracked, 2))
        xy_all = np.clip(np.concatenate([xy_obs, xy_free]), 0.5, [cam_u.width - 0.5, cam_u.height - 0.5])
        pid_all = np.concatenate([idx, np.full(n_untracked, -1)])
        order = rng.permutation(len(pid_all))
        xy_all, pid_all = xy_all[order], pid_all[order]
        # What the text file holds (6 significant digits) is what the tracks must agree with.
        xy_all = np.array([[float(format_float(v)) for v in p] for p in xy_all]).reshape(-1, 2)
        xy_dist = undistorted_to_distorted(xy_all, cam_u, cam_d)
        model.keypoints_u.append(xy_all)
        model.keypoints_d.append(xy_dist)
        model.point_ids.append(np.where(pid_all >= 0, ids[np.maximum(pid_all, 0)], -1))
        exact = cam_u.project(model.xyz @ im.R.T + im.t) if len(model.xyz) else np.zeros((0, 2))
        for k in np.flatnonzero(pid_all >= 0):
            p = pid_all[k]
            tracks[p].append((im.image_id, int(k)))
            residuals[p].append(float(np.hypot(*(xy_all[k] - exact[p]))))
    model.errors = np.array([np.mean(r) for r in residuals]) if residuals else np.zeros(0)
    for track in tracks:
        track.sort()
    return model


# ==================================================================================================
# COLMAP text writers
# ==================================================================================================
def _write_cameras(path: Path, cameras: list[Camera]) -> None:
    lines = [_CAMERAS_HEADER.format(n=len(cameras))]
    assert [cam.camera_id for cam in cameras] == list(range(len(cameras))), "images.txt refers to list positions"
    lines += [cam.colmap_line() + "\n" for cam in cameras]
    path.write_text("".join(lines))


def _write_images(path: Path, images: list[_Image], folder: str, keypoints: list, point_ids: list) -> None:
    n_obs = sum(len(k) for k in keypoints)
    lines = [_IMAGES_HEADER.format(n=len(images), mean=format_float(n_obs / max(len(images), 1)))]
    for i in sorted(range(len(images)), key=lambda i: images[i].image_id):
        im = images[i]
        lines.append(f"{im.image_id} {im.pose_text} {im.camera_id} {folder}/{im.name}\n")
        lines.append(" ".join(f"{format_float(x)} {format_float(y)} {int(p)}"
                              for (x, y), p in zip(keypoints[i], point_ids[i])) + "\n")
    path.write_text("".join(lines))


def _write_points3d(path: Path, model: _SparseModel) -> None:
    mean_track = np.mean([len(t) for t in model.tracks]) if model.tracks else 0.0
    lines = [_POINTS_HEADER.format(n=len(model.ids), mean=format_float(mean_track))]
    for pid, xyz, rgb, err, track in zip(model.ids, model.xyz, model.colours, model.errors, model.tracks):
        coords = " ".join(format_float(v) for v in xyz)
        track_text = " ".join(f"{image_id} {idx}" for image_id, idx in track)
        lines.append(f"{pid} {coords} {rgb[0]} {rgb[1]} {rgb[2]} {format_float(err)} {track_text}\n")
    path.write_text("".join(lines))


# ==================================================================================================
# The generator
# ==================================================================================================
UNDISTORTED_FOLDER = "dslr_images_undistorted"
DISTORTED_FOLDER = "dslr_images"
_SCENE_SUBDIRS = ("images", "dslr_calibration_undistorted", "dslr_calibration_jpg",
                  "ground_truth_depth", "masks_for_images")
_JPEG_QUALITY = 95


def _check_arguments(scene: str, images: int, scale: float) -> None:
    if not scene or "/" in scene or "\\" in scene or scene in (".", ".."):
        raise ValueError(f"scene name must be a plain folder name, got {scene!r}")
    if images < 3:
        raise ValueError(f"need at least 3 images (tracks need 2 views plus one empty image), got {images}")
    if not 0.02 <= scale <= 1.0:
        raise ValueError(f"scale must be in [0.02, 1] (1 = ETH3D's 6048x4032), got {scale}")


def _prepare_scene_dir(scene_dir: Path) -> None:
    """Create the scene folder; a previous synthetic scene there is replaced, anything else kept."""
    if scene_dir.exists() and any(scene_dir.iterdir()):
        if not (scene_dir / TRUTH_FILE).is_file():
            raise FileExistsError(f"{scene_dir}: exists, is not empty and is not a synthetic scene; "
                                  f"refusing to write into it")
        for sub in _SCENE_SUBDIRS:
            shutil.rmtree(scene_dir / sub, ignore_errors=True)
        (scene_dir / TRUTH_FILE).unlink()
    for sub in ("images/" + UNDISTORTED_FOLDER, "dslr_calibration_undistorted", "dslr_calibration_jpg",
                "ground_truth_depth/" + DISTORTED_FOLDER, "masks_for_images/" + DISTORTED_FOLDER):
        (scene_dir / sub).mkdir(parents=True, exist_ok=True)


def _image_names(rng: np.random.Generator, count: int) -> list[str]:
    """Sequential DSC numbers in capture order, with the occasional skipped frame."""
    numbers = int(rng.integers(100, 9000)) + np.cumsum(1 + (rng.random(count) < 0.15)) - 1
    return [f"DSC_{n:04d}.JPG" for n in numbers]


def _image_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """Non-contiguous ids whose order differs from name order (as in real ETH3D files)."""
    ids = rng.choice(np.arange(1, 3 * count + 10), count, replace=False)
    if np.all(np.diff(ids) > 0):
        ids[[0, -1]] = ids[[-1, 0]]
    return ids


def generate_scene(root: str | Path, scene: str = "synth_facade", images: int = 8, scale: float = 0.25,
                   seed: int = 0, distorted_images: bool = False, log=None) -> Path:
    """Write a synthetic scene in the exact ETH3D layout under ``<root>/<scene>`` and return its path.

    Deterministic for a given (images, scale, seed): byte-identical files. ``distorted_images`` also
    renders ``images/dslr_images`` (the optional dslr_jpg images). ``log`` receives progress lines.
    """
    _check_arguments(scene, images, scale)
    log = log or (lambda message: None)
    rng = np.random.default_rng(seed)
    scene_dir = Path(root) / scene
    _prepare_scene_dir(scene_dir)

    geometry, facade_params = build_facade(rng, scale)
    distorted = distorted_cameras(rng, 2 if images < 12 else 3, scale)
    undistorted = [undistorted_camera(cam) for cam in distorted]
    poses = capture_poses(rng, images, geometry)
    names = _image_names(rng, images)
    ids = _image_ids(rng, images)
    camera_of = (np.arange(images) * len(distorted)) // images  # one focus setting per stretch
    frames = [_Image(names[i], int(ids[i]), int(camera_of[i]), *poses[i]) for i in range(images)]
    empty_image = int(rng.integers(1, images))
    has_mask = rng.random(images) < 0.7
    has_mask[rng.integers(0, images)] = False
    has_mask[empty_image] = True

    # Calibration and sparse model (both calibrations share ids, poses and POINTS2D order).
    model = build_sparse_model(geometry, frames, undistorted, distorted, rng, empty_image, scale)
    for folder, cams, calib, keypoints in (
        (UNDISTORTED_FOLDER, undistorted, "dslr_calibration_undistorted", model.keypoints_u),
        (DISTORTED_FOLDER, distorted, "dslr_calibration_jpg", model.keypoints_d),
    ):
        _write_cameras(scene_dir / calib / "cameras.txt", cams)
        _write_images(scene_dir / calib / "images.txt", frames, folder, keypoints, model.point_ids)
        _write_points3d(scene_dir / calib / "points3D.txt", model)
    log(f"calibrations: {len(distorted)} cameras, {images} images, {len(model.ids)} points3D")

    # Images.
    for im in frames:
        cam = undistorted[im.camera_id]
        rgb = geometry.render(cam.K_opencv(), im.R, im.t, cam.width, cam.height)
        path = scene_dir / "images" / UNDISTORTED_FOLDER / im.name
        path.write_bytes(_encode_jpeg(rgb))
        if distorted_images:
            _write_distorted_image(geometry, distorted[im.camera_id], im, scene_dir)
    log(f"images: {images} undistorted renders of {undistorted[0].width}x{undistorted[0].height}")

    # Laser scan -> masks and sparse GT depth in the distorted frame.
    scan = simulate_laser_scan(geometry, scale, rng)
    splats = [project_scan(geometry, scan, distorted[im.camera_id], im.R, im.t) for im in frames]
    seen = np.zeros(len(scan), dtype=np.int64)
    for s in splats:
        seen[s.point_index] += 1
    ray_cache: dict[int, np.ndarray] = {}
    coverage = []
    for i, (im, s) in enumerate(zip(frames, splats)):
        cam = distorted[im.camera_id]
        keep = seen[s.point_index] >= 2  # the pipeline only uses points seen in >= 2 images
        s = _Splats(s.point_index[keep], s.pixel[keep], s.z[keep])
        mask = None
        if has_mask[i]:
            if im.camera_id not in ray_cache:
                ray_cache[im.camera_id] = pixel_centre_rays(cam)
            mask = make_mask(geometry, cam, im.R, im.t, ray_cache[im.camera_id], rng)
            PILImage.fromarray(mask).save(scene_dir / "masks_for_images" / DISTORTED_FOLDER
                                          / (Path(im.name).stem + ".png"))
        depth = splat_depth(s, cam.width, cam.height, mask)
        depth.astype("<f4").tofile(scene_dir / "ground_truth_depth" / DISTORTED_FOLDER / im.name)
        coverage.append(float(np.isfinite(depth).mean()))
    log(f"ground truth: {len(scan)} laser points, GT coverage {min(coverage):.1%}-{max(coverage):.1%}, "
        f"{int(has_mask.sum())} masks")

    truth = {
        "format": TRUTH_FORMAT,
        "note": "synthetic scene written by dataengine.synth; not an ETH3D file",
        "generator": {"scene": scene, "images": images, "scale": scale, "seed": seed,
                      "distorted_images": distorted_images},
        "facade": facade_params,
        "geometry": geometry.to_dict(),
        "laser_points": int(len(scan)),
        "frames": [{"name": im.name, "image_id": im.image_id, "camera_id": im.camera_id,
                    "has_mask": bool(has_mask[i]), "empty_points2d": i == empty_image,
                    "gt_coverage": round(coverage[i], 6)} for i, im in enumerate(frames)],
    }
    (scene_dir / TRUTH_FILE).write_text(json.dumps(truth, indent=1) + "\n")
    return scene_dir


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=_JPEG_QUALITY, colorspace="RGB",
                                  colorsubsampling="422")


def _write_distorted_image(geometry: SceneGeometry, camera: Camera, im: _Image, scene_dir: Path) -> None:
    rgb = geometry.cast_camera_rays(pixel_centre_rays(camera), im.R, im.t)[2]
    folder = scene_dir / "images" / DISTORTED_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / im.name).write_bytes(_encode_jpeg(rgb))


def describe_scene(scene_dir: str | Path) -> list[str]:
    """One line per ETH3D folder of a scene: file count and total size."""
    scene_dir = Path(scene_dir)
    lines = [f"wrote {scene_dir}"]
    for sub in ("images/" + UNDISTORTED_FOLDER, "images/" + DISTORTED_FOLDER,
                "dslr_calibration_undistorted", "dslr_calibration_jpg",
                "ground_truth_depth/" + DISTORTED_FOLDER, "masks_for_images/" + DISTORTED_FOLDER):
        folder = scene_dir / sub
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.is_file())
            size = sum(p.stat().st_size for p in files)
            lines.append(f"  {sub}/: {len(files)} files, {size / 1e6:.1f} MB")
    lines.append(f"  {TRUTH_FILE}: generator parameters and analytic geometry (not an ETH3D file)")
    return lines

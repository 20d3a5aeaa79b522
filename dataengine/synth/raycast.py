"""Ray casting and shading of the analytic facade (numba): every render, depth map and ray hit of
`SceneGeometry` comes from these kernels."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from dataengine.camera import PINHOLE, Camera
from dataengine.synth.materials import CONCRETE, DOOR, GLASS, GROUND, METAL, REVEAL, ROOF, SKY, WALL

# ==================================================================================================
# Ray casting kernels (numba). Geometry arrays, all in the facade frame:
#   boxes (nb,6) [x0,y0,z0,x1,y1,z1] solid boxes in front of the wall, box_mat (nb,)
#   building (6,) the building block; its front face y = 0 has recessed openings
#   openings (no,5) [x0,x1,z0,z1,depth] window/door recesses cut into the front face, opening_mat (no,)
#   ground (4,) [x0,x1,y0,y1] extent of the ground plane z = 0
#   light (8,) sun direction (3, unit, towards the sun), ambient, diffuse, texture min wavelength,
#         ground-floor height, texture seed
# The kernels take them as one tuple, `facade` = (boxes, box_mat, building, openings, opening_mat,
# ground, light) (SceneGeometry.facade_arrays()).
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
def _nearest_hit(ox, oy, oz, dx, dy, dz, facade):
    """Nearest surface along o + t d (t > 0): (t, material, normal axis, normal sign, primitive)."""
    boxes, box_mat, building, openings, opening_mat, ground, _ = facade
    t_best, mat, axis, sign, prim = np.inf, SKY, -1, 0.0, -1
    # Ground plane z = 0, seen from above.
    if dz < 0.0 and oz > 0.0:
        tg = -oz / dz
        gx = ox + tg * dx
        gy = oy + tg * dy
        if ground[0] <= gx <= ground[1] and ground[2] <= gy <= ground[3]:
            t_best, mat, axis, sign, prim = tg, GROUND, 2, 1.0, -1
    # Building block, with recessed openings in its front face.
    tb, ab, sb = _slab_enter(
        ox, oy, oz, dx, dy, dz, building[0], building[1], building[2], building[3], building[4], building[5]
    )
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
        tk, ak, sk = _slab_enter(
            ox, oy, oz, dx, dy, dz, boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3], boxes[k, 4], boxes[k, 5]
        )
        if tk < t_best:
            t_best, mat, axis, sign, prim = tk, box_mat[k], ak, sk, k
    return t_best, mat, axis, sign, prim


@njit(cache=True)
def _in_sunlight(px, py, pz, mat, prim, facade):
    """Shadow ray towards the sun from a surface point (already offset along its normal)."""
    openings, light = facade[3], facade[6]
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
    t, m, a, s, k = _nearest_hit(px, py, pz, sx, sy, sz, facade)
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
        total += amp * fade * (_value_noise(x / wl + 17.31 * octave, y / wl + 31.77 * octave, salt + octave) - 0.5)
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
        edge = max(
            _filtered_lines(lu + frame, w_open, 2 * frame, wl), _filtered_lines(lv + frame, h_open, 2 * frame, wl)
        )
        mullion = max(
            _filtered_lines(lu - 0.5 * w_open + 0.03, 1e6, 0.06, wl),
            _filtered_lines(lv - 0.62 * h_open + 0.03, 1e6, 0.06, wl),
        )
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
def _shade(ox, oy, oz, dx, dy, dz, t, mat, axis, sign, prim, facade):
    """Lambertian colour (RGB in [0,1]) of the hit o + t d (`_nearest_hit`'s t, mat, axis, sign, prim)
    under sun + sky light with cast shadows; sky if no hit."""
    if mat == SKY:
        norm = math.sqrt(dx * dx + dy * dy + dz * dz)
        e = min(1.0, max(0.0, dz / norm))
        return 0.86 - 0.40 * e, 0.89 - 0.28 * e, 0.93 - 0.07 * e
    openings, light = facade[3], facade[6]
    px = ox + t * dx
    py = oy + t * dy
    pz = oz + t * dz
    r, g, b = _albedo(px, py, pz, axis, mat, prim, openings, light)
    n_dot_l = sign * light[axis]
    shade = light[3]
    if n_dot_l > 0.0:
        off = 1e-5
        sx = px + (off * sign if axis == 0 else 0.0)
        sy = py + (off * sign if axis == 1 else 0.0)
        sz = pz + (off * sign if axis == 2 else 0.0)
        if _in_sunlight(sx, sy, sz, mat, prim, facade):
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
def render_pinhole_kernel(
    K_inv,
    R_fc,
    C_f,
    width,
    height,
    supersample,
    want_colour,
    facade,
    depth,
    rgb,
):
    """Per pixel: z-depth at the pixel centre and (optionally) the colour, box-filtered over
    supersample x supersample sub-pixel rays."""
    ox, oy, oz = C_f[0], C_f[1], C_f[2]
    for v in prange(height):
        for u in range(width):
            dx, dy, dz, cz = _pixel_ray(K_inv, R_fc, float(u), float(v))
            t, mat, axis, sign, prim = _nearest_hit(ox, oy, oz, dx, dy, dz, facade)
            depth[v, u] = t * cz
            if not want_colour:
                continue
            if supersample == 1:
                r, g, b = _shade(ox, oy, oz, dx, dy, dz, t, mat, axis, sign, prim, facade)
                rgb[v, u, 0], rgb[v, u, 1], rgb[v, u, 2] = r, g, b
                continue
            for sv in range(supersample):
                for su in range(supersample):
                    fu = u + (su + 0.5) / supersample - 0.5
                    fv = v + (sv + 0.5) / supersample - 0.5
                    dx, dy, dz, cz = _pixel_ray(K_inv, R_fc, fu, fv)
                    t, mat, axis, sign, prim = _nearest_hit(ox, oy, oz, dx, dy, dz, facade)
                    r, g, b = _shade(ox, oy, oz, dx, dy, dz, t, mat, axis, sign, prim, facade)
                    rgb[v, u, 0] += r
                    rgb[v, u, 1] += g
                    rgb[v, u, 2] += b
            n = supersample * supersample
            rgb[v, u, 0] /= n
            rgb[v, u, 1] /= n
            rgb[v, u, 2] /= n


@njit(cache=True)
def _trace_into(i, ox, oy, oz, dx, dy, dz, want_colour, facade, t_out, mat_out, rgb_out):
    """Nearest hit of one ray (and its shaded colour if wanted) written to slot i of the outputs."""
    t, mat, axis, sign, prim = _nearest_hit(ox, oy, oz, dx, dy, dz, facade)
    t_out[i] = t
    mat_out[i] = mat
    if want_colour:
        r, g, b = _shade(ox, oy, oz, dx, dy, dz, t, mat, axis, sign, prim, facade)
        rgb_out[i, 0] = r
        rgb_out[i, 1] = g
        rgb_out[i, 2] = b


@njit(cache=True, parallel=True)
def cast_kernel(origins, dirs, want_colour, facade, t_out, mat_out, rgb_out):
    for i in prange(origins.shape[0]):
        ox, oy, oz = origins[i, 0], origins[i, 1], origins[i, 2]
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        _trace_into(i, ox, oy, oz, dx, dy, dz, want_colour, facade, t_out, mat_out, rgb_out)


@njit(cache=True, parallel=True)
def cast_camera_kernel(rays_n, R_fc, C_f, want_colour, facade, t_out, mat_out, rgb_out):
    """Cast camera rays given as pinhole-normalized (x/z, y/z) (N,2); t_out is the z-depth."""
    ox, oy, oz = C_f[0], C_f[1], C_f[2]
    for i in prange(rays_n.shape[0]):
        cx, cy = rays_n[i, 0], rays_n[i, 1]
        dx = R_fc[0, 0] * cx + R_fc[0, 1] * cy + R_fc[0, 2]
        dy = R_fc[1, 0] * cx + R_fc[1, 1] * cy + R_fc[1, 2]
        dz = R_fc[2, 0] * cx + R_fc[2, 1] * cy + R_fc[2, 2]
        _trace_into(i, ox, oy, oz, dx, dy, dz, want_colour, facade, t_out, mat_out, rgb_out)


@njit(cache=True, parallel=True)
def _thin_prism_pixel_rays_kernel(params, width, height, out):
    """Pinhole-normalized rays (H,W,2) through the COLMAP pixel centres of a THIN_PRISM_FISHEYE
    camera: per-pixel Newton inversion, the scalar twin of camera.thin_prism_unproject."""
    fx, fy, cx, cy = params[0], params[1], params[2], params[3]
    k1, k2, p1, p2, k3, k4, sx1, sy1 = (
        params[4],
        params[5],
        params[6],
        params[7],
        params[8],
        params[9],
        params[10],
        params[11],
    )
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

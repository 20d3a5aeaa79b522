"""The multi-view consistency test of COLMAP depth maps (`dataengine.mvs.consistency_filter`): a
reference pixel's 3-D point must land, in another view, on a depth that agrees and whose own point
projects back to the reference pixel."""

from __future__ import annotations

from dataengine.kernels._jit import kernel


@kernel
def _pixel_to_world(K, R, t, x, y, d):
    """The point at pixel position (x, y) and depth d of a camera (K, R, t: world → camera) in world
    coordinates: R^T (K^-1 (x, y, 1) d - t)."""
    px = (x - K[0, 2]) / K[0, 0] * d - t[0]
    py = (y - K[1, 2]) / K[1, 1] * d - t[1]
    pz = d - t[2]
    return (
        R[0, 0] * px + R[1, 0] * py + R[2, 0] * pz,
        R[0, 1] * px + R[1, 1] * py + R[2, 1] * pz,
        R[0, 2] * px + R[1, 2] * py + R[2, 2] * pz,
    )


@kernel
def _world_to_camera(R, t, X, Y, Z):
    return (
        R[0, 0] * X + R[0, 1] * Y + R[0, 2] * Z + t[0],
        R[1, 0] * X + R[1, 1] * Y + R[1, 2] * Z + t[1],
        R[2, 0] * X + R[2, 1] * Y + R[2, 2] * Z + t[2],
    )


@kernel
def count_consistent(ref, K_ref, R_ref, t_ref, other, K_o, R_o, t_o, depth_tol, reproj, rect, need, counts):
    """counts[v, u] += 1 for every reference pixel inside rect (u0, v0, u1, v1) that `other`
    confirms (the test: `dataengine.mvs`); pixels already confirmed `need` times are skipped."""
    ho, wo = other.shape
    for v in range(rect[1], rect[3]):
        for u in range(rect[0], rect[2]):
            d = ref[v, u]
            if d <= 0.0 or counts[v, u] >= need:
                continue
            # Reference pixel centre → world → other view.
            X, Y, Z = _pixel_to_world(K_ref, R_ref, t_ref, u + 0.5, v + 0.5, d)
            xo, yo, zo = _world_to_camera(R_o, t_o, X, Y, Z)
            if zo <= 0.0:
                continue
            uo = K_o[0, 0] * xo / zo + K_o[0, 2]
            vo = K_o[1, 1] * yo / zo + K_o[1, 2]
            if not (uo >= 0.0 and vo >= 0.0 and uo < wo and vo < ho):
                continue
            iu = int(uo)
            iv = int(vo)
            do = other[iv, iu]
            if do <= 0.0 or abs(zo - do) > depth_tol * do:
                continue
            # The other view's own point at that pixel, back into the reference view.
            X2, Y2, Z2 = _pixel_to_world(K_o, R_o, t_o, iu + 0.5, iv + 0.5, do)
            xr, yr, zr = _world_to_camera(R_ref, t_ref, X2, Y2, Z2)
            if zr <= 0.0:
                continue
            ur = K_ref[0, 0] * xr / zr + K_ref[0, 2]
            vr = K_ref[1, 1] * yr / zr + K_ref[1, 2]
            du = ur - (u + 0.5)
            dv = vr - (v + 0.5)
            if du * du + dv * dv <= reproj * reproj:
                counts[v, u] += 1

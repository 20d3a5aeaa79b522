"""The multi-view consistency test of COLMAP depth maps (`dataengine.mvs.consistency_filter`): a
reference pixel's 3-D point must land, in another view, on a depth that agrees and whose own point
projects back to the reference pixel."""

from __future__ import annotations

from dataengine.kernels._jit import kernel


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
            # Reference pixel centre → camera → world.
            xc = (u + 0.5 - K_ref[0, 2]) / K_ref[0, 0] * d
            yc = (v + 0.5 - K_ref[1, 2]) / K_ref[1, 1] * d
            zc = d
            px = xc - t_ref[0]
            py = yc - t_ref[1]
            pz = zc - t_ref[2]
            X = R_ref[0, 0] * px + R_ref[1, 0] * py + R_ref[2, 0] * pz
            Y = R_ref[0, 1] * px + R_ref[1, 1] * py + R_ref[2, 1] * pz
            Z = R_ref[0, 2] * px + R_ref[1, 2] * py + R_ref[2, 2] * pz
            # World → other view.
            xo = R_o[0, 0] * X + R_o[0, 1] * Y + R_o[0, 2] * Z + t_o[0]
            yo = R_o[1, 0] * X + R_o[1, 1] * Y + R_o[1, 2] * Z + t_o[1]
            zo = R_o[2, 0] * X + R_o[2, 1] * Y + R_o[2, 2] * Z + t_o[2]
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
            xo2 = (iu + 0.5 - K_o[0, 2]) / K_o[0, 0] * do - t_o[0]
            yo2 = (iv + 0.5 - K_o[1, 2]) / K_o[1, 1] * do - t_o[1]
            zo2 = do - t_o[2]
            X2 = R_o[0, 0] * xo2 + R_o[1, 0] * yo2 + R_o[2, 0] * zo2
            Y2 = R_o[0, 1] * xo2 + R_o[1, 1] * yo2 + R_o[2, 1] * zo2
            Z2 = R_o[0, 2] * xo2 + R_o[1, 2] * yo2 + R_o[2, 2] * zo2
            xr = R_ref[0, 0] * X2 + R_ref[0, 1] * Y2 + R_ref[0, 2] * Z2 + t_ref[0]
            yr = R_ref[1, 0] * X2 + R_ref[1, 1] * Y2 + R_ref[1, 2] * Z2 + t_ref[1]
            zr = R_ref[2, 0] * X2 + R_ref[2, 1] * Y2 + R_ref[2, 2] * Z2 + t_ref[2]
            if zr <= 0.0:
                continue
            ur = K_ref[0, 0] * xr / zr + K_ref[0, 2]
            vr = K_ref[1, 1] * yr / zr + K_ref[1, 2]
            du = ur - (u + 0.5)
            dv = vr - (v + 0.5)
            if du * du + dv * dv <= reproj * reproj:
                counts[v, u] += 1

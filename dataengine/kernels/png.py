"""PNG scanline filters of 1-byte pixels (None/Sub/Up/Average/Paeth): `dataengine.png` decodes whole
masks with `unfilter_gray8`; `laser.laser_points` unfilters a mask row by row inside its GT pass
with `unfilter_row`."""

from __future__ import annotations

import numpy as np

from dataengine.kernels._jit import kernel


@kernel
def unfilter_row(kind, src, up, row):
    """Undo one scanline's PNG filter (1-byte pixels): src = its filtered bytes (no filter-type
    byte), up = the row above (zeros for the first), row = the result. False for an invalid
    filter type."""
    width = row.size
    if kind == 0:
        for x in range(width):
            row[x] = src[x]
    elif kind == 1:  # Sub: + left
        left = 0
        for x in range(width):
            left = (src[x] + left) & 0xFF
            row[x] = left
    elif kind == 2:  # Up: + above
        for x in range(width):
            row[x] = (src[x] + up[x]) & 0xFF
    elif kind == 3:  # Average: + floor((left + above) / 2)
        left = 0
        for x in range(width):
            left = (src[x] + ((left + up[x]) >> 1)) & 0xFF
            row[x] = left
    elif kind == 4:  # Paeth: + whichever of left, above, upper-left is nearest left+above-upleft
        left = 0
        upleft = 0
        for x in range(width):
            above = np.int64(up[x])
            if above == upleft:  # then p == left: the predictor is left (uniform regions)
                left = (src[x] + left) & 0xFF
            else:
                pa = abs(above - upleft)  # |p - left|
                pb = abs(left - upleft)  # |p - above|
                pc = abs(left + above - 2 * upleft)  # |p - upleft|
                if pa <= pb and pa <= pc:
                    pred = left
                elif pb <= pc:
                    pred = above
                else:
                    pred = upleft
                left = (src[x] + pred) & 0xFF
            upleft = above
            row[x] = left
    else:
        return False
    return True


@kernel
def row_peak(row):
    m = np.uint8(0)
    for x in range(row.size):
        m = max(m, row[x])
    return np.int64(m)


@kernel
def unfilter_gray8(raw, out, y0):
    """Undo the PNG scanline filters of 1-byte pixels: raw = a band of scanlines (filter byte +
    width bytes each) → out rows y0, y0 + 1, ... (row y0 - 1 of out is the one above). Returns
    (first row with an invalid filter type or -1, maximum value of the band)."""
    width = out.shape[1]
    stride = width + 1
    zero = np.zeros(width, dtype=np.uint8)
    peak = 0
    for k in range(raw.size // stride):
        y = y0 + k
        up = out[y - 1] if y > 0 else zero
        if not unfilter_row(raw[k * stride], raw[k * stride + 1 : (k + 1) * stride], up, out[y]):
            return y, peak
        peak = max(peak, row_peak(out[y]))
    return -1, peak

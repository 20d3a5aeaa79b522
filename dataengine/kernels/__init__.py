"""Every numba kernel of the engine, by concept; the pixel modules (`images`, `depth`, `png`, `mvs`,
`undistort`) hold the Python-level logic and call these.

- `png`: PNG scanline unfiltering (1-byte pixels)
- `prism`: the THIN_PRISM_FISHEYE model and its distortion / undistortion grids
- `laser`: the GT pass of laser depth (laser points, valid / bad GT counts)
- `plane`: plane pooling of the laser points
- `footprint`: nearest / median / min pooling of k x k footprint samples
- `resample`: images into the output frame (area filter, bilinear footprints)
- `splat`: z-buffer and sparse point splatting
- `consistency`: the multi-view consistency test of COLMAP depth maps
- `codes`: pooling modes and plane status codes (plain Python: the CLI reads them without numba)

Every kernel is compiled with the one setting in `_jit` (`@kernel`). Big buffers are allocated by
the callers in numpy and passed in: numba's own np.full is ~4x slower than numpy's at 24-megapixel
size.
"""

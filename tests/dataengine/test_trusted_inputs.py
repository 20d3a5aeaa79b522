"""Issue 22, engine side: held-out builds as documented, a frame cache that cannot go stale, photo
modes, COLMAP poses / calibrations / truncated models, the shared depth range rule and rigs —
through the real CLI (fresh interpreters), on tiny synthetic scenes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = ["--size", "28", "--samples-per-shard", "1", "--workers", "1", "--quiet"]


def run_cli(*args, check=True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dataengine", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_error(proc: subprocess.CompletedProcess, *parts: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [t for t in proc.stderr.splitlines() if t.strip() and not t.startswith("WARNING ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


# ------------------------------------------------------------------------------ fixtures (tiny, shared)
@pytest.fixture(scope="module")
def eth3d_short(tmp_path_factory) -> Path:
    """An ETH3D root with two short scenes (10 and 13 frames), far fewer than the held-out --frames 100."""
    from dataengine.synth import generate_scene

    root = tmp_path_factory.mktemp("eth3d_short")
    generate_scene(root, scene="short_a", images=10, scale=0.03, seed=1)
    generate_scene(root, scene="short_b", images=13, scale=0.03, seed=2)
    return root


@pytest.fixture(scope="module")
def colmap_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colmap22")
    run_cli("synth", "--format", "colmap", root, "--scene", "cap", "--images", "6", "--scale", "0.1", "--seed", "5")
    return root


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# ------------------------------------------------------------------------------ 1. held-out builds
def test_heldout_uniform_100_on_short_eth3d_scenes_takes_every_frame(eth3d_short, tmp_path):
    """`make heldout-shards`' all-frames build: --sampling uniform --frames 100 on scenes of 10 and 13 frames."""
    out = tmp_path / "all_frames"
    run_cli("build", "--root", eth3d_short, "--out", out, "--scenes", "short_a,short_b", "--sampling", "uniform",
            "--frames", "100", *TINY)  # fmt: skip
    manifest = read_manifest(out)
    assert list(manifest["splits"]) == ["test"] and manifest["splits"]["test"]["samples"] == 2
    per = manifest["per_scene"]
    assert (per["short_a"]["test_frames"], per["short_b"]["test_frames"]) == (10, 13)
    assert (per["short_a"]["scene_frames"], per["short_b"]["scene_frames"]) == (10, 13)
    import tarfile

    counts = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".cameras.json"):
                    cams = json.loads(tf.extractfile(m).read())
                    counts[cams["scene"]] = [f["index"] for f in cams["frames"]]
    assert counts == {"short_a": list(range(10)), "short_b": list(range(13))}
    assert "OK" in run_cli("verify", out).stdout
    # the random 10-frame protocol too (10 of 10 and 10 of 13 frames)
    out10 = tmp_path / "random10"
    run_cli("build", "--root", eth3d_short, "--out", out10, "--scenes", "short_a,short_b", "--sampling", "random",
            "--frames", "10", "--seed", "0", *TINY)  # fmt: skip
    assert [s["test_frames"] for s in read_manifest(out10)["per_scene"].values()] == [10, 10]


def test_colmap_evaluation_build(colmap_project, tmp_path):
    """`--format colmap --sampling uniform|random` used to render every frame and end in `Error: train`."""
    for mode, frames, expect in (("uniform", 100, 6), ("random", 4, 4)):
        out = tmp_path / mode
        run_cli("build", "--format", "colmap", "--root", colmap_project, "--out", out, "--sampling", mode,
                "--frames", frames, *TINY)  # fmt: skip
        manifest = read_manifest(out)
        assert list(manifest["splits"]) == ["test"]
        assert manifest["per_scene"]["cap"]["test_frames"] == expect
        assert "`test` only" in (out / "README.md").read_text()
        assert "OK" in run_cli("verify", out).stdout


# ------------------------------------------------------------------------------ 2. the frame cache
def cached_frames(out: Path) -> dict[str, set[str]]:
    """Frame stem → cache file names (one per distinct key ever rendered)."""
    names: dict[str, set[str]] = {}
    for p in (out / ".frame-cache").rglob("*.npz"):
        names.setdefault(p.name.split(".")[0], set()).add(p.name)
    return names


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """Replace a file's bytes but restore its size-independent mtime (as `cp -p` / `touch -d` would)."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _edit_line(path: Path, first_field: str, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    i = next(i for i, t in enumerate(lines) if not t.startswith("#") and t.split()[:1] == [first_field])
    tok = lines[i].split()
    lines[i] = " ".join(edit(tok)) + "\n"
    path.write_text("".join(lines))


def test_frame_cache_key_covers_every_input(tmp_path):
    """Change each input of one frame in turn, rebuild with --keep-cache: exactly the frames whose
    bytes depend on it render again; in the end the cached build equals a fresh one byte for byte."""
    from dataengine.synth import generate_scene

    root = tmp_path / "eth3d"
    generate_scene(root, scene="c", images=4, scale=0.03, seed=0)
    scene = root / "c"
    calib = scene / "dslr_calibration_undistorted"
    photos = sorted((scene / "images" / "dslr_images_undistorted").iterdir())
    stems = [p.stem for p in photos]
    out = tmp_path / "out"
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig
    from dataengine.windows import WindowConfig

    def rebuild(*extra) -> set[str]:
        """`build --keep-cache` in process (a CLI run per input costs an interpreter each)."""
        options = dict(zip(extra[::2], extra[1::2], strict=True))
        size = int(options.get("--size", 28))
        cfg = BuildConfig(
            root=root, out=out, scenes=("c",), width=size, height=size, depth=options.get("--depth", "auto"),
            windows=WindowConfig(frames=2, stride=2), workers=1, samples_per_shard=1, keep_cache=True, progress=False,
        )  # fmt: skip
        before = cached_frames(out)
        build_shards(cfg)
        after = cached_frames(out)
        return {s for s in after if after[s] - before.get(s, set())}

    assert rebuild() == set(stems)
    assert rebuild() == set()  # unchanged inputs reuse the cache
    target = photos[1]
    # the photo: other bytes, same size, mtime restored
    from PIL import Image

    img = np.asarray(Image.open(target))
    buf = io.BytesIO()
    Image.fromarray(255 - img).save(buf, format="JPEG", quality=90)
    _rewrite_keeping_mtime(target, buf.getvalue())
    assert rebuild() == {target.stem}
    # the laser depth map
    gt = scene / "ground_truth_depth" / "dslr_images" / target.name
    depth = np.fromfile(gt, "<f4")
    depth[depth > 0] *= 1.01
    _rewrite_keeping_mtime(gt, depth.tobytes())
    assert rebuild() == {target.stem}
    # the mask
    mask = scene / "masks_for_images" / "dslr_images" / f"{target.stem}.png"
    if mask.exists():
        m = np.asarray(Image.open(mask)).copy()
        m[: m.shape[0] // 2] = 1
        Image.fromarray(m).save(mask)
        assert rebuild() == {target.stem}
    # the calibration (focal length of the target's camera: every frame of that camera) and one pose
    image_lines = [t.split() for t in (calib / "images.txt").read_text().splitlines() if t.upper().endswith(".JPG")]
    image_id, camera_id = next((t[0], t[8]) for t in image_lines if t[-1].endswith(target.name))
    same_camera = {Path(t[-1]).stem for t in image_lines if t[8] == camera_id}
    _edit_line(calib / "cameras.txt", camera_id, lambda t: t[:4] + [repr(float(t[4]) * 1.01)] + t[5:])
    assert rebuild() == same_camera
    _edit_line(calib / "images.txt", image_id, lambda t: t[:5] + [repr(float(t[5]) + 0.01)] + t[6:])
    for other in ("dslr_calibration_jpg",):  # the distorted calibration must agree on poses
        _edit_line(scene / other / "images.txt", image_id, lambda t: t[:5] + [repr(float(t[5]) + 0.01)] + t[6:])
    assert rebuild() == {target.stem}
    # sparse depth: move one point (same count): every sparse frame's z-buffer reads it
    assert rebuild("--depth", "sparse") == set(stems)
    first_point = next(t.split()[0] for t in (calib / "points3D.txt").read_text().splitlines() if t[:1] != "#")
    _edit_line(calib / "points3D.txt", first_point, lambda t: [t[0], repr(float(t[1]) + 0.5)] + t[2:])
    assert rebuild("--depth", "sparse") == set(stems)
    # an option
    assert rebuild("--depth", "sparse", "--size", "42") == set(stems)
    # the cached build is the fresh build
    fresh = tmp_path / "fresh"
    run_cli("build", "--root", root, "--out", fresh, "--scenes", "c", "--frames", "2", "--stride", "2",
            "--depth", "sparse", *TINY, "--size", "42")  # fmt: skip
    tars = sorted(p.name for p in fresh.glob("*.tar"))
    assert tars and all((out / n).read_bytes() == (fresh / n).read_bytes() for n in tars)


# ------------------------------------------------------------------------------ 3. photo modes
def _photo_bytes(im, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode",
    ["RGB", "L", "I;16", "I", "F", "LA", "RGBA", "P", "CMYK", "1"],
)
def test_every_photo_mode_decodes_to_its_8bit_rgb(mode):
    """Each Pillow mode a PNG/TIFF photo can arrive in: the decoded 8-bit RGB is the photo's content
    (16-bit scaled by 65535 → 255, floats from [0, 1]), never a constant frame."""
    from PIL import Image

    from dataengine.undistort import SourceCamera, decode_photo

    h, w = 24, 32
    yy, xx = np.mgrid[0:h, 0:w]
    grey8 = ((xx * 7 + yy * 3) % 256).astype(np.uint8)
    rgb8 = np.stack([grey8, 255 - grey8, (grey8 // 2 + 60).astype(np.uint8)], axis=2)
    expect = np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "RGB":
        im, expect = Image.fromarray(rgb8), rgb8
    elif mode == "L":
        im = Image.fromarray(grey8)
    elif mode == "I;16":
        im = Image.fromarray(grey8.astype(np.uint16) * 257)
    elif mode == "I":
        im = Image.fromarray(grey8.astype(np.int32) * 257)
    elif mode == "F":
        im = Image.fromarray(grey8.astype(np.float32) / 255)
    elif mode == "LA":
        im = Image.fromarray(grey8).convert("LA")
    elif mode == "RGBA":
        im, expect = Image.fromarray(rgb8).convert("RGBA"), rgb8
    elif mode == "P":
        im = Image.fromarray(grey8).convert("P")
        expect = np.asarray(im.convert("RGB"))  # the palette's colours
    elif mode == "CMYK":
        im, expect = Image.fromarray(rgb8).convert("CMYK"), rgb8
    else:  # "1": black and white
        im = Image.fromarray(((grey8 > 127) * 255).astype(np.uint8)).convert("1")
        expect = np.repeat(((grey8 > 127) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    assert im.mode == mode
    data = _photo_bytes(im, "TIFF" if mode in ("I", "F", "CMYK") else "PNG")
    cam = SourceCamera(1, "PINHOLE", w, h, (30.0, 30.0, 16.0, 12.0))
    got = decode_photo(data, cam, 1, Path(f"photo_{mode}.png"))
    assert got.dtype == np.uint8 and got.shape == (h, w, 3)
    assert got.std() > 30  # not a constant frame
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "values, words",
    [
        (np.full((24, 32), 3.5, np.float32), "not [0, 1]"),
        (np.full((24, 32), np.nan, np.float32), "NaN"),
        (np.full((24, 32), 70000, np.int32), "beyond 16 bits"),
    ],
)
def test_photo_modes_without_a_safe_8bit_reading_are_refused(values, words):
    from PIL import Image

    from dataengine.errors import BadInputError
    from dataengine.undistort import SourceCamera, decode_photo

    data = _photo_bytes(Image.fromarray(values), "TIFF")
    cam = SourceCamera(1, "PINHOLE", 32, 24, (30.0, 30.0, 16.0, 12.0))
    with pytest.raises(BadInputError, match="bad.tif") as info:
        decode_photo(data, cam, 1, Path("bad.tif"))
    assert words in str(info.value)


def test_16bit_photo_through_the_cli(colmap_project, tmp_path):
    """A 16-bit greyscale PNG in a COLMAP project builds to the photo's grey levels (it was all white)."""
    from PIL import Image

    project = tmp_path / "p"
    shutil.copytree(colmap_project, project)
    photos = sorted(p for p in (project / "cap" / "images").rglob("*") if p.is_file())
    for photo in photos:
        grey = np.asarray(Image.open(photo).convert("L")).astype(np.uint16) * 257
        photo.write_bytes(_photo_bytes(Image.fromarray(grey)))
    out = tmp_path / "o"
    run_cli("build", "--format", "colmap", "--root", project, "--out", out, "--sampling", "uniform", "--frames", "2",
            *TINY)  # fmt: skip
    import tarfile

    import simplejpeg

    with tarfile.open(next(out.glob("*.tar"))) as tf:
        jpgs = [simplejpeg.decode_jpeg(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".jpg")]
    assert jpgs and all(j.mean() < 240 and j.std() > 5 for j in jpgs)


# ------------------------------------------------------------------------------ 4, 6, 7. COLMAP models
EVAL_ALL = ["--depth", "sparse", "--sampling", "uniform", "--frames", "100", *TINY]


@pytest.fixture(scope="module")
def text_project(colmap_project, tmp_path_factory) -> Path:
    """The project as an older COLMAP writes it: text model, poses in images.txt (no rigs/frames)."""
    from dataengine.synth.colmap_project import convert_model

    root = tmp_path_factory.mktemp("text_project")
    shutil.copytree(colmap_project / "cap", root / "cap", ignore=shutil.ignore_patterns("dense"))
    model = root / "cap" / "sparse" / "0"
    convert_model(model, "text")
    for extra in ("rigs.txt", "frames.txt"):
        (model / extra).unlink(missing_ok=True)
    return root


def _copy(project: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "proj"
    shutil.copytree(project, root)
    return root, root / "cap" / "sparse" / "0"


def _data_line(path: Path, nth: int = 0) -> tuple[list[str], int, list[str]]:
    """(all lines, index of the nth data header line, its tokens)."""
    lines = path.read_text().splitlines()
    heads = [i for i, t in enumerate(lines) if t and not t.startswith("#")]
    if path.name == "images.txt":
        heads = [
            i for i in heads if len(lines[i].split()) == 10 and not lines[i].split()[-1].replace(".", "").isdigit()
        ]
    return lines, heads[nth], lines[heads[nth]].split()


def _set_quaternion(model: Path, quat) -> tuple[int, str]:
    lines, i, tok = _data_line(model / "images.txt")
    tok[1:5] = [repr(float(v)) for v in quat(np.array([float(v) for v in tok[1:5]]))]
    lines[i] = " ".join(tok)
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    return i + 1, tok[-1]


@pytest.mark.parametrize("quat", ["norm_2", "zero"])
def test_colmap_quaternion_off_unit_is_an_error(text_project, tmp_path, quat):
    root, model = _copy(text_project, tmp_path)
    edit = (lambda q: 2 * q) if quat == "norm_2" else (lambda q: 0 * q)
    lineno, name = _set_quaternion(model, edit)
    proc = run_cli("build", "--format", "colmap", "--root", root, "--out", tmp_path / "o", *EVAL_ALL, check=False)
    one_error(proc, f"images.txt:{lineno}", name, "quaternion", "norm")
    # the binary model of the same poses: named by its file
    from dataengine.synth.colmap_project import convert_model

    convert_model(model, "binary")
    proc = run_cli("build", "--format", "colmap", "--root", root, "--out", tmp_path / "o2", *EVAL_ALL, check=False)
    one_error(proc, ".bin", name, "quaternion")


def test_colmap_quaternion_within_tolerance_is_normalised(text_project, tmp_path):
    import tarfile

    root, model = _copy(text_project, tmp_path)
    _, name = _set_quaternion(model, lambda q: 1.0008 * q)
    out = tmp_path / "o"
    run_cli("build", "--format", "colmap", "--root", root, "--out", out, *EVAL_ALL)
    with tarfile.open(next(out.glob("*.tar"))) as tf:
        cams = json.loads(next(tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".json")))
    frame = next(f for f in cams["frames"] if f["name"] == name)
    R = np.array(frame["extrinsics"])[:, :3]
    assert np.abs(R @ R.T - np.eye(3)).max() < 1e-12


def _truncate_points(model: Path):
    lines = (model / "points3D.txt").read_text().splitlines()
    keep = len(lines) // 2
    (model / "points3D.txt").write_text("\n".join(lines[:keep]) + "\n")
    return ["points3D.txt", "does not hold"]


def _camera_param(index: int | None, value: str, words: str):
    def edit(model: Path):
        lines, i, tok = _data_line(model / "cameras.txt")
        if index is None:  # the size
            tok[2] = value
        else:
            tok[4 + index] = value
        lines[i] = " ".join(tok)
        (model / "cameras.txt").write_text("\n".join(lines) + "\n")
        return ["cameras.txt", words] if value == "nan" else ["cameras.txt", f"camera {tok[0]}", words]

    return edit


def _duplicate_name(model: Path):
    lines, i, first = _data_line(model / "images.txt", 0)
    _, j, second = _data_line(model / "images.txt", 1)
    second[-1] = first[-1]
    lines[j] = " ".join(second)
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    return ["images.txt", first[-1], "share the name"]


@pytest.mark.parametrize(
    "edit",
    [
        _truncate_points,
        _camera_param(0, "-300", "focal length"),
        _camera_param(0, "0", "focal length"),
        _camera_param(0, "nan", "not finite"),
        _camera_param(2, "1e6", "principal point"),
        _camera_param(None, "0", "size"),
        _duplicate_name,
    ],
    ids=[
        "truncated_points3D",
        "negative_focal",
        "zero_focal",
        "nan_focal",
        "principal_point_far",
        "zero_width",
        "duplicate_name",
    ],
)
def test_colmap_model_errors_name_the_file(text_project, tmp_path, edit):
    root, model = _copy(text_project, tmp_path)
    parts = edit(model)
    proc = run_cli("build", "--format", "colmap", "--root", root, "--out", tmp_path / "o", *EVAL_ALL, check=False)
    message = one_error(proc, *parts)
    assert "--undistort-fov full" not in message
    assert not (tmp_path / "o" / "manifest.json").exists()


# ------------------------------------------------------------------------------ 5. one depth range rule
def _depth_members(out: Path) -> list[np.ndarray]:
    import tarfile

    depths = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            depths += [np.load(io.BytesIO(tf.extractfile(m).read())) for m in tf.getmembers() if "depth" in m.name]
    return depths


def test_depth_range_rule_large_units_valid_absurd_refused(colmap_project, tmp_path):
    """One rule (shardformat.depth_range) for build, verify and the trainer's decoder, in the shard's
    units: `--metric-scale 2000` (depths ~1e4, beyond the old 10 km metre bound) builds, verifies and
    decodes; a scale that puts depth at ~1e28 is refused by the build naming the depth map."""
    from shardformat import MAX_DEPTH, depth_range_problem
    from trainer.data.decode import _check_depth_mask

    out = tmp_path / "large"
    run_cli("build", "--format", "colmap", "--root", colmap_project, "--out", out, "--metric-scale", "2000",
            "--sampling", "uniform", "--frames", "100", *TINY)  # fmt: skip
    assert "OK" in run_cli("verify", out).stdout
    depths = _depth_members(out)
    assert max(float(d.max()) for d in depths) > 1e4  # the old trainer bound (10 km) refused these
    for d in depths:
        for i, frame in enumerate(d):
            _check_depth_mask("shard", i, frame.astype(np.float32), frame > 0)  # the trainer accepts them

    absurd = ["--metric-scale", "1e27", "--sampling", "uniform", "--frames", "100", *TINY]
    proc = run_cli("build", "--format", "colmap", "--root", colmap_project, "--out", tmp_path / "absurd", *absurd,
                   check=False)  # fmt: skip
    one_error(proc, "depth_maps", "outside 0..1e+06")
    assert not (tmp_path / "absurd" / "manifest.json").exists()

    # the rule itself, and the same rule in verify and the decoder
    assert depth_range_problem(np.array([0.0, 1.0, MAX_DEPTH])) is None
    assert "1 values outside" in depth_range_problem(np.array([0.0, 1e30], np.float32))
    assert "non-finite" in depth_range_problem(np.array([np.nan, 1.0]))
    assert "1 values outside" in depth_range_problem(np.array([-1.0, 1.0]))
    from shardformat import ShardError

    with pytest.raises(ShardError, match="outside 0..1e"):
        _check_depth_mask("shard", 0, np.array([[1e30, 1.0]], np.float32), np.array([[True, True]]))


def test_verify_applies_the_depth_range_rule(colmap_project, tmp_path):
    """A shard whose depth holds 1e30 (hashes updated, as a tampered or foreign writer would) fails verify."""
    import hashlib
    import tarfile

    out = tmp_path / "o"
    run_cli("build", "--format", "colmap", "--root", colmap_project, "--out", out, "--sampling", "uniform",
            "--frames", "3", *TINY)  # fmt: skip
    tar = next(out.glob("*.tar"))
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    rewritten = tmp_path / "new.tar"
    with tarfile.open(rewritten, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            if m.name.endswith(".depth.npy"):
                depth = np.load(io.BytesIO(data))
                depth[depth > 0] = 1e30
                buf = io.BytesIO()
                np.save(buf, depth)
                data = buf.getvalue()
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    shutil.move(rewritten, tar)
    manifest = read_manifest(out)
    shard = manifest["splits"]["test"]["shards"][0]
    shard.update(sha256=hashlib.sha256(tar.read_bytes()).hexdigest(), bytes=tar.stat().st_size)
    (out / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("verify", out, check=False)
    assert proc.returncode == 1 and "depth.npy" in proc.stderr and "outside 0..1e+06" in proc.stderr


# ------------------------------------------------------------------------------ 9. pycolmap + Pillow
PNG_AFTER_PYCOLMAP = (
    "import pycolmap\nfrom PIL import Image\nimport numpy as np\nimport io\n"
    "Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(io.BytesIO(), format='PNG')\nprint('png ok')\n"
)


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_png_write_after_import_dataengine_then_pycolmap():
    """dataengine loads the system zlib before pycolmap can hijack its symbols (dataengine/zlib_first.py)."""
    proc = _run_python("import dataengine\n" + PNG_AFTER_PYCOLMAP)
    assert proc.returncode == 0 and "png ok" in proc.stdout, proc.stderr[-2000:]


def test_png_write_after_import_pycolmap_in_the_environment():
    """Exactly a user's script: `import pycolmap; from PIL import Image; <write a PNG>` (aborted with
    `free(): invalid pointer`); the environment's .pth hook (make setup) loads zlib first."""
    import sysconfig

    from dataengine.zlib_first import PTH_NAME

    hook = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    assert hook.is_file(), f"{hook} missing: `make setup` installs it (`python -m dataengine.zlib_first --install`)"
    proc = _run_python(PNG_AFTER_PYCOLMAP)
    assert proc.returncode == 0 and "png ok" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------------------ 8. rigs
def test_rig_split_by_rig_frame_and_windows_inside_one_camera(tmp_path):
    """Two cameras of a rig in camera folders (cam0/0001.jpg, cam1/0001.jpg, ...): the val tail holds
    whole rig frames (no simultaneous rig mate in train) and no window straddles two cameras."""
    import tarfile

    from dataengine.synth.colmap_project import convert_model

    root = tmp_path / "rig"
    run_cli("synth", "--format", "colmap", root, "--scene", "cap", "--images", "8", "--scale", "0.06",
            "--seed", "2", "--no-dense")  # fmt: skip
    scene = root / "cap"
    model = scene / "sparse" / "0"
    convert_model(model, "text")
    shutil.rmtree(scene / "masks", ignore_errors=True)
    lines = (model / "images.txt").read_text().splitlines()
    heads = [i for i, t in enumerate(lines) if t and t[0] != "#" and len(t.split()) == 10 and "/" in t.split()[-1]]
    old_names = sorted(lines[i].split()[-1] for i in heads)
    new_names = {old: f"cam{k % 2}/{k // 2 + 1:04d}.jpg" for k, old in enumerate(old_names)}
    for i in heads:
        tok = lines[i].split()
        tok[-1] = new_names[tok[-1]]
        lines[i] = " ".join(tok)
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    moved = tmp_path / "photos"
    shutil.move(scene / "images", moved)
    for old, new in new_names.items():
        (scene / "images" / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(moved / old, scene / "images" / new)
    out = tmp_path / "out"
    run_cli("build", "--format", "colmap", "--root", root, "--out", out, "--frames", "2", "--stride", "1",
            "--val-fraction", "0.3", "--depth", "sparse", *TINY)  # fmt: skip
    windows: dict[str, list[list[str]]] = {"train": [], "val": []}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".cameras.json"):
                    cams = json.loads(tf.extractfile(m).read())
                    windows[cams["split"]].append([f["name"] for f in cams["frames"]])
    assert windows["train"] and windows["val"]
    for split_windows in windows.values():
        for win in split_windows:
            assert len({name.split("/")[0] for name in win}) == 1, win  # one camera per window
    shots = {s: {n.split("/")[1] for w in ws for n in w} for s, ws in windows.items()}
    assert not shots["train"] & shots["val"], shots  # no rig frame on both sides
    rig = read_manifest(out)["per_scene"]["cap"]["rig"]
    assert rig["cameras"] == 2 and rig["rig_frames"] == 4 and rig["detected_by"] == "camera folders"


# ------------------------------------------------------------------------------ 10, 11. warnings, messages
def test_colmap_warnings_recorded_and_units_carried(text_project, tmp_path):
    """Unregistered photos in images/, a second model in sparse/1 and a field of view far wider than
    the lenses are warnings in the manifest; `inspect` says the shard's units, not metres."""
    root, model = _copy(text_project, tmp_path)
    project = root / "cap"
    some_photo = next(p for p in (project / "images").rglob("*.jpg"))
    (project / "images" / "extra").mkdir()
    shutil.copy(some_photo, project / "images" / "extra" / "unregistered_0001.jpg")
    shutil.copytree(model, project / "sparse" / "1")
    out = tmp_path / "o"
    run_cli("build", "--format", "colmap", "--root", project, "--out", out, "--undistort-fov", "160", *EVAL_ALL)
    warnings = "\n".join(read_manifest(out)["warnings"])
    assert "extra/unregistered_0001.jpg" in warnings and "not registered" in warnings
    assert "several models" in warnings
    assert "blank" in warnings and "--undistort-fov" in warnings
    report = run_cli("inspect", out, "--png", tmp_path / "sheet.png").stdout
    assert "arbitrary (COLMAP)" in report and " m, fx" not in report


def test_colmap_messages_name_the_right_thing(text_project, tmp_path):
    project = text_project / "cap"
    # --root is the project itself: its path once, not <root>/cap/cap
    proc = run_cli("build", "--format", "colmap", "--root", project, "--out", tmp_path / "o", "--frames", "50",
                   *TINY, check=False)  # fmt: skip
    message = one_error(proc, str(project), "fewer than --frames 50")
    assert f"{project}/cap" not in message
    # ETH3D format on a COLMAP project: says which format it is
    for root in (project, text_project):
        proc = run_cli("build", "--root", root, "--out", tmp_path / "e", *TINY, check=False)
        one_error(proc, "did you mean `--format colmap`")


def test_nan_and_negative_mvs_depth_is_a_recorded_warning(colmap_project, tmp_path):
    from dataengine.mvs import read_depth_map, write_depth_map

    root = tmp_path / "p"
    shutil.copytree(colmap_project, root)
    maps = sorted((root / "cap" / "dense" / "stereo" / "depth_maps").rglob("*.geometric.bin"))
    depth = read_depth_map(maps[0]).copy()
    depth[:3, :] = np.nan
    depth[3:5, :] = -1.0
    write_depth_map(maps[0], depth)
    out = tmp_path / "o"
    run_cli("build", "--format", "colmap", "--root", root, "--out", out, "--sampling", "uniform", "--frames", "100",
            *TINY)  # fmt: skip
    warnings = "\n".join(read_manifest(out)["warnings"])
    assert "NaN/infinite/negative" in warnings and f"({5 * depth.shape[1]})" in warnings, warnings


def test_rig_from_model_frames_and_rig_windows():
    """Images sharing a pycolmap frame (COLMAP >= 3.12 rigs) are a rig whatever their names; distinct
    frames and names without camera folders are not; rig_windows never mixes cameras or rig frames."""
    from types import SimpleNamespace as F

    from dataengine.colmap_project import rig_members
    from dataengine.windows import WindowConfig, rig_windows

    shots = [F(name=f"img_{k:03d}_{c}.jpg", camera_id=c, rig_frame=str(k)) for k in range(6) for c in (1, 2)]
    shots.sort(key=lambda f: f.name)
    rig = rig_members(shots)
    assert rig["by"] == "model frames" and len({m for m in rig["members"]}) == 12
    assert rig_members([F(name=f"a/{k}.jpg", camera_id=1, rig_frame=str(k)) for k in range(4)]) is None
    cfg = WindowConfig(frames=2, stride=1, val_fraction=0.3)
    wins = rig_windows("s", rig["members"], cfg)
    for split in wins.values():
        for win in split:
            assert len({rig["members"][i][0] for i in win}) == 1
    train = {rig["members"][i][1] for w in wins["train"] for i in w}
    val = {rig["members"][i][1] for w in wins["val"] for i in w}
    assert train and val and not train & val
    assert val == {"frame 4", "frame 5"}  # the last rig frames, both cameras

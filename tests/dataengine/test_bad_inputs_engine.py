"""Bad inputs, faults and operator errors through the REAL data-engine CLI (fresh interpreters).

Every case mutates a copy of one tiny synthetic ETH3D scene (or passes bad arguments) and runs
`python -m dataengine ...` in a subprocess. It asserts the exit status, that a failure is ONE
`Error:` line naming the file (and line, where one exists), that no traceback is printed, and
that nothing claiming success is left behind (no manifest.json, no shard, no temporary file).
Cases that are legitimate (a recorded skip, a recorded warning, frames without supervision) exit
0 and must be recorded in the manifest. File-system faults (disk full, a kill -9 in the middle of
a write, a read-only folder even for root) are injected by tests/fault_cli.py, which runs the same
CLI entry point.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

SCENE = "tiny"
FAULT_CLI = Path(__file__).parents[1] / "fault_cli.py"
BUILD = ["--size", "28", "--frames", "2", "--stride", "2", "--samples-per-shard", "2", "--workers", "1", "--quiet"]
UNDIST = "dslr_calibration_undistorted"
GT = "ground_truth_depth/dslr_images"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """An ETH3D root with one 6-image scene at scale 0.05 (laser GT, masks, sparse points)."""
    from dataengine.synth import generate_scene

    root = tmp_path_factory.mktemp("tiny_eth3d")
    generate_scene(root, scene=SCENE, images=6, scale=0.05, seed=0)
    return root


@pytest.fixture(scope="module")
def good_build(tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "shards"
    res = run_cli(["build", "--root", str(tiny_root), "--out", str(out), "--scenes", SCENE, *BUILD])
    assert res.returncode == 0, res.stderr
    return out


def run_cli(
    args: list[str], env: dict | None = None, fault: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {}), **(fault or {})}
    full_env.pop("DATAENGINE_DEBUG", None) if "DATAENGINE_DEBUG" not in (env or {}) else None
    cmd = [sys.executable, str(FAULT_CLI)] if fault else [sys.executable, "-m", "dataengine"]
    return subprocess.run(cmd + args, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120)


# ------------------------------------------------------------------------------------ input mutations
def images_txt(scene: Path) -> Path:
    return scene / UNDIST / "images.txt"


def header_lines(path: Path) -> list[int]:
    """0-based indices of the image header lines of an images.txt (comments skipped, 2 lines each)."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("#") or not lines[i].strip():
            i += 1
            continue
        out.append(i)
        i += 2
    return out


def nth_file(scene: Path, folder: str, n: int = 2) -> Path:
    return sorted((scene / folder).iterdir())[n]


def write_gt_values(scene: Path, values: dict[int, float]) -> Path:
    path = nth_file(scene, GT)
    depth = np.fromfile(path, "<f4")
    for index, value in values.items():
        depth[index] = value
    depth.tofile(path)
    return path


def scale_quaternion(scene: Path, factor: float) -> tuple[Path, int]:
    """Scale the 2nd image's quaternion in BOTH calibrations (they must agree to pass the pose check)."""
    result = None
    for calib in (UNDIST, "dslr_calibration_jpg"):
        path = scene / calib / "images.txt"
        lines = path.read_text().splitlines(keepends=True)
        i = header_lines(path)[1]
        tok = lines[i].split()
        tok[1:5] = [repr(float(v) * factor) for v in tok[1:5]]
        lines[i] = " ".join(tok) + "\n"
        path.write_text("".join(lines))
        if calib == UNDIST:
            result = (path, i + 1)
    return result


# ------------------------------------------------------------------------------------------ the table
@dataclass
class Case:
    name: str
    # (root, scene dir, out dir) -> (CLI args, expected message parts); may mutate the scene copy
    setup: Callable
    rc: int = 1
    fault: dict | None = None
    check: Callable | None = None  # (out, result) -> None, extra assertions (e.g. the manifest)
    env: dict = field(default_factory=dict)


def build_args(root, out, *extra, scenes=SCENE):
    return ["build", "--root", str(root), "--out", str(out), "--scenes", scenes, *BUILD, *extra]


def _sparse_without_points(root, scene, out):
    (scene / UNDIST / "points3D.txt").unlink()
    return build_args(root, out, "--depth", "sparse"), [str(scene / UNDIST / "points3D.txt"), "file not found"]


def _empty_points_auto_without_gt(root, scene, out):
    (scene / UNDIST / "points3D.txt").write_text("# no points\n")
    shutil.rmtree(scene / "ground_truth_depth")  # auto → sparse for the whole scene
    return build_args(root, out), [str(scene / UNDIST / "points3D.txt"), "holds no points"]


def _empty_images_txt(root, scene, out):
    path = images_txt(scene)
    path.write_text("".join(t for t in path.read_text().splitlines(keepends=True) if t.startswith("#")))
    return build_args(root, out), [str(path), "lists no images"]


def _every_image_skipped(root, scene, out):
    for jpg in (scene / "images" / "dslr_images_undistorted").iterdir():
        jpg.write_bytes(jpg.read_bytes()[:300])
    return build_args(root, out, "--skip-bad"), [str(scene), "no usable frame after skipping"]


def _frames_larger_than_scene(root, scene, out):
    return build_args(root, out, "--frames", "50"), [str(scene), "6 usable frames", "--frames 50"]


def _gt_huge_value(root, scene, out):
    path = write_gt_values(scene, {1000: 3e38})
    return build_args(root, out), [str(path), "1 bad GT depth values", "> 1000 m"]


def _gt_negative_and_minus_inf(root, scene, out):
    path = write_gt_values(scene, {10: -2.0, 11: -np.inf, 12: 0.0})
    return build_args(root, out), [str(path), "3 bad GT depth values", "1 -inf", "2 <= 0"]


def _gt_nan_nearest_pooling(root, scene, out):
    path = write_gt_values(scene, {5: np.nan})
    return build_args(root, out, "--pooling", "nearest"), [str(path), "1 NaN"]


def _gt_bad_skipped(root, scene, out):
    path = write_gt_values(scene, {1000: 3e38})

    def check(out, res):
        skipped = json.loads((out / "manifest.json").read_text())["skipped"]
        assert [s["frame"] for s in skipped] == [path.name] and "bad GT depth values" in skipped[0]["reason"]

    return build_args(root, out, "--skip-bad"), [], check


def _quaternion_norm_134(root, scene, out):
    path, line = scale_quaternion(scene, 1.34)
    return build_args(root, out), [f"{path}:{line}:", "quaternion norm 1.34"]


def _quaternion_norm_off_by_2e3(root, scene, out):
    path, line = scale_quaternion(scene, 1.002)
    return build_args(root, out), [f"{path}:{line}:", "quaternion norm 1.002"]


def _points2d_line_deleted(root, scene, out):
    path = images_txt(scene)
    lines = path.read_text().splitlines(keepends=True)
    first = header_lines(path)[0]
    image_id = lines[first].split()[0]
    del lines[first + 1]
    path.write_text("".join(lines))
    return build_args(root, out), [f"{path}:{first + 2}:", f"POINTS2D line missing after image {image_id}"]


def _header_field_missing(root, scene, out):
    path = images_txt(scene)
    lines = path.read_text().splitlines(keepends=True)
    i = header_lines(path)[2]
    lines[i] = " ".join(lines[i].split()[:-1]) + "\n"
    path.write_text("".join(lines))
    return build_args(root, out), [f"{path}:{i + 1}:", "expected 10 fields"]


def _cameras_txt_not_utf8(root, scene, out):
    path = scene / UNDIST / "cameras.txt"
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(1, b"# caf\xe9 latin-1 comment\n")
    path.write_bytes(b"".join(lines))
    return build_args(root, out), [f"{path}:2:", "not UTF-8 text"]


def _zero_byte_jpeg(root, scene, out):
    path = nth_file(scene, "images/dslr_images_undistorted")
    path.write_bytes(b"")
    return build_args(root, out), [str(path), "empty (0 bytes)"]


def _camera_model_typo(root, scene, out):
    path = scene / UNDIST / "cameras.txt"
    text = path.read_text()
    path.write_text(text.replace(" PINHOLE ", " PINHOLLE ", 1))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "PINHOLLE" in text)
    return build_args(root, out), [f"{path}:{line}:", "unknown camera model 'PINHOLLE'"]


def _masks_required(root, scene, out):
    shutil.rmtree(scene / "masks_for_images")
    return build_args(root, out, "--require-masks"), [str(scene / "masks_for_images"), "--require-masks"]


def _masks_missing_recorded(root, scene, out):
    shutil.rmtree(scene / "masks_for_images")

    def check(out, res):
        manifest = json.loads((out / "manifest.json").read_text())
        assert any("masks_for_images" in w for w in manifest["warnings"])
        assert manifest["options"]["require_masks"] is False
        assert "masks_for_images" in res.stderr  # the warning is also shown

    return build_args(root, out), [], check


def _frame_without_gt_recorded(root, scene, out):
    path = nth_file(scene, GT)
    np.full(path.stat().st_size // 4, np.inf, "<f4").tofile(path)  # all "no GT": coverage 0

    def check(out, res):
        zero = json.loads((out / "manifest.json").read_text())["zero_coverage_frames"]
        assert [z["frame"] for z in zero] == [path.name]
        ver = run_cli(["verify", str(out)])
        assert ver.returncode == 0 and f"frame {path.name} has no supervised pixel" in ver.stdout

    return build_args(root, out), [], check


def _every_frame_without_gt(root, scene, out):
    for path in (scene / GT).iterdir():
        np.full(path.stat().st_size // 4, np.inf, "<f4").tofile(path)
    return build_args(root, out), [str(scene), "none of the 6 frames has a supervised pixel"]


def _out_is_a_file(root, scene, out):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("not a folder")
    return build_args(root, out), [str(out), "not a directory"]


def _out_read_only(root, scene, out):
    return build_args(root, out / "shards"), [str(out / "shards"), "Permission denied", "writable --out"]


def _disk_full_caching_frames(root, scene, out):
    return build_args(root, out), ["No space left on device", ".npz", "free disk space"]


def _disk_full_writing_shards(root, scene, out):
    return build_args(root, out), ["No space left on device", f"{out}/val-00000.tar", "free disk space"]


def _bad_number(option, value, words):
    def setup(root, scene, out):
        return build_args(root, out, option, value), [f"'{option}'", *words]

    return setup


def _val_scene_unknown(root, scene, out):
    return build_args(root, out, "--val-scenes", "nosuch"), ["--val-scenes nosuch", "not among the built scenes"]


def _renamed_scene(new_name):
    def setup(root, scene, out):
        target = scene.parent / new_name
        scene.rename(target)
        return build_args(root, out, scenes=new_name), [str(target), "cannot be a sample key"]

    return setup


def _size_113(root, scene, out):
    return build_args(root, out) + ["--size", "113"], ["'113'", "multiples of 14", "--any-size"]


def _missing_root(root, scene, out):
    return build_args(root / "nope", out), [str(root / "nope"), "ETH3D root not found"]


def _unknown_scene(root, scene, out):
    return build_args(root, out, scenes="facade"), [str(root), "scene(s) facade not found"]


def _inspect_unknown_key(root, scene, out, good):
    return ["inspect", str(good), "--key", "nosuch_00000"], [str(good), "'nosuch_00000' not found"]


def _inspect_png_read_only(root, scene, out, good):
    png = out / "sheets" / "sample.png"
    return ["inspect", str(good), "--png", str(png)], [str(out / "sheets"), "Permission denied"]


def _verify_stray_tmp(root, scene, out, good):
    shutil.copytree(good, out)
    stray = out / ".train-00005.tar.tmp999999"
    stray.write_bytes(b"partial")
    return ["verify", str(out)], [str(stray), "stray temporary file"]


def _verify_shard_not_listed(root, scene, out, good):
    shutil.copytree(good, out)
    shutil.copy(out / "train-00000.tar", out / "train-00007.tar")
    return ["verify", str(out)], [str(out / "train-00007.tar"), "not listed in the manifest"]


CASES = [
    Case("sparse_depth_without_points3D", _sparse_without_points),
    Case("auto_depth_without_gt_and_empty_points3D", _empty_points_auto_without_gt),
    Case("empty_images_txt", _empty_images_txt),
    Case("every_image_skipped", _every_image_skipped),
    Case("frames_larger_than_scene", _frames_larger_than_scene),
    Case("gt_depth_3e38", _gt_huge_value),
    Case("gt_depth_negative_zero_minus_inf", _gt_negative_and_minus_inf),
    Case("gt_depth_nan_nearest_pooling", _gt_nan_nearest_pooling),
    Case("gt_depth_bad_skip_bad_recorded", _gt_bad_skipped, rc=0),
    Case("quaternion_norm_1.34", _quaternion_norm_134),
    Case("quaternion_norm_1.002", _quaternion_norm_off_by_2e3),
    Case("points2d_line_deleted", _points2d_line_deleted),
    Case("images_header_field_missing", _header_field_missing),
    Case("zero_byte_jpeg", _zero_byte_jpeg),
    Case("cameras_txt_not_utf8", _cameras_txt_not_utf8),
    Case("camera_model_typo", _camera_model_typo),
    Case("masks_missing_require_masks", _masks_required),
    Case("masks_missing_warned_and_recorded", _masks_missing_recorded, rc=0),
    Case("frame_without_gt_recorded_and_verified", _frame_without_gt_recorded, rc=0),
    Case("every_frame_without_gt", _every_frame_without_gt),
    Case("out_is_a_file", _out_is_a_file),
    Case("out_read_only", _out_read_only, fault={"FAULT": "eacces"}),
    Case(
        "disk_full_caching_frames",
        _disk_full_caching_frames,
        fault={"FAULT": "enospc", "FAULT_MATCH": ".*.npz.tmp*", "FAULT_NTH": "3", "FAULT_AFTER": "100"},
    ),
    Case(
        "disk_full_writing_shards",
        _disk_full_writing_shards,
        fault={"FAULT": "enospc", "FAULT_MATCH": ".*.tar.tmp*", "FAULT_NTH": "2", "FAULT_AFTER": "2000"},
    ),
    Case("frames_0", _bad_number("--frames", "0", ["0 is not in the range x>=1"]), rc=2),
    Case("stride_0", _bad_number("--stride", "0", ["x>=1"]), rc=2),
    Case("samples_per_shard_0", _bad_number("--samples-per-shard", "0", ["x>=1"]), rc=2),
    Case("val_fraction_1.5", _bad_number("--val-fraction", "1.5", ["1.5 is not in the range 0.0<=x<1.0"]), rc=2),
    Case("workers_minus_1", _bad_number("--workers", "-1", ["x>=0"]), rc=2),
    Case("depth_samples_0", _bad_number("--depth-samples", "0", ["x>=1"]), rc=2),
    Case("val_scenes_naming_no_scene", _val_scene_unknown),
    Case("scene_name_with_space", _renamed_scene("my scene")),
    Case("scene_name_non_ascii", _renamed_scene("fa\u00e7ade")),
    Case("size_113", _size_113, rc=2),
    Case("root_missing", _missing_root),
    Case("scene_not_found", _unknown_scene),
]

GOOD_CASES = [  # cases that read a finished good build
    Case("inspect_unknown_key", _inspect_unknown_key),
    Case("inspect_png_read_only", _inspect_png_read_only, fault={"FAULT": "eacces"}),
    Case("verify_stray_tmp_file", _verify_stray_tmp),
    Case("verify_shard_not_listed", _verify_shard_not_listed),
]


def assert_one_error_line(res: subprocess.CompletedProcess, parts: list[str]) -> str:
    output = res.stdout + res.stderr
    assert "Traceback" not in output, output
    lines = [t for t in res.stderr.splitlines() if t.strip() and not t.startswith("WARNING ")]
    if res.args[-2:] and "verify" in res.args:  # verify prints one line per problem, no "Error:"
        message = "\n".join(lines)
    else:
        assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
        message = lines[0]
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def assert_nothing_claims_success(out: Path) -> None:
    if not out.is_dir():
        return
    assert not (out / "manifest.json").exists(), "a failed build left a manifest"
    assert not list(out.glob("*.tar")), "a failed build left shards"
    assert not [p for p in out.rglob(".*.tmp*")], "a failed build left temporary files"


def run_case(case: Case, root: Path, scene: Path, out: Path, args_parts) -> subprocess.CompletedProcess:
    args, parts, *check = args_parts
    fault = case.fault
    if fault and fault.get("FAULT") == "eacces":
        fault = {**fault, "FAULT_PREFIX": str(out)}
    res = run_cli(args, env=case.env, fault=fault)
    assert res.returncode == case.rc, (res.returncode, res.stdout, res.stderr)
    if case.rc != 0:
        assert_one_error_line(res, parts)
        if args[0] == "build":
            assert_nothing_claims_success(out)
    else:
        assert "Traceback" not in res.stdout + res.stderr
        check[0](out, res)
    return res


@pytest.fixture
def scene_copy(tiny_root, tmp_path):
    root = tmp_path / "eth3d"
    shutil.copytree(tiny_root / SCENE, root / SCENE)
    return root, root / SCENE


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_build_input(case, scene_copy, tmp_path):
    root, scene = scene_copy
    out = tmp_path / "out"
    run_case(case, root, scene, out, case.setup(root, scene, out))
    if case.name.startswith("scene_name") or case.name == "frames_larger_than_scene":
        assert not out.exists() or not (out / ".frame-cache").exists()  # refused before rendering


@pytest.mark.parametrize("case", GOOD_CASES, ids=[c.name for c in GOOD_CASES])
def test_bad_use_of_a_good_build(case, tiny_root, good_build, tmp_path):
    out = tmp_path / "out"
    run_case(case, tiny_root, tiny_root / SCENE, out, case.setup(tiny_root, tiny_root / SCENE, out, good_build))


def test_debug_env_shows_the_traceback(tiny_root, tmp_path):
    res = run_cli(build_args(tiny_root, tmp_path / "out", scenes="nosuch"), env={"DATAENGINE_DEBUG": "1"})
    assert res.returncode == 1 and "Traceback" in res.stderr and "BadInputError" in res.stderr


# ------------------------------------------------------------------------------------------- download
class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []
    status = 500
    body = b""

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Handler.hits.append(self.path)
        if self.status == 200:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        else:
            self.send_error(self.status)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.hits = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("kind", ["unknown_scene", "server_error", "connection_refused", "corrupt_archive"])
def test_download_failures_are_one_line(kind, server, tmp_path):
    root = tmp_path / "eth3d"
    url, scenes, parts = server, "office", []
    if kind == "unknown_scene":
        scenes, parts = "office,nosuch", ["nosuch", "unknown ETH3D training scene"]
    elif kind == "server_error":
        _Handler.status, parts = 500, ["office_dslr_undistorted.7z", "download failed after 1 attempts"]
    elif kind == "connection_refused":
        url = f"http://127.0.0.1:{closed_port()}/"
        parts = ["office_dslr_undistorted.7z", "download failed", "check the network"]
    else:
        _Handler.status, _Handler.body = 200, b"7z\xbc\xaf\x27\x1c" + bytes(64)
        parts = ["office_dslr_undistorted.7z", "corrupt 7z archive"]
    res = run_cli(["download", "--root", str(root), "--scenes", scenes, "--base-url", url, "--retries", "0", "--quiet"])
    assert res.returncode == 1
    assert_one_error_line(res, parts)
    if kind == "unknown_scene":
        assert _Handler.hits == []  # the name is checked before any network call
    assert not list(root.rglob("*.done")) if root.exists() else True
    assert not list(root.rglob("*.7z")) if root.exists() else True


# ------------------------------------------------------------------------------------ kill and rerun
def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.mark.parametrize("where", ["rendering", "writing_shards"])
def test_kill_and_rerun_gives_identical_shards_and_no_stray_files(where, tiny_root, good_build, tmp_path):
    out = tmp_path / "out"
    match, nth = (".*.npz.tmp*", "4") if where == "rendering" else (".*.tar.tmp*", "2")
    killed = run_cli(
        build_args(tiny_root, out),
        fault={"FAULT": "kill", "FAULT_MATCH": match, "FAULT_NTH": nth, "FAULT_AFTER": "500"},
    )
    assert killed.returncode == -9
    orphans = list(out.rglob(".*.tmp*"))
    assert len(orphans) == 1  # the file being written when the kill came
    assert not (out / "manifest.json").exists()
    if where == "writing_shards":
        assert (out / "train-00000.tar").exists()  # the first shard was finished
        ver = run_cli(["verify", str(out)])
        assert ver.returncode == 1 and "manifest.json: missing" in ver.stderr
    again = run_cli(build_args(tiny_root, out))
    assert again.returncode == 0, again.stderr
    assert _tree_bytes(out) == _tree_bytes(good_build)
    assert not list(out.rglob(".*.tmp*")) and not (out / ".frame-cache").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in good_build.iterdir())
    assert run_cli(["verify", str(out)]).returncode == 0

"""`download` against a loopback HTTP server (Range support) serving a scene packed as ETH3D 7z files."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import py7zr
import pytest

from dataengine.download import DownloadConfig, download_scenes, fetch

# Which scene sub-folders each ETH3D archive kind holds.
KIND_FOLDERS = {
    "dslr_undistorted": ["images/dslr_images_undistorted", "dslr_calibration_undistorted"],
    "dslr_jpg": ["images/dslr_images", "dslr_calibration_jpg"],
    "dslr_depth": ["ground_truth_depth"],
    "dslr_occlusion": ["masks_for_images"],
}


def pack_scene(scene_dir: Path, out_dir: Path) -> dict[str, Path]:
    """<scene>_<kind>.7z archives that extract to <scene>/..., like the ETH3D per-scene files."""
    out = {}
    for kind, folders in KIND_FOLDERS.items():
        path = out_dir / f"{scene_dir.name}_{kind}.7z"
        with py7zr.SevenZipFile(path, "w") as z:
            for folder in folders:
                z.writeall(scene_dir / folder, arcname=f"{scene_dir.name}/{folder}")
        out[kind] = path
    return out


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range `Range: bytes=N-` support; counts GETs per path."""

    hits: dict[str, int] = {}

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        RangeHandler.hits[self.path] = RangeHandler.hits.get(self.path, 0) + 1
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(RangeHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.hits = {}
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def make_scene(root: Path, name: str = "mini") -> Path:
    scene = root / name
    files = {
        "images/dslr_images_undistorted/DSC_0001.JPG": b"undistorted",
        "dslr_calibration_undistorted/cameras.txt": b"0 PINHOLE 10 10 5 5 5 5\n",
        "images/dslr_images/DSC_0001.JPG": b"distorted-not-needed" * 100,
        "dslr_calibration_jpg/cameras.txt": b"0 THIN_PRISM_FISHEYE ...\n",
        "ground_truth_depth/dslr_images/DSC_0001.JPG": bytes(range(256)) * 40,
        "masks_for_images/dslr_images/DSC_0001.png": b"png",
    }
    for rel, data in files.items():
        (scene / rel).parent.mkdir(parents=True, exist_ok=True)
        (scene / rel).write_bytes(data)
    return scene


def test_download_resumes_extracts_and_is_idempotent(tmp_path, server):
    served, url = server
    scene = make_scene(tmp_path / "src")
    archives = pack_scene(scene, served)
    root = tmp_path / "eth3d"
    # A partial earlier download of the depth archive: the rest must come through a Range request.
    depth_archive = archives["dslr_depth"].read_bytes()
    part = root / ".downloads" / "mini_dslr_depth.7z.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(depth_archive[:100])

    report = download_scenes(DownloadConfig(root=root, scenes=("mini",), base_url=url, progress=False))
    assert [r["status"] for r in report] == ["downloaded"] * 4
    for rel in [
        "images/dslr_images_undistorted/DSC_0001.JPG",
        "dslr_calibration_undistorted/cameras.txt",
        "dslr_calibration_jpg/cameras.txt",
        "ground_truth_depth/dslr_images/DSC_0001.JPG",
        "masks_for_images/dslr_images/DSC_0001.png",
    ]:
        assert (root / "mini" / rel).read_bytes() == (scene / rel).read_bytes(), rel
    assert not (root / "mini" / "images" / "dslr_images").exists()  # distorted JPEGs not extracted
    assert not [
        p for p in (root / ".downloads").iterdir() if not p.name.endswith(".done")
    ]  # archives removed after extraction
    hits_after_first = dict(RangeHandler.hits)
    assert hits_after_first["/mini_dslr_depth.7z"] == 1

    again = download_scenes(DownloadConfig(root=root, scenes=("mini",), base_url=url, progress=False))
    assert [r["status"] for r in again] == ["already done"] * 4
    assert RangeHandler.hits == hits_after_first  # nothing fetched twice


def test_fetch_resume_bytes_and_missing_archive(tmp_path, server):
    served, url = server
    payload = bytes(range(256)) * 1000
    (served / "blob.bin").write_bytes(payload)
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(payload[:12345])
    assert fetch(url + "blob.bin", dest, progress=False).read_bytes() == payload
    # A stale partial file longer than the archive (416) restarts cleanly.
    dest.unlink()
    dest.with_name("blob.bin.part").write_bytes(payload + b"extra")
    assert fetch(url + "blob.bin", dest, progress=False).read_bytes() == payload
    with pytest.raises(FileNotFoundError, match="nope.7z: 404"):
        fetch(url + "nope.7z", tmp_path / "nope.7z", progress=False, retries=0)

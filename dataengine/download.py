"""`download`: fetch and extract the per-scene ETH3D 7z archives (resumable, idempotent).

Per scene: <scene>_dslr_undistorted.7z (undistorted JPEGs + PINHOLE calibration),
<scene>_dslr_jpg.7z (only dslr_calibration_jpg/ is extracted: the distorted JPEGs are not needed),
<scene>_dslr_depth.7z (raw float32 laser GT) and <scene>_dslr_occlusion.7z (masks). A partial
download continues with an HTTP Range request; a finished archive leaves a marker so a rerun is a
no-op.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dataengine.scenes import DEFAULT_SCENES, ETH3D_TRAINING_SCENES, ETH3D_URL

log = logging.getLogger(__name__)

ARCHIVE_KINDS = ("dslr_undistorted", "dslr_jpg", "dslr_depth", "dslr_occlusion")
# The high-res multi-view TRAINING scenes: the only ones with laser GT (dslr_depth) archives.
STATE_DIR = ".downloads"


@dataclass(frozen=True)
class DownloadConfig:
    root: Path
    scenes: tuple[str, ...] = DEFAULT_SCENES
    base_url: str = ETH3D_URL
    kinds: tuple[str, ...] = ARCHIVE_KINDS
    keep_archives: bool = False
    progress: bool = True
    timeout_s: float = 60.0
    retries: int = 3


def check_scene_names(scenes) -> None:
    """Unknown names fail before any network call (the server would answer 404 per archive)."""
    from dataengine.errors import BadInputError

    if not scenes:
        raise BadInputError("--scenes names no scene; name ETH3D training scenes, e.g. facade,office")
    unknown = [s for s in scenes if s not in ETH3D_TRAINING_SCENES]
    if unknown:
        raise BadInputError(
            f"--scenes: unknown ETH3D training scene(s) {', '.join(unknown)}; choose from "
            f"{', '.join(ETH3D_TRAINING_SCENES)}"
        )


def archive_name(scene: str, kind: str) -> str:
    return f"{scene}_{kind}.7z"


def fetch(url: str, dest: Path, *, progress: bool = True, timeout_s: float = 60.0, retries: int = 3) -> Path:
    """Download url to dest via dest.part, resuming a partial file with an HTTP Range request."""
    from tqdm import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                if have and resp.status == 200:  # server ignored the range: start over
                    have = 0
                total = resp.headers.get("Content-Length")
                total = int(total) + have if total is not None else None
                with (
                    open(part, "ab" if have else "wb") as out,
                    tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                    ) as bar,
                ):
                    while block := resp.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
            size = part.stat().st_size
            if total is not None and size != total:
                raise OSError(f"{url}: got {size} of {total} bytes")
            part.replace(dest)
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # range beyond the end: the partial file is stale
                part.unlink()
                continue
            if exc.code == 404:
                raise FileNotFoundError(f"{url}: 404 Not Found; check --base-url and the scene name") from None
            error = exc
        except (OSError, urllib.error.URLError) as exc:
            error = exc
        if attempt < retries:
            log.warning("%s: %s; retrying (%d/%d)", url, error, attempt + 1, retries)
            time.sleep(min(2**attempt, 10))
    raise OSError(
        f"{url}: download failed after {retries + 1} attempts ({error}); check the network "
        f"and --base-url, then rerun (finished archives are kept, a partial one resumes)"
    )


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts


def extract(archive: Path, root: Path, only: str | None = None) -> list[str]:
    """Extract a 7z archive into root (only members under a folder named `only`, if given)."""
    import py7zr

    with py7zr.SevenZipFile(archive, mode="r") as z:
        names = z.getnames()
        bad = [n for n in names if not _safe_member(n)]
        if bad:
            raise ValueError(f"{archive}: refusing unsafe member path {bad[0]!r}")
        targets = [n for n in names if only is None or only in PurePosixPath(n).parts]
        if only is not None and not targets:
            raise ValueError(f"{archive}: no member under a '{only}' folder")
        z.extract(path=root, targets=targets if only is not None else None)
    return targets


def py7zr_errors() -> tuple[type[BaseException], ...]:
    import py7zr.exceptions as errors

    return errors.ArchiveError, errors.PasswordRequired, errors.AbsolutePathError, EOFError


def download_scenes(cfg: DownloadConfig) -> list[dict]:
    """Fetch and extract every (scene, kind) archive not already done; returns what happened."""
    root = Path(cfg.root)
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    report = []
    for scene in cfg.scenes:
        for kind in cfg.kinds:
            name = archive_name(scene, kind)
            marker = state / f"{name}.done"
            if marker.is_file():
                report.append({"archive": name, "status": "already done"})
                continue
            archive = fetch(
                cfg.base_url.rstrip("/") + "/" + name,
                state / name,
                progress=cfg.progress,
                timeout_s=cfg.timeout_s,
                retries=cfg.retries,
            )
            only = "dslr_calibration_jpg" if kind == "dslr_jpg" else None
            try:
                members = extract(archive, root, only=only)
            except py7zr_errors() as exc:
                archive.unlink(missing_ok=True)  # a rerun fetches it again
                raise OSError(
                    f"{archive}: corrupt 7z archive ({type(exc).__name__}: {exc}); deleted it, "
                    f"rerun to download it again"
                ) from None
            marker.write_text(
                json.dumps({"archive": name, "bytes": archive.stat().st_size, "members": len(members)}) + "\n"
            )
            if not cfg.keep_archives:
                archive.unlink()
            report.append({"archive": name, "status": "downloaded", "members": len(members)})
    return report

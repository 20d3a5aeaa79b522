"""Offline install over a machine's own CUDA torch: a wheelhouse made where an index is reachable, then
installed with `pip --no-index` into an existing Python, never touching its torch.

    python tools/offline.py wheelhouse --out wheelhouse --python-version 3.12 --platform manylinux_2_28_x86_64
    python3 tools/offline.py setup-system --wheelhouse wheelhouse      # on the GPU node, with its python

`wheelhouse` (machine with an index):
  1. builds the project's wheel into the wheelhouse;
  2. resolves project[extras] + torch for the *target* interpreter and platform without installing anything
     (`pip install --dry-run --report`; PEP 658 metadata, so torch's CUDA wheels are not downloaded);
  3. walks the resolved dependency graph from the project, never entering torch: what only torch needs
     (nvidia-*, triton, sympy, networkx, ...) drops out, what the project needs too (filelock, fsspec,
     typing-extensions) stays; names of the CUDA stack are refused outright as a second guard;
  4. downloads exactly those pinned wheels (`pip download --no-deps --only-binary=:all:`) and writes
     requirements-<tag>.txt next to them.
  Walking the resolution (rather than downloading with dependencies and deleting torch afterwards) never
  fetches the ~3 GB CUDA stack and keeps the versions the resolver chose with torch present.

`setup-system` (run by the target interpreter itself; standard library + pip only):
  pins the installed torch (and triton / nvidia-* / cuda-* packages) in a constraints file, installs
  project[extras] from the wheelhouse with `--no-index`, then reports what it installed, what it changed
  and what was already there, checks that torch is untouched and that the packages import.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

try:  # pip vendors packaging, so this works in any interpreter that has pip
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - depends on the interpreter
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "vggt-eth3d-lora"
# Never in a wheelhouse, never replaced on the target: the GPU image's own torch and its CUDA libraries.
CUDA_STACK = re.compile(r"^(torch|triton|pytorch-triton.*|nvidia-.*|cuda-.*)$")


class OfflineError(RuntimeError):
    """A problem the user can fix; printed as one `Error: ...` line."""


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------------- dependency graph


def target_environment(python_version: str, platform: str) -> dict[str, str]:
    """PEP 508 marker environment of a CPython `python_version` ("3.12") on a wheel `platform` tag."""
    major_minor = ".".join(python_version.split(".")[:2])
    full = python_version if python_version.count(".") >= 2 else major_minor + ".0"
    machine = re.sub(r"^(manylinux\d*(_\d+_\d+)?|musllinux_\d+_\d+|linux|macosx_\d+_\d+|win)_?", "", platform)
    if platform.startswith(("manylinux", "musllinux", "linux")):
        system, sys_platform, os_name = "Linux", "linux", "posix"
    elif platform.startswith("macosx"):
        system, sys_platform, os_name = "Darwin", "darwin", "posix"
    else:
        system, sys_platform, os_name = "Windows", "win32", "nt"
    machine = {"amd64": "AMD64"}.get(machine, machine) or "x86_64"
    return {
        "python_version": major_minor,
        "python_full_version": full,
        "implementation_name": "cpython",
        "implementation_version": full,
        "platform_python_implementation": "CPython",
        "os_name": os_name,
        "sys_platform": sys_platform,
        "platform_system": system,
        "platform_machine": machine,
        "platform_release": "",
        "platform_version": "",
    }


def marker_holds(marker: Marker | None, env: dict[str, str] | None, extras: Iterable[str]) -> bool:
    """Whether a requirement's marker holds for `env` (None: this interpreter) with any of `extras` active."""
    if marker is None:
        return True
    return any(marker.evaluate({**(env or {}), "extra": extra}) for extra in ("", *extras))


Lookup = Callable[[str], "tuple[str, list[str]] | None"]  # canonical name -> (version, Requires-Dist) or None


def closure(
    roots: Iterable[str],
    lookup: Lookup,
    env: dict[str, str] | None,
    exclude: Callable[[str], bool] = lambda name: bool(CUDA_STACK.match(name)),
) -> dict[str, str]:
    """{canonical name: version} of every distribution reachable from the `roots` requirements.

    Edges follow Requires-Dist under `env` with the extras each node was reached with; excluded names
    are neither kept nor entered (so what only they need drops out). A name `lookup` does not know is
    an error: the resolution (or the installed set) is incomplete.
    """
    found: dict[str, str] = {}
    active: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if exclude(name):
            continue
        extras = {canonical(e) for e in req.extras}
        if name in active and extras <= active[name]:
            continue
        known = lookup(name)
        if known is None:
            raise OfflineError(f"{req} is required but missing from the resolution / installed set")
        version, requires = known
        found[name] = version
        active[name] = active.get(name, set()) | extras
        for text in requires:  # on a revisit with new extras the old edges come again; they are skipped above
            dep = Requirement(text)
            if marker_holds(dep.marker, env, active[name]):
                todo.append(dep)
    return found


def report_lookup(report: dict) -> Lookup:
    """Lookup over a `pip install --dry-run --report` document."""
    items = {canonical(i["metadata"]["name"]): i for i in report["install"]}

    def lookup(name: str):
        item = items.get(name)
        return None if item is None else (item["metadata"]["version"], item["metadata"].get("requires_dist", []))

    return lookup


def installed_lookup(name: str):
    """Lookup over this interpreter's installed distributions."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    return dist.version, dist.requires or []


def installed_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(canonical(name), dist.version)
    return versions


def expand_platform(platform: str) -> list[str]:
    """`manylinux_2_28_x86_64` → itself and every older glibc tag down to manylinux1 (what a target with
    glibc 2.28 also runs; pip only expands the tag of the machine it runs on, not a `--platform`)."""
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    major, minor, arch = int(match[1]), int(match[2]), match[3]
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)] if major == 2 else [platform]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if major > 2 or minor >= m]
    return tags


def wheel_tag(python_version: str, platform: str) -> str:
    return f"cp{python_version.replace('.', '')[:3]}-{platform}"


# ----------------------------------------------------------------------------------- wheelhouse


def run(cmd: list[str], quiet: bool = False) -> subprocess.CompletedProcess:
    shown = re.sub(r"( --platform \S+)+", lambda m: f" --platform <{m[0].count('--platform')} tags>", " ".join(cmd))
    print("+ " + shown, flush=True)
    proc = subprocess.run(cmd, text=True, capture_output=quiet)
    if proc.returncode:
        tail = (proc.stderr or "").strip().splitlines()[-5:] if quiet else []
        raise OfflineError(
            f"`{' '.join(cmd[:6])} ...` failed (exit {proc.returncode}){': ' if tail else ''}"
            + " | ".join(tail)
            + "; see the pip output above"
        )
    return proc


def wheelhouse_exclude(skip: Iterable[str] = ()) -> Callable[[str], bool]:
    """What a wheelhouse leaves out: the CUDA stack always, and the `skip` distributions the target already has."""
    skipped = {canonical(name) for name in skip}

    def excluded(name: str) -> bool:
        return bool(CUDA_STACK.match(name)) or name in skipped

    return excluded


def make_wheelhouse(
    out: Path,
    python_version: str,
    platform: str,
    extras: list[str],
    torch: str,
    pip: list[str],
    skip: Iterable[str] = (),
) -> list[str]:
    """`skip`: distributions the target image already has; neither they nor what only they need are
    downloaded (the target's own versions must then satisfy the project's requirements)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("vggt_eth3d_lora-*.whl"):
        old.unlink()
    run([*pip, "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)])
    project_wheel = max(out.glob("vggt_eth3d_lora-*.whl"), key=lambda p: p.stat().st_mtime)
    root = f"{PROJECT}[{','.join(extras)}]" if extras else PROJECT
    target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for tag in expand_platform(platform):
        target += ["--platform", tag]
    tag = wheel_tag(python_version, platform)
    report_path = out / f"resolution-{tag}.json"
    # --target: pip < 24.1 accepts platform options only with it (a dry run installs nothing there anyway).
    with tempfile.TemporaryDirectory() as nowhere:
        run(
            [
                *pip,
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--target",
                nowhere,
                *target,
                "--report",
                str(report_path),
                f"{project_wheel}[{','.join(extras)}]" if extras else str(project_wheel),
                torch,
            ]
        )
    report = json.loads(report_path.read_text())
    env = target_environment(python_version, platform)
    pins = closure([root], report_lookup(report), env, exclude=wheelhouse_exclude(skip))
    pins.pop(canonical(PROJECT))
    requirements = sorted(f"{name}=={version}" for name, version in pins.items())
    req_file = out / f"requirements-{tag}.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    run([*pip, "download", "--no-deps", "--quiet", "-d", str(out), *target, "-r", str(req_file)])
    bad = [p.name for p in out.glob("*.whl") if CUDA_STACK.match(canonical(p.name.split("-")[0]))]
    if bad:
        raise OfflineError(f"{out} holds CUDA-stack wheels {bad}: delete them; the target keeps its own torch")
    size = sum(p.stat().st_size for p in out.glob("*.whl"))
    print(
        f"wheelhouse {out}: {project_wheel.name} + {len(requirements)} pinned wheels for {tag} "
        f"({len(list(out.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in the folder), no torch / CUDA "
        f"libraries; list in {req_file.name}"
    )
    return requirements


# ----------------------------------------------------------------------------------- setup-system


def constraints_for(installed: dict[str, str]) -> list[str]:
    """Pins that keep the image's torch and CUDA stack exactly as they are."""
    return sorted(f"{name}=={version}" for name, version in installed.items() if CUDA_STACK.match(name))


def classify(needed: dict[str, str], before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    """What setup-system did to each distribution the project needs."""
    result: dict[str, list[str]] = {"installed": [], "changed": [], "kept": [], "missing": []}
    for name in sorted(needed):
        old, new = before.get(name), after.get(name)
        if new is None:
            result["missing"].append(name)
        elif old is None:
            result["installed"].append(f"{name} {new}")
        elif old != new:
            result["changed"].append(f"{name} {old} -> {new}")
        else:
            result["kept"].append(f"{name} {new}")
    return result


def setup_system(wheelhouse: Path, extras: list[str], pip_args: list[str], check_imports: bool = True) -> dict:
    wheels = sorted(wheelhouse.glob("vggt_eth3d_lora-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise OfflineError(
            f"{wheelhouse} holds no vggt_eth3d_lora-*.whl: run `make wheelhouse` on a machine "
            "with an index and copy the folder here"
        )
    before = installed_versions()
    if "torch" not in before:
        raise OfflineError(
            f"torch is not installed in {sys.executable}: setup-system installs the project around "
            "an existing (CUDA) torch; install torch first, or use `make setup` (a venv)"
        )
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "keep-torch.txt"
        constraints.write_text("\n".join(constraints_for(before)) + "\n")
        spec = f"{wheels[-1]}[{','.join(extras)}]" if extras else str(wheels[-1])
        run([*pip, "install", "--no-index", "--find-links", str(wheelhouse), "-c", str(constraints), *pip_args, spec])
    after = installed_versions()
    root = f"{PROJECT}[{','.join(extras)}]" if extras else PROJECT
    needed = closure([root], installed_lookup, None, exclude=lambda name: False)
    result = classify(needed, before, after)
    torch_ok = before["torch"] == after.get("torch")
    lines = [
        f"setup-system into {sys.executable} (Python {sys.version.split()[0]}) from {wheelhouse}:",
        f"  torch {before['torch']}: {'kept' if torch_ok else 'CHANGED to ' + str(after.get('torch'))}",
    ]
    for key, label in (("installed", "installed now"), ("changed", "changed"), ("kept", "already there")):
        items = [i for i in result[key] if not i.startswith("torch ")]
        lines.append(f"  {label} ({len(items)}): {', '.join(items) if items else '-'}")
    print("\n".join(lines), flush=True)
    if not torch_ok:
        raise OfflineError(
            f"torch changed from {before['torch']} to {after.get('torch')}: reinstall the image's "
            "torch; report this as a bug"
        )
    if result["missing"]:
        raise OfflineError(f"still missing after the install: {', '.join(result['missing'])}")
    if check_imports:
        modules = ["trainer.train", "trainer.data", "trainer.memory"] + (
            ["dataengine.build", "dataengine.synth"] if "engine" in extras else []
        )
        code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
        proc = subprocess.run(
            [sys.executable, "-c", code, *modules], capture_output=True, text=True, cwd=tempfile.gettempdir()
        )  # the installed copy, not this checkout
        if proc.returncode:
            raise OfflineError(f"installed, but importing {modules} fails: {proc.stderr.strip().splitlines()[-1]}")
        print(f"  imports ok: {', '.join(modules)}")
    return {"torch": before["torch"], **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    wh = sub.add_parser("wheelhouse", help="download the wheels (machine with an index)")
    wh.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    wh.add_argument("--python-version", default="3.12")
    wh.add_argument("--platform", default="manylinux_2_28_x86_64")
    wh.add_argument("--extras", default="engine", help="comma-separated extras of the project ('' for none)")
    wh.add_argument("--torch", default="torch", help="torch requirement to resolve against, e.g. torch==2.11.0")
    wh.add_argument("--pip", default=f"{sys.executable} -m pip", help="pip command line")
    wh.add_argument(
        "--skip",
        default="",
        help="comma-separated distributions the target already has (e.g. the "
        "GPU image's numpy,numba,peft,...): not downloaded, nor what only they need",
    )
    ss = sub.add_parser("setup-system", help="install into this interpreter from a wheelhouse, keeping torch")
    ss.add_argument("--wheelhouse", type=Path, default=ROOT / "wheelhouse")
    ss.add_argument("--extras", default="engine")
    ss.add_argument("--pip-args", default="", help="extra pip install arguments, e.g. --user")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e.strip()]
    try:
        if args.command == "wheelhouse":
            make_wheelhouse(
                args.out,
                args.python_version,
                args.platform,
                extras,
                args.torch,
                args.pip.split(),
                [name for name in args.skip.split(",") if name.strip()],
            )
        else:
            if not args.wheelhouse.is_dir():
                raise OfflineError(f"{args.wheelhouse} is not a folder: pass WHEELHOUSE=<the copied wheelhouse>")
            setup_system(args.wheelhouse, extras, args.pip_args.split())
    except OfflineError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

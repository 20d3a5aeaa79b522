"""Load the system zlib before pycolmap, so a later PNG write cannot abort the process.

Root cause (pycolmap 4.x manylinux wheels, seen with 4.1.1 and 4.2.1, and Pillow 13.0.0): pycolmap's
``_core`` extension links its own zlib statically and exports ``deflate*`` / ``inflate*``; the
libgfortran it bundles needs the system ``libz.so.1``, which is therefore loaded into ``_core``'s
symbol scope, where ``_core`` comes first. The system zlib's calls between its own functions then
bind to pycolmap's copies. Pillow links that same ``libz.so.1``: its first PNG write mixes the two
zlib implementations on one stream and glibc aborts with ``free(): invalid pointer`` (`LD_DEBUG=
bindings` shows ``binding file libz.so.1 to pycolmap/_core...: deflateEnd``).

When ``libz.so.1`` is already loaded — by Python's ``zlib`` module — its relocations are done in its
own scope and stay correct. ``import dataengine`` does that; ``python -m dataengine.zlib_first
--install`` (run by ``make setup``) adds a one-line ``.pth`` file to the environment's site-packages
so that every interpreter of the environment does it, whatever a user's script imports first.
"""

from __future__ import annotations

import sys
import sysconfig
import zlib  # noqa: F401  (the point of this module: libz.so.1 is loaded now)
from pathlib import Path

PTH_NAME = "dataengine_zlib_first.pth"


def install(site_packages: str | None = None) -> Path:
    """Write the .pth hook (``import zlib`` at interpreter start) into site-packages."""
    path = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    path.write_text("import zlib  # load the system zlib before pycolmap (dataengine/zlib_first.py)\n")
    return path


if __name__ == "__main__":
    if sys.argv[1:] != ["--install"]:
        raise SystemExit("usage: python -m dataengine.zlib_first --install")
    print(f"wrote {install()}")

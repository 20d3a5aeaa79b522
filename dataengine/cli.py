"""`python -m dataengine`: thin click front end; every command calls a library function."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vggt-eth3d-lora")
def main() -> None:
    """ETH3D → 8-frame WebDataset shards (depth, masks, cameras, manifest)."""

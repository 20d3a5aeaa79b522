"""``load_pretrained``: a VGGT from a local checkpoint file or a Hugging Face repo id.

Accepted sources:
* ``.pt`` / ``.pth``: ``torch.load(weights_only=True, mmap=True)``; a state dict, or a dict wrapping
  one under ``"model"`` / ``"state_dict"``.
* ``.safetensors``.
* a Hugging Face repo id (default ``facebook/VGGT-1B``, file ``model.pt``), fetched with
  ``huggingface_hub`` into its cache at a pinned ``revision`` (``DEFAULT_REVISION`` for
  facebook/VGGT-1B, so a run never silently trains on different base weights; the hub's default
  branch for other repos unless given). Failures are ``PretrainedSourceError``s whose ``reason``
  says which: ``offline`` (``HF_HUB_OFFLINE=1`` or the hub unreachable: pass a local path),
  ``not_found`` (no such repo, or private without access), ``gated``, ``unauthorised``,
  ``revision`` (no such revision), ``invalid_id`` (not a valid repo id, checked before any request),
  ``no_file`` (the revision lacks the file) or ``http``.

Key policy: missing keys and shape mismatches are errors. Unexpected keys are errors unless they
belong to the track head (never built) or to a head that is disabled; those are reported as ignored.

Fixture-style files: the tiny reference file (``tests/assets/vggt_tiny_reference.safetensors``)
stores the weights under ``model.`` next to test data (``case_a.*``, ``loss.*``). When a file has no
bare model keys but has ``model.aggregator.*`` keys, only the ``model.*`` entries are used, with the
prefix stripped, and the other entries are reported as ignored. Use ``config="tiny"`` for it.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.errors import UserError
from trainer.vggt.config import HEAD_NAMES, VGGTConfig
from trainer.vggt.model import VGGT

log = logging.getLogger(__name__)

DEFAULT_REPO_ID = "facebook/VGGT-1B"
DEFAULT_FILENAME = "model.pt"
# The facebook/VGGT-1B commit holding model.pt and model.safetensors (the snapshot public VGGT
# projects load); pinned so that the base weights cannot change under a run. Override with the train
# config's `weights_revision` (`--set weights_revision=main` follows the branch).
DEFAULT_REVISION = "860abec7937da0a4c03c41d3c269c366e82abdf9"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
_REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FIXTURE_PREFIX = "model."
_HEAD_PREFIXES = {"camera": "camera_head.", "depth": "depth_head.", "point": "point_head.", "track": "track_head."}


class PretrainedSourceError(UserError, RuntimeError):
    """The checkpoint could not be found or fetched; ``reason`` names the kind of failure."""

    def __init__(self, message: str, reason: str = "path") -> None:
        super().__init__(message)
        self.reason = reason


class CheckpointMismatchError(UserError, RuntimeError):
    """The checkpoint's keys or shapes do not fit the model."""


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path}"]
        parts += [f"ignored {len(keys)} {reason} keys" for reason, keys in self.ignored.items()]
        return "; ".join(parts)


def is_hub_id(source: str | os.PathLike) -> bool:
    """True when ``source`` names a Hugging Face repo (``org/name``) rather than a local file."""
    text = str(source)
    return (
        not Path(text).expanduser().exists()
        and Path(text).suffix not in _CHECKPOINT_SUFFIXES
        and bool(_REPO_ID_PATTERN.match(text))
    )


def invalid_repo_id(source: str | os.PathLike) -> str | None:
    """The one-line error for ``source`` when it is meant as a hub repo id (no local file of that name, no
    checkpoint suffix, a '/' in it) but huggingface_hub's validator rejects it; None otherwise. Without it
    such an id reached the download and came back as "the hub is offline or unreachable"."""
    text = str(source)
    if "/" not in text or Path(text).expanduser().exists() or Path(text).suffix in _CHECKPOINT_SUFFIXES:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as exc:
        reason = " ".join(str(exc).split()).split(" Use `repo_type`")[0].rstrip(".")
    else:
        if _REPO_ID_PATTERN.match(text):
            return None
        reason = "expected exactly one '/' between the owner and the name, no spaces"
    return (
        f"{text!r} is neither a local file nor a valid Hugging Face repo id ({reason}); pass a repo id such "
        f"as {DEFAULT_REPO_ID} or the path of a local {'/'.join(_CHECKPOINT_SUFFIXES)} file"
    )


def hub_revision(repo_id: str, revision: str | None = None) -> str | None:
    """The revision a download of ``repo_id`` uses: ``revision``, else the pin of the default repo."""
    return revision or (DEFAULT_REVISION if repo_id == DEFAULT_REPO_ID else None)


def resolve_checkpoint(
    source: str | os.PathLike, filename: str = DEFAULT_FILENAME, revision: str | None = None
) -> Path:
    """Local path as is; otherwise a Hugging Face repo id downloaded (or found) in the hub cache."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    text = str(source)
    if path.exists():
        raise PretrainedSourceError(f"checkpoint path {text} is not a file")
    invalid = invalid_repo_id(text)
    if invalid is not None:
        raise PretrainedSourceError(invalid, "invalid_id")
    if not is_hub_id(text):
        raise PretrainedSourceError(
            f"checkpoint file {text} does not exist (expected a local "
            f"{'/'.join(_CHECKPOINT_SUFFIXES)} file or a Hugging Face repo id "
            f"such as {DEFAULT_REPO_ID})"
        )
    from huggingface_hub import hf_hub_download

    revision = hub_revision(text, revision)
    try:
        return Path(hf_hub_download(repo_id=text, filename=filename, revision=revision))
    except Exception as exc:
        reason, message = explain_hub_error(exc, text, filename, revision)
        raise PretrainedSourceError(message, reason) from exc


def explain_hub_error(exc: BaseException, repo_id: str, filename: str, revision: str | None) -> tuple[str, str]:
    """(reason, one-line message with the fix) for a failed ``hf_hub_download``."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Not cached and the metadata request failed: the hub wraps the real failure (an HTTP error or
    # a connection error / offline mode) in a LocalEntryNotFoundError.
    cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None else exc
    response = getattr(cause, "response", None) if isinstance(cause, HfHubHTTPError) else None
    status = getattr(response, "status_code", None)
    at = f"{repo_id}@{revision or 'main'}"
    local = (
        f"download it once and pass its local path: --weights /path/to/{filename} "
        f"(make train WEIGHTS=/path/to/{filename}; in Python load_pretrained('/path/to/{filename}'))"
    )
    if isinstance(cause, HFValidationError):
        return "invalid_id", invalid_repo_id(repo_id) or f"{repo_id!r}: {' '.join(str(cause).split())}"
    if isinstance(cause, GatedRepoError):
        return "gated", (
            f"{repo_id} is a gated repo: accept its terms on the model page, log in (`hf auth login` "
            f"or HF_TOKEN) and retry, or {local}"
        )
    if isinstance(cause, RepositoryNotFoundError):
        return "not_found", (
            f"no Hugging Face repo {repo_id} (HTTP {status}), or it is private and this token "
            f"cannot see it: check the id, log in (`hf auth login` or HF_TOKEN), or {local}"
        )
    if isinstance(cause, RevisionNotFoundError):
        return "revision", (
            f"{repo_id} has no revision {revision!r}: set weights_revision to an existing "
            f"commit, branch or tag (e.g. --set weights_revision=main), or {local}"
        )
    if isinstance(cause, EntryNotFoundError) and not isinstance(cause, LocalEntryNotFoundError):
        return "no_file", f"{at} has no file {filename}: check weights_revision and the file name, or {local}"
    if status in (401, 403):
        return "unauthorised", (
            f"the hub refused {filename} of {at} (HTTP {status}): log in with a token that "
            f"can read it (`hf auth login` or HF_TOKEN), or {local}"
        )
    if status is not None:
        return "http", f"the hub answered HTTP {status} for {filename} of {at}; retry later, or {local}"
    offline = os.environ.get("HF_HUB_OFFLINE", "unset")
    return "offline", (
        f"could not fetch {filename} from the Hugging Face repo {at}: the hub is offline or "
        f"unreachable (HF_HUB_OFFLINE={offline}, {type(cause).__name__}); {local}"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt``/``.pth`` file (weights only, memory-mapped)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in (".pt", ".pth"):
        raise PretrainedSourceError(
            f"{path}: unsupported checkpoint type {path.suffix!r}; use one of {', '.join(_CHECKPOINT_SUFFIXES)}"
        )
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointMismatchError(
            f"{path}: not a weights-only checkpoint (it pickles arbitrary objects, "
            f"which torch.load(weights_only=True) refuses): {exc}"
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(
            f"{path}: expected a state dict of tensors (or {{'model': state_dict}}), got {type(obj).__name__}"
        )
    return obj


def _strip_fixture_prefix(state_dict: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    if any(k.startswith("aggregator.") for k in state_dict):
        return state_dict
    if not any(k.startswith(_FIXTURE_PREFIX + "aggregator.") for k in state_dict):
        return state_dict
    other = sorted(k for k in state_dict if not k.startswith(_FIXTURE_PREFIX))
    if other:
        report.ignored["non-model fixture"] = other
    return {k[len(_FIXTURE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(_FIXTURE_PREFIX)}


def load_state_dict_checked(
    model: VGGT, state_dict: dict[str, torch.Tensor], path: str = "<state dict>", assign: bool = False
) -> LoadReport:
    """Load ``state_dict`` into ``model`` under the key policy of this module; returns what was ignored."""
    report = LoadReport(path=path)
    state_dict = _strip_fixture_prefix(state_dict, report)
    expected = model.state_dict()
    disabled = [h for h in (*HEAD_NAMES, "track") if h == "track" or h not in model.config.enabled_heads]
    usable: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state_dict.items():
        if key in expected:
            usable[key] = tensor
            continue
        head = next((h for h in disabled if key.startswith(_HEAD_PREFIXES[h])), None)
        if head is None:
            unexpected.append(key)
        else:
            report.ignored.setdefault(f"{head}_head (not built)", []).append(key)
    missing = [k for k in expected if k not in usable]
    mismatched = [
        f"{k}: checkpoint {tuple(usable[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in usable
        if usable[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape mismatches (wrong config? e.g. config='tiny'): {_preview(mismatched)}"
        )
    if problems:
        raise CheckpointMismatchError(
            f"{path} does not fit VGGT(enabled heads {list(model.config.enabled_heads)}): " + "; ".join(problems)
        )
    model.load_state_dict(usable, strict=True, assign=assign)
    report.loaded = len(usable)
    return report


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_pretrained(
    source: str | os.PathLike = DEFAULT_REPO_ID,
    config: VGGTConfig | str | None = None,
    heads: Iterable[str] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
    filename: str = DEFAULT_FILENAME,
    revision: str | None = None,
) -> VGGT:
    """Build a VGGT and load pretrained weights into it (see the module docstring for the rules).

    ``config``: a ``VGGTConfig``, a preset name (``"vggt-1b"``, ``"tiny"``) or None (VGGT-1B).
    ``heads``: subset of ``("camera", "depth", "point")`` to build; default: the config's flags.
    ``revision``: hub commit/branch/tag for a repo id (default: ``hub_revision``'s pin).
    ``dtype``: parameter dtype after loading (fp32 by default, whatever the file stores; None keeps
    the file's dtypes).
    The model is built on the meta device and the checkpoint tensors are assigned to it, so the
    full model never exists twice in memory. The report is at ``model.load_report``.
    """
    if isinstance(config, str):
        config = VGGTConfig.preset(config)
    config = config or VGGTConfig()
    if heads is not None:
        config = config.with_heads(heads)
    path = resolve_checkpoint(source, filename, revision)
    state_dict = read_state_dict(path)
    with torch.device("meta"):
        model = VGGT(config)
    report = load_state_dict_checked(model, state_dict, str(path), assign=True)
    model.aggregator.reset_buffers()
    model.to(device=device, dtype=dtype)
    for name, param in model.named_parameters():
        if param.is_meta:
            raise CheckpointMismatchError(f"{path}: parameter {name} was not materialised")
    model.load_report = report  # type: ignore[attr-defined]
    log.info("VGGT: %s", report.summary())
    return model.eval()

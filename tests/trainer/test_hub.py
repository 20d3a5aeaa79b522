"""Hub use: pinned revision, failures told apart (offline vs missing / gated / unauthorised / revision),
and what `push` uploads. A loopback HTTP server stands in for the hub (HF_ENDPOINT); never the network."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from trainer.vggt.loading import DEFAULT_REPO_ID, DEFAULT_REVISION

ROOT = Path(__file__).resolve().parents[2]

# repo name -> (HTTP status, headers) of the hub's answer to the file's metadata request. The error
# codes are the hub's X-Error-Code values that huggingface_hub maps to its exception classes.
ANSWERS = {
    "someone/no-such-repo": (404, {"X-Error-Code": "RepoNotFound"}),
    "someone/private": (401, {"X-Error-Code": "RepoNotFound"}),  # private repo seen without a token
    "someone/gated": (403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted"}),
    "someone/bad-token": (401, {"X-Error-Message": "Invalid credentials in Authorization header"}),
    "someone/forbidden": (403, {}),
    "someone/pinned": (404, {"X-Error-Code": "RevisionNotFound"}),
    DEFAULT_REPO_ID: (404, {"X-Error-Code": "EntryNotFound"}),
}
EXPECTED = {
    "someone/no-such-repo": ("not_found", "no Hugging Face repo someone/no-such-repo (HTTP 404)"),
    "someone/private": ("not_found", "no Hugging Face repo someone/private (HTTP 401), or it is private"),
    "someone/gated": ("gated", "someone/gated is a gated repo: accept its terms"),
    "someone/bad-token": ("unauthorised", "the hub refused model.pt of someone/bad-token@main (HTTP 401)"),
    "someone/forbidden": ("unauthorised", "the hub refused model.pt of someone/forbidden@main (HTTP 403)"),
    "someone/pinned": ("revision", "someone/pinned has no revision 'v9'"),
    DEFAULT_REPO_ID: ("no_file", f"{DEFAULT_REPO_ID}@{DEFAULT_REVISION} has no file model.pt"),
}

# Runs in a fresh interpreter so that huggingface_hub reads HF_ENDPOINT at import. The hub client
# retries network errors with 1-8 s back-off; sleeping is skipped so the offline case takes no time.
SCRIPT = """
import json, sys, time
time.sleep = lambda seconds: None
from trainer.vggt.loading import PretrainedSourceError, resolve_checkpoint
out = {}
for repo, revision in json.loads(sys.argv[1]):
    try:
        resolve_checkpoint(repo, revision=revision)
        out[repo] = ["ok", ""]
    except PretrainedSourceError as exc:
        out[repo] = [exc.reason, str(exc)]
print(json.dumps(out))
"""


class FakeHub(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def _answer(self) -> None:
        FakeHub.requests.append(self.path)
        parts = self.path.lstrip("/").split("/")
        status, headers = ANSWERS.get("/".join(parts[:2]), (404, {}))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def fake_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def resolve_in_subprocess(endpoint: str, cases: list[tuple[str, str | None]], tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # HF_HUB_OFFLINE, HF_TOKEN unset
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hub_failures_are_told_apart(fake_hub, tmp_path):
    cases = [(repo, "v9" if repo == "someone/pinned" else None) for repo in ANSWERS]
    results = resolve_in_subprocess(fake_hub, cases, tmp_path)
    for repo, (reason, start) in EXPECTED.items():
        got_reason, message = results[repo]
        assert got_reason == reason and start in message, (repo, message)
        assert "offline" not in message and "\n" not in message
        assert "--weights /path/to/model.pt" in message
    # The default repo is fetched at the pinned commit, other repos at what the caller asked for.
    assert f"/{DEFAULT_REPO_ID}/resolve/{DEFAULT_REVISION}/model.pt" in FakeHub.requests
    assert "/someone/pinned/resolve/v9/model.pt" in FakeHub.requests
    assert "/someone/gated/resolve/main/model.pt" in FakeHub.requests


def test_unreachable_hub_is_offline_and_names_the_local_path_options(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = resolve_in_subprocess(f"http://127.0.0.1:{port}", [(DEFAULT_REPO_ID, None)], tmp_path)
    reason, message = results[DEFAULT_REPO_ID]
    assert reason == "offline", message
    assert f"{DEFAULT_REPO_ID}@{DEFAULT_REVISION}" in message and "offline or unreachable" in message
    assert "--weights /path/to/model.pt" in message and "make train WEIGHTS=/path/to/model.pt" in message


def test_weights_revision_is_a_config_key_recorded_in_the_run():
    from trainer.builders import weights_revision_used
    from trainer.config import load_config

    cfg = load_config(ROOT / "configs" / "strategy_b.yaml")
    assert cfg.weights_revision is None and weights_revision_used(cfg) == DEFAULT_REVISION
    cfg = load_config(ROOT / "configs" / "strategy_b.yaml", ["weights_revision=main"])
    assert weights_revision_used(cfg) == "main"
    cfg = load_config(
        ROOT / "configs" / "strategy_b.yaml", [f"weights={ROOT / 'tests/assets/vggt_tiny_reference.safetensors'}"]
    )
    assert weights_revision_used(cfg) is None  # a local file has no hub revision


# ------------------------------------------------------------------------------------------- push


def adapter_dir(tmp_path: Path, weights: str | None, revision: str | None = None) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(weights), "r": 16}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    info = {
        "format": "vggt-eth3d-lora/1",
        "model": "vggt-1b",
        "weights": weights,
        "weights_revision": revision,
        "strategy": "b",
        "targets": ["depth_head\\..*"],
        "step": 7,
    }
    (folder / "vggt_adapter.json").write_text(json.dumps(info))
    return folder


def staged(tmp_path: Path, weights: str | None, revision: str | None = None) -> tuple[str | None, dict, dict, str]:
    from trainer.export import stage_for_hub

    staging = tmp_path / "staging"
    staging.mkdir()
    base = stage_for_hub(adapter_dir(tmp_path, weights, revision), staging)
    card = (staging / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    peft_config = json.loads((staging / "adapter_config.json").read_text())
    assert sorted(p.name for p in staging.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "vggt_adapter.json",
    ]
    return base, front, peft_config, card


def test_push_card_names_the_hub_base(tmp_path):
    base, front, peft_config, card = staged(tmp_path, DEFAULT_REPO_ID, DEFAULT_REVISION)
    assert base == front["base_model"] == peft_config["base_model_name_or_path"] == DEFAULT_REPO_ID
    assert DEFAULT_REVISION in card and front["library_name"] == "peft"


def test_push_card_never_names_a_local_path(tmp_path):
    local = tmp_path / "weights" / "model.pt"
    local.parent.mkdir()
    local.write_bytes(b"")
    base, front, peft_config, card = staged(tmp_path, str(local))
    assert base is None and "base_model" not in front and peft_config["base_model_name_or_path"] is None
    assert str(local.parent) not in card and "no `base_model`" in card


def test_push_card_recovers_the_repo_of_a_hub_cache_file(tmp_path):
    cached = tmp_path / "hub" / "models--facebook--VGGT-1B" / "snapshots" / DEFAULT_REVISION / "model.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    base, front, peft_config, _ = staged(tmp_path, str(cached))
    assert base == front["base_model"] == peft_config["base_model_name_or_path"] == DEFAULT_REPO_ID

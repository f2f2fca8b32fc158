"""An unreachable hub is one line in seconds, for every hub load (base model, VAE, CLIP/DINO backbones, captioners).

Found by a newcomer on this offline machine: `sdtune eval` spent 78 s (five "Retrying in 8s" lines per file) before
its clear error about the CLIP backbone, and `dataset build --trigger sks --class person` (Florence-2) 31 s.
"""

from __future__ import annotations

import socket
import time

import pytest

from sdtune.errors import SdtuneError
from sdtune.models import loading, refs
from sdtune.models.vae import load_vae


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch):
    monkeypatch.setattr(refs, "_REACHABLE", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_the_probe_follows_hf_endpoint(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert refs.hub_reachable()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert not refs.hub_reachable()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not refs.hub_reachable()


def _unreachable(monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")  # the hub, switched off
        assert not refs.hub_reachable()


@pytest.mark.parametrize("what", ["clip", "captioner", "base", "vae"])
def test_every_hub_load_fails_in_seconds_when_the_hub_cannot_be_reached(monkeypatch, tmp_path, what):
    _unreachable(monkeypatch)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    started = time.monotonic()
    with pytest.raises(SdtuneError) as failure:
        if what == "clip":
            from sdtune.evaluation.clip_score import load_backbone

            load_backbone("openai/clip-vit-base-patch16")
        elif what == "captioner":
            from sdtune.data.captioner import load_captioner

            load_captioner("florence-2")
        elif what == "base":
            loading.load_components("stabilityai/stable-diffusion-2-1-base")
        else:
            load_vae("madebyollin/sdxl-vae-fp16-fix")
    # the hub client's retries sleep 8 s five times (>= 40 s); 20 s leaves room for first imports on a loaded
    # machine (this ran 8.x s once under a full suite's load, with no retry)
    assert time.monotonic() - started < 20, "the hub client's retries ran"
    if what == "clip":  # the way out offline, named where it fails
        assert "--clip toy scores with the built-in toy CLIP" in str(failure.value)


def test_a_library_deprecation_raised_as_userwarning_is_quiet(monkeypatch, tmp_path):
    """`model.vae=ID` printed huggingface_hub's "`local_dir_use_symlinks` ... is deprecated" (a UserWarning raised
    by diffusers' own call) above sdtune's error line."""
    import warnings

    from sdtune.cli import quiet_libraries

    _unreachable(monkeypatch)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        with pytest.raises(SdtuneError):
            load_vae("madebyollin/sdxl-vae-fp16-fix")
        warnings.warn_explicit("sdtune's own is deprecated", UserWarning, "x.py", 1, module="sdtune.data.check")
    assert [str(w.message) for w in caught] == ["sdtune's own is deprecated"]

"""`sdtune serve`'s API against hostile input: traversal, zip-slip, oversize, bad keys, no token, other origins.

Every refusal is one clear message, and nothing outside the workspace is read or written (checked on disk)."""

from __future__ import annotations

import io
import os
import stat
import zipfile

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdtune.errors import SdtuneError
from sdtune.server.app import create_app
from sdtune.server.security import server_token

ORIGIN = {"origin": "http://127.0.0.1:7860"}
TOKEN = "t0ken-" + "x" * 20


def png(color=(200, 40, 40), size=(24, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def ws(tmp_path):
    return tmp_path / "ws"


@pytest.fixture
def client(ws):
    return TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)


def outside_files(tmp_path, ws) -> set[str]:
    return {str(p) for p in tmp_path.rglob("*") if ws not in p.parents and p != ws}


def test_upload_stores_checked_images_only(client, ws):
    files = [("files", ("a b.png", png(), "image/png")), ("files", ("a b.txt", b"a red square", "text/plain")),
             ("files", ("fake.png", b"not an image at all", "image/png")), ("files", ("x.exe", b"MZ", "x"))]
    r = client.post("/api/datasets/me/upload", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stored"] == ["a_b.png"]
    assert any("fake.png" in line for line in body["refused"]) and any("x.exe" in line for line in body["refused"])
    assert sorted(p.name for p in (ws / "datasets" / "me").iterdir()) == ["a_b.png", "a_b.txt"]
    assert client.get("/api/dataset", params={"path": "datasets/me"}).json()["records"] == [
        {"file": "a_b.png", "caption": "a red square"}]
    assert not any((ws / "uploads").iterdir())  # staging cleaned


def _zip(members: dict[str, bytes], link: str | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return out.getvalue()


@pytest.mark.parametrize("members,link,needle", [
    ({"ok.png": png(), "../../evil.png": png()}, None, "zip-slip"),
    ({"ok.png": png(), "/abs/evil.png": png()}, None, "zip-slip"),
    ({"ok.png": png(), "..\\evil.png": png()}, None, "zip-slip"),
    ({"ok.png": png()}, "link.png", "symbolic link"),
])
def test_zip_slip_refuses_the_whole_zip(client, ws, tmp_path, members, link, needle):
    r = client.post("/api/datasets/z/upload", files=[("files", ("p.zip", _zip(members, link), "application/zip"))])
    assert r.status_code == 400 and needle in r.json()["error"], r.text
    assert not (ws / "datasets" / "z").exists() or not any((ws / "datasets" / "z").iterdir())
    assert outside_files(tmp_path, ws) == set()


def test_zip_with_good_images(client, ws):
    data = _zip({"photos/one.png": png(), "photos/one.txt": b"caption one", "__MACOSX/._one.png": b"junk"})
    r = client.post("/api/datasets/z/upload", files=[("files", ("p.zip", data, "application/zip"))])
    assert r.json()["stored"] == ["one.png"]
    assert (ws / "datasets" / "z" / "one.txt").read_text() == "caption one"


def test_oversize_and_bombs(ws):
    app = create_app(ws)
    app.state.max_upload = 4000
    app.state.max_file = 3000
    client = TestClient(app, base_url="http://127.0.0.1:7860", headers=ORIGIN)
    r = client.post("/api/datasets/big/upload", files=[("files", ("a.png", b"\0" * 5000, "image/png"))])
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    bomb = _zip({"big.png": b"\0" * 10_000})  # compresses to a few bytes, unpacks past the limit
    r = client.post("/api/datasets/big/upload", files=[("files", ("b.zip", bomb, "application/zip"))])
    assert r.status_code == 400 and "unpacks to more than" in r.json()["error"]
    app.state.max_upload = 10**8
    r = client.post("/api/datasets/big/upload", files=[("files", ("a.png", b"\0" * 5000, "image/png"))])
    assert r.status_code == 200 and r.json()["refused"] == ["a.png is larger than 0.00286 MB: refused"]
    app.state.max_file = 10**8
    huge = io.BytesIO()
    Image.new("1", (12000, 12000)).save(huge, "PNG")  # 144 megapixels in a small file
    r = client.post("/api/datasets/big/upload", files=[("files", ("huge.png", huge.getvalue(), "image/png"))])
    assert r.status_code == 200 and r.json()["stored"] == [] and "huge.png" in r.json()["refused"][0]


@pytest.mark.parametrize("path", ["../outside", "/etc", "datasets/../../outside", "datasets/link"])
def test_traversal_refused_everywhere(client, ws, tmp_path, path):
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside" / "secret.png")
    (ws / "datasets").mkdir(parents=True, exist_ok=True)
    if not (ws / "datasets" / "link").exists():
        os.symlink(tmp_path / "outside", ws / "datasets" / "link")
    for r in (client.get("/api/dataset", params={"path": path}),
              client.get("/api/dataset/check", params={"path": path}),
              client.get("/api/dataset/thumb", params={"path": path, "file": "secret.png"}),
              client.put("/api/dataset/caption", json={"path": path, "file": "secret.png", "caption": "x"}),
              client.get(f"/api/files/{path}/secret.png"),
              client.post("/api/jobs/train", json={"dataset": path}),
              client.post("/api/jobs/other", json={"kind": "pick", "run": path})):
        assert r.status_code in (403, 404), (r.request.url, r.text)
        assert "outside" in r.json()["error"] or ".." in r.json()["error"] or "absolute" in r.json()["error"] \
            or "not a file" in r.json()["error"] or "no such" in r.json()["error"] \
            or r.json()["error"] == "Not Found", r.text  # the client normalised /api/files/../x to /api/x
    for raw in ("/api/files/%2e%2e/outside/secret.png", "/api/files/datasets%2F..%2F..%2Foutside%2Fsecret.png",
                "/api/files/datasets/link/secret.png"):
        r = client.get(raw)
        assert r.status_code in (403, 404) and b"\x89PNG" not in r.content, raw
    assert not (tmp_path / "outside" / "secret.txt").exists()
    assert client.post("/api/datasets/..%2F..%2Fx/upload", files=[("files", ("a.png", png(), "image/png"))]
                       ).status_code in (400, 404)


def test_bad_keys_and_paths_in_the_form(client, ws):
    (ws / "datasets" / "me").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(ws / "datasets" / "me" / "a.png")
    cases = {"train.bogus": (1, "unknown key"), "train.max_steps": (-1, "greater than or equal"),
             "data.class_dir": ("/etc", "outside the workspace"), "model.adapters": ([{"path": "/root/x"}],
                                                                                       "outside the workspace"),
             "output_dir": ("/tmp/x", "cannot be set here"),
             "validation.loss.data_dir": ("/etc", "outside the workspace"),  # any Path key, found by walking
             "model.vae": ("../vae", "'..'"), "data.subsets": ([{"path": "/srv/photos"}], "outside the workspace")}
    for key, (value, needle) in cases.items():
        r = client.post("/api/jobs/train", json={"dataset": "datasets/me", "values": {key: value}})
        assert r.status_code == 400 and needle in r.json()["error"], (key, r.text)
    assert client.get("/api/jobs").json() == []  # nothing queued
    r = client.post("/api/jobs/train", json={"dataset": "datasets/me", "values": {"train.max_steps": 3}})
    assert r.status_code == 200 and r.json()["run"] == "runs/me"
    r = client.post("/api/jobs/other", json={"kind": "run", "run": "runs/me"})
    assert r.status_code == 400 and "cannot be submitted from the page" in r.json()["error"]


def test_token_and_origin_rules(ws):
    with pytest.raises(SdtuneError, match="give a token"):
        server_token("0.0.0.0", None)
    with pytest.raises(SdtuneError, match="at least 16"):
        server_token("0.0.0.0", "short")
    assert server_token("127.0.0.1", None) is None
    open_app = TestClient(create_app(ws), base_url="http://127.0.0.1:7860")
    assert open_app.get("/api/jobs").status_code == 200
    assert open_app.post("/api/jobs/1/cancel").status_code == 403  # no Origin: a change is refused
    r = open_app.post("/api/jobs/1/cancel", headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "same-origin" in r.json()["error"]
    rebind = TestClient(create_app(ws), base_url="http://evil.example:7860")
    assert rebind.get("/api/jobs").status_code == 403  # DNS rebinding onto loopback
    remote = TestClient(create_app(ws, token=TOKEN, loopback=False), base_url="http://10.0.0.5:7860")
    r = remote.get("/api/jobs")
    assert r.status_code == 401 and "token is required" in r.json()["error"]
    assert remote.get("/api/jobs", headers={"authorization": "Bearer wrong-token-xxxxxxxxxxx"}).status_code == 401
    assert remote.get("/api/jobs", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    page = remote.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and remote.cookies.get("sdtune_token") == TOKEN
    assert remote.get("/api/jobs").status_code == 200  # the cookie from the first visit
    assert remote.post("/api/jobs/1/cancel").status_code == 404  # token: allowed through, no such job


def test_serve_refuses_a_public_host_without_a_token(tmp_path, monkeypatch, capsys):
    from sdtune.cli import main

    monkeypatch.delenv("SDTUNE_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--host", "0.0.0.0", "--workspace", str(tmp_path / "ws"), "--no-worker"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 lets other machines reach the server: give a token" in err and "Traceback" not in err
    assert not (tmp_path / "ws").exists()  # refused before anything was created

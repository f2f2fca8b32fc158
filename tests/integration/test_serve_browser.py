"""`sdtune serve` in a real browser (Playwright driving Debian's chromium): photos to a downloadable, verified LoRA.

Upload photos, edit a caption, caption the rest with a fixed caption (a job), start a training on the built-in toy
model, watch its progress reach the end with a validation image, stop and resume it, restart the server mid-job
and see it continue. Counts the clicks from photos to the LoRA file. With SDTUNE_SCREENSHOTS=DIR it writes each
page at a wide and a narrow window there (docs/images/ holds the ones in the README).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser import chromium
from tests.helpers import make_images

pytestmark = pytest.mark.slow
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, ws: Path, port: int, log: Path):
        self.ws, self.port, self.log = ws, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "sdtune", "serve", "--workspace", str(self.ws), "--port",
                                      str(self.port)], stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                time.sleep(0.3)
        raise AssertionError("the server did not start\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(180) == 0, self.log.read_text()[-3000:]
            finally:
                if self.proc.poll() is None:
                    os.killpg(self.proc.pid, signal.SIGKILL)


def set_field(page, name: str, value: str) -> None:
    """Type into the form field named ``name`` and fire its change event (what the page validates on)."""
    page.fill(f"input[name='{name}']", value)
    page.locator(f"input[name='{name}']").dispatch_event("change")


def shots(page, folder: Path | None, name: str) -> None:
    if folder is None:
        return
    for width, label in ((1280, "wide"), (420, "narrow")):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(300)
        page.screenshot(path=str(folder / f"serve-{name}-{label}.png"), full_page=label == "wide")
    page.set_viewport_size({"width": 1280, "height": 900})


def test_photos_to_lora_in_the_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    browser_path = chromium()
    screenshots = Path(os.environ["SDTUNE_SCREENSHOTS"]) if os.environ.get("SDTUNE_SCREENSHOTS") else None
    photos = sorted(make_images(tmp_path / "photos", 6).glob("*.png"))
    ws = tmp_path / "ws"
    server = Server(ws, _port(), tmp_path / "serve.log")
    base = f"http://127.0.0.1:{server.port}"
    server.start()
    clicks = 0
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(base + "/")
            # Datasets: upload (one click on the button, the photos chosen in the file dialog)
            with page.expect_file_chooser() as chooser:
                page.click("#upload-label")
            clicks += 1
            chooser.value.set_files([str(p) for p in photos])
            expect(page.locator(".thumb img")).to_have_count(6)
            page.wait_for_function("[...document.querySelectorAll('.thumb img')].every(i => i.naturalWidth > 0)")
            caption = page.locator("textarea[aria-label='caption of img00.png']")
            caption.fill("a photo of sks person smiling")
            caption.dispatch_event("change")
            expect(page.locator("#flash")).to_contain_text("caption saved")
            assert (ws / "datasets" / "my-photos" / "img00.txt").read_text().strip() == \
                "a photo of sks person smiling"
            page.click("#check-dataset")
            expect(page.locator("#check-verdict")).to_contain_text("OK: 6 images")
            shots(page, screenshots, "datasets")
            page.click("#caption-missing")
            expect(page.locator("#flash")).to_contain_text("caption job")
            # New training: the ready toy config on this dataset, the schema's error beside a bad field
            page.click("#train-on")
            clicks += 1
            expect(page.locator("#f-dataset")).to_have_value("datasets/my-photos")
            set_field(page, "train.max_steps", "0")
            expect(page.locator(".field-err[data-key='train.max_steps']")).to_contain_text("greater than")
            set_field(page, "train.max_steps", "40")
            expect(page.locator(".field-err[data-key='train.max_steps']")).to_have_text("")
            page.click("#advanced summary")  # every key of `sdtune config-keys`, the schema's message beside it
            expect(page.locator(".adv-row[data-key='train.gradient_checkpointing']")).to_be_visible()
            assert page.locator(".adv-row").count() > 50
            set_field(page, "adv:train.max_grad_norm", "-1")
            expect(page.locator(".adv-row .field-err[data-key='train.max_grad_norm']")).not_to_have_text("")
            set_field(page, "adv:train.max_grad_norm", "")
            expect(page.locator("#form-error")).to_have_text("")
            page.click("#advanced summary")
            shots(page, screenshots, "train")
            page.click("#start-training")
            clicks += 1
            # Jobs: live progress over SSE; stop keeps the checkpoint, resume continues
            expect(page.locator("#job-state")).to_have_text("running", timeout=120_000)
            page.wait_for_function("() => { const s = document.querySelector('#job-step'); "
                                   "return s && parseInt(s.textContent.split(' ')[1]) >= 10; }", timeout=240_000)
            expect(page.locator("#job-samples img").first).to_be_visible(timeout=120_000)
            shots(page, screenshots, "jobs")
            page.click("#job-stop")
            expect(page.locator("#job-state")).to_have_text("stopped", timeout=120_000)
            page.click("#job-resume")
            expect(page.locator("#job-state")).to_have_text("running", timeout=120_000)
            page.wait_for_function("() => { const s = document.querySelector('#job-step'); "
                                   "return s && parseInt(s.textContent.split(' ')[1]) >= 20; }", timeout=240_000)
            # the server goes down mid-job and comes back: the job continues from its checkpoint
            server.stop()
            jobs = _jobs(ws)
            train = next(j for j in jobs.values() if j["kind"] == "train")
            assert train["state"] == "queued", train
            server.start()
            page.reload()
            expect(page.locator("#job-state")).to_have_text("finished", timeout=300_000)
            expect(page.locator("#job-step")).to_have_text("step 40/40")
            page.click("#to-results")
            clicks += 1
            link = page.locator("#downloads a", has_text="LoRA (diffusers)")
            with page.expect_download() as download:
                link.click()
            clicks += 1
            lora = tmp_path / "lora.safetensors"
            download.value.save_as(lora)
            shots(page, screenshots, "results")
            browser.close()
    finally:
        server.stop()
    assert clicks <= 6, clicks
    from safetensors.torch import load_file

    assert any("lora" in k for k in load_file(lora))
    train = next(j for j in _jobs(ws).values() if j["kind"] == "train")
    log = (ws / "jobs" / f"{train['id']}.log").read_text()
    assert "RUN/lora verified" in log  # the run checked the file loads as diffusers loads it
    assert train["attempts"] == 3 and train["state"] == "finished"  # first, resumed, after the restart
    caption_job = next(j for j in _jobs(ws).values() if j["kind"] == "caption")
    assert caption_job["state"] == "finished", (ws / "jobs" / f"{caption_job['id']}.log").read_text()[-2000:]
    assert (ws / "datasets" / "my-photos-captioned" / "metadata.jsonl").is_file()
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in (ws / "runs" / "my-photos" / "logs" / "progress.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, 41))


def _jobs(ws: Path) -> dict[int, dict]:
    from sdtune.jobs.store import JobStore

    return {j.id: j.to_dict() for j in JobStore.in_workspace(ws).jobs()}

"""The Jobs page in a real browser (Playwright driving Debian's chromium) for jobs that never trained far.

Found by a newcomer: a failed job offered "Resume" (the action retries it), and a job with no loss curve or no
validation images yet showed an empty chart and an empty box. Found by CI: on an ended job the page reopened its
event stream on every "end" (a reconnect loop), re-rendering the panel so fast that a click on "Results and
downloads" never found its link attached. The page (the real app, served by uvicorn; no
worker, so a queued job stays queued) must name the action by what it does and say what is not there yet.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from tests.browser import chromium
from tests.integration.test_serve_browser import FLAGS

pytestmark = pytest.mark.slow


def _serve(ws: Path):
    import uvicorn

    from sdtune.server.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ws), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        threading.Event().wait(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def test_a_failed_job_without_loss_or_samples_says_so_and_offers_retry(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from sdtune.jobs.store import JobStore

    ws = tmp_path / "ws"
    run = ws / "runs" / "early"
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text(json.dumps({"model": {"base": "toy"}, "train": {"max_steps": 40}}))
    (run / "logs" / "progress.jsonl").write_text(json.dumps({"step": 1, "max_steps": 40, "loss": 0.5}) + "\n")
    store = JobStore.in_workspace(ws)
    job = store.submit("train", ["train", "x.yaml"], name="early", run_dir=run)
    store.claim_next()
    assert store.ended(job.id, 1).state == "failed"
    server, thread, base = _serve(ws)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=FLAGS)
            page = browser.new_page()
            page.set_default_timeout(30_000)
            streams: list[str] = []
            page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
            page.goto(f"{base}/#jobs/{job.id}")
            expect(page.locator("#job-state")).to_have_text("failed")
            page.wait_for_timeout(4000)  # an ended job's stream is opened once, not reopened on its "end"
            assert len(streams) == 1, f"{len(streams)} event streams in 4 s for an ended job"
            expect(page.locator("#job-step")).to_have_text("step 1/40")
            expect(page.locator("#job-no-loss")).to_have_text("no loss yet")  # one point: no curve to draw
            expect(page.locator("#job-no-samples")).to_have_text("no samples yet")
            expect(page.locator("#job-log")).to_have_text("no log yet")
            assert page.locator("svg.chart").count() == 0 and page.locator("#job-resume").count() == 0
            expect(page.locator("#job-retry")).to_have_text("Retry")
            page.click("#job-retry")
            expect(page.locator("#job-state")).to_have_text("queued")
            expect(page.locator("#job-cancel")).to_have_text("Cancel")
            # the view of a live job arrives every second: a new step redraws the numbers, not the buttons (a
            # button rebuilt under the pointer loses the click)
            page.evaluate("document.querySelector('#job-cancel').dataset.marked = 'yes'")
            with open(run / "logs" / "progress.jsonl", "a") as fh:
                fh.write(json.dumps({"step": 2, "max_steps": 40, "loss": 0.4}) + "\n")
            expect(page.locator("#job-step")).to_have_text("step 2/40")
            assert page.evaluate("document.querySelector('#job-cancel').dataset.marked") == "yes"
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    assert store.get(job.id).state == "queued" and store.get(job.id).attempts == 1

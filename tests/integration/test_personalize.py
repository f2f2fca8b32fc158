"""``sdtune personalize`` on Ray: 4 people on 2 fake-GPU slots, kill -9 of a person and of a worker (exact resume),
Ctrl-C (nothing left running, rerun continues), and the unchanged command on a `ray start --head` cluster."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file

from sdtune.engine.loopback import SWITCH
from tests.helpers import make_images, run_cli

pytestmark = pytest.mark.slow

STEPS = 4
LORA = "lora/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def concept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny concept LoRA run, trained in-process, without a fused model: personalize must make it."""
    from sdtune.config import config_from_dict
    from sdtune.training.loop import train

    root = tmp_path_factory.mktemp("concept")
    thumbs = make_images(root / "thumbs", 3, color=(220, 180, 40), captions=["a person giving a thumbs up"])
    cfg = config_from_dict({"output_dir": str(root / "run"), "model": {"base": "tiny"},
                            "data": {"train_dir": str(thumbs), "resolution": 32},
                            "train": {"lora": {"rank": 4}, "max_steps": 3, "learning_rate": 1e-3},
                            "logging": {"trackers": []}})
    assert train(cfg).status == "finished" and not (root / "run" / "model").exists()
    return root / "run"


# tokens new to the tiny tokenizer: personalize's default, pivotal tuning, adds each as a new token (a word the
# vocabulary has, such as "z", is refused)
PEOPLE = {"alice": ("<alice>", (40, 90, 200)), "bob": ("<bob>", (200, 60, 90)), "dave": ("<dave>", (60, 200, 90)),
          "erin": ("<erin>", (120, 120, 30))}


def _people(tmp: Path, names: list[str], broken: bool = False) -> Path:
    lines = ["name,photos,token,class"]
    for name in names:
        token, color = PEOPLE[name]
        make_images(tmp / "photos" / name, 2, color=color)
        lines.append(f"{name},photos/{name},{token},{'woman' if name in ('alice', 'erin') else 'man'}")
    if broken:
        folder = tmp / "photos" / "carol"
        folder.mkdir(parents=True)
        (folder / "img00.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        (folder / "img01.jpg").write_text("not an image")
        lines.append("carol,photos/carol,<carol>,woman")
    path = tmp / "people.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _args(csv_path: Path, concept: Path, out: Path, *extra: str) -> list[str]:
    return [str(csv_path), "--concept", str(concept), "--out", str(out), f"train.max_steps={STEPS}",
            "train.learning_rate=0.001", "train.lora.rank=4", "checkpoint.every=2", "checkpoint.keep=20",
            "logging.trackers=[]", "--num-gpus", "2", "--num-cpus", "2", *extra]


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", encoding="utf-8") as fh:
        return {row["subject"]: row for row in csv.DictReader(fh)}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _attempt(run: Path) -> dict:
    return json.loads((run / ".train.log.engine" / "attempt.json").read_text())


def _same_lora(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_four_people_share_two_gpu_slots_then_a_rerun_skips_them(concept: Path, tmp_path: Path) -> None:
    csv_path, out = _people(tmp_path, list(PEOPLE), broken=True), tmp_path / "people"
    args = _args(csv_path, concept, out, "data.with_prior_preservation=true", "data.num_class_images=2",
                 "data.class_generation_steps=2")  # class images shared per class (the default needs none)
    proc = run_cli("personalize", *args)
    assert "fusing the concept LoRA" in proc.stdout and (out / "concept-model" / "model_index.json").is_file()
    # Ray is started once the input is checked (carol's bad photos included), before the slow preparation
    lines = proc.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(text)) for text in
             ("carol: not trained:", "Ray: starting on this machine", "fusing the concept LoRA", "class images:",
              "Ray: up in")]
    assert order == sorted(order), proc.stdout
    assert not (concept / "model").exists(), "the concept run folder is only read"
    assert "carol: not trained:" in proc.stdout and "img01.jpg" in proc.stdout
    rows = _summary(out)
    assert list(rows) == ["alice", "bob", "dave", "erin", "carol"]
    for name in PEOPLE:
        row = rows[name]
        assert row["status"] == "finished" and row["steps"] == str(STEPS) and row["attempts"] == "1"
        assert float(row["final_loss"]) > 0 and float(row["seconds"]) > 0 and row["node"]
        assert row["output"] == str(out / name / LORA) and (out / name / "stack" / "adapters.json").is_file()
        assert json.loads((out / name / "metrics.json").read_text())["processes"] == 1
    assert {rows[n]["device"] for n in PEOPLE} == {"cuda:0", "cuda:1"}, "each slot is one (fake) GPU"
    assert rows["carol"]["status"] == "failed" and "img01.jpg" in rows["carol"]["note"]
    assert not (out / "carol" / "checkpoints").exists(), "a subject with bad photos must not start training"
    assert len(list((out / "class-images" / "woman").glob("*.png"))) == 2
    # a line per state change; never more than two people training at once, and both slots used
    log = (out / "personalize.log").read_text().splitlines()
    busy, most = 0, 0
    for line in log:
        busy += line.endswith(": training") or " training on " in line
        busy -= any(line.split(" ", 2)[2].startswith(f"{n}: finished") for n in PEOPLE)
        most = max(most, busy)
    assert most == 2, log
    assert sum(": queued" in line for line in log) == 4

    # a rerun skips the finished subjects and tries the broken one again; --strict makes that a failure
    before = (out / "bob" / "metrics.json").stat().st_mtime_ns
    rerun = run_cli("personalize", *args, "--strict", check=False)
    assert rerun.returncode == 3, rerun.stdout + rerun.stderr
    rows = _summary(out)
    assert {rows[n]["note"] for n in PEOPLE} == {"finished earlier: skipped"} and rows["carol"]["status"] == "failed"
    assert (out / "bob" / "metrics.json").stat().st_mtime_ns == before
    assert "not finished: carol" in rerun.stderr and "Ray:" not in rerun.stdout, "nothing to train: no Ray"


def test_killed_person_and_killed_worker_are_retried_and_end_bitwise_equal(concept: Path, tmp_path: Path) -> None:
    csv_path, out = _people(tmp_path, ["alice", "bob"]), tmp_path / "people"
    args = [*_args(csv_path, concept, out, "--retries", "1"), "train.max_steps=12"]
    proc = subprocess.Popen([sys.executable, "-m", "sdtune", "personalize", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # each is killed as soon as ITS step-2 checkpoint appears, watched side by side: waiting for alice first let
    # bob, started seconds earlier on a quiet CI machine, finish all 12 steps before its worker was killed
    bob: psutil.Process | None = None
    waiting = {"alice", "bob"}
    deadline = time.time() + 300
    while waiting:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, f"no step-2 checkpoint for {waiting}"
        for name in sorted(waiting):
            if not (out / name / "checkpoints" / "step-000002" / "state.json").exists():
                continue
            waiting.discard(name)
            child = psutil.Process(_attempt(out / name)["pid"])
            if name == "alice":
                child.kill()  # kill -9 of a person's training process
            else:
                bob, worker = child, child.parent()
                assert worker is not None and worker.pid != proc.pid
                worker.kill()  # kill -9 of the Ray worker running bob
        time.sleep(0.01)
    assert bob is not None
    bob.wait(15)  # the worker's child dies with it (parent-death signal): nothing keeps its GPU
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    rows = _summary(out)
    for name in ("alice", "bob"):
        assert rows[name]["status"] == "finished" and rows[name]["attempts"] == "2", output
        log = (out / name / "train.log").read_text()
        assert "resumed from" in log, (rows[name], log)  # it resumed, not found its run finished
        step = int(log.split("resumed from ")[-1].split("(step ")[1].split(")")[0])
        assert 2 <= step < 12 and rows[name]["note"] == f"retried 1x, resumed from step {step}", (rows[name], log)
    log = (out / "personalize.log").read_text()
    assert "alice: retrying" in log and "bob: retrying" in log and "worker or node died" in log
    for name in ("alice", "bob"):  # each equals its uninterrupted solo run
        run_cli("train", str(out / name / "config.yaml"), f"output_dir={tmp_path / ('solo-' + name)}")
        assert _same_lora(tmp_path / f"solo-{name}" / LORA, out / name / LORA), f"{name} must resume exactly"


def test_ctrl_c_stops_everyone_leaves_nothing_running_and_the_rerun_continues(concept: Path,
                                                                               tmp_path: Path) -> None:
    csv_path, out = _people(tmp_path, ["alice", "bob"]), tmp_path / "people"
    args = [*_args(csv_path, concept, out, "--num-gpus", "1"), "train.max_steps=30"]  # one slot: bob waits
    # its own process group, as a terminal's foreground job: Ctrl-C is SIGINT to the whole group
    proc = subprocess.Popen([sys.executable, "-m", "sdtune", "personalize", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _wait_for(out / "alice" / "checkpoints" / "step-000002" / "state.json", proc)
    family = psutil.Process(proc.pid).children(recursive=True)
    family += [psutil.Process(_attempt(out / "alice")["pid"])]  # its own session: not a child of ours
    assert any("raylet" in " ".join(p.cmdline()) for p in family if p.is_running())
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output
    time.sleep(1)
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running after Ctrl-C: {[(p.pid, p.cmdline()[:3]) for p in alive]}"
    rows = _summary(out)
    assert rows["alice"]["status"] == "interrupted" and rows["bob"]["status"] == "pending", output
    assert not (out / "alice" / "metrics.json").exists() and not (out / "bob" / "checkpoints").exists()
    assert "alice: stopped" in (out / "personalize.log").read_text()

    run_cli("personalize", *args)  # the same command continues
    rows = _summary(out)
    assert rows["alice"]["status"] == rows["bob"]["status"] == "finished"
    assert rows["alice"]["steps"] == "30" and "resumed from" in (out / "alice" / "train.log").read_text()


def test_a_ray_start_cluster_runs_the_unchanged_command_and_judges(concept: Path, tmp_path: Path) -> None:
    """`ray start --head` on 127.0.0.1, started and stopped here (by pid, never `ray stop`: others may run Ray).
    With --prompts each finished person is judged by `sdtune pick` on the cluster too."""
    from sdtune.evaluation.testing import build_tiny_clip

    csv_path, out = _people(tmp_path, ["alice"]), tmp_path / "people"
    prompts = tmp_path / "composite.txt"
    prompts.write_text("a photo of {token} {class} giving a thumbs up\n", encoding="utf-8")
    clip = build_tiny_clip(tmp_path / "clip")
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    port = _free_port()
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                             "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
                             "--object-store-memory", str(100 * 1024 * 1024), "--temp-dir", str(temp)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=os.environ | {SWITCH: "0"})  # on 127.0.0.1 only: sdtune.engine.loopback
    try:
        args = [str(csv_path), "--concept", str(concept), "--out", str(out), "train.max_steps=4",
                "train.lora.rank=4", "checkpoint.every=2", "logging.trackers=[]", "--prompts", str(prompts),
                "--clip", str(clip), "--eval-seeds", "1", "--eval-steps", "2"]
        deadline = time.time() + 120
        while True:  # the head answers once it is up
            proc = run_cli("personalize", *args, env={"RAY_ADDRESS": f"127.0.0.1:{port}"}, check=False)
            if proc.returncode == 0 or time.time() > deadline or "cannot reach" not in proc.stderr:
                break
            time.sleep(2)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"cluster 127.0.0.1:{port}" in proc.stdout
        row = _summary(out)["alice"]
        assert row["status"] == "finished" and row["device"] == "cpu" and row["attempts"] == "1"
        assert np.isfinite(float(row["final_loss"]))
        assert row["picked_step"] in ("2", "4") and -1 <= float(row["fidelity"]) <= 1, row
        assert np.isfinite(float(row["composite"])) and (out / "alice" / "picked" / "pick.json").is_file()
        assert "<alice> woman giving a thumbs up" in (out / "alice" / ".pick-prompts.txt").read_text()
        ips = {c.laddr.ip for p in psutil.Process(head.pid).children(recursive=True)
               for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        assert ips and ips <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, ips  # the head on loopback only
    finally:
        _stop_cluster(head, temp)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_cluster(head: subprocess.Popen, temp: Path) -> None:
    """Stop the head this test started: its `ray start --block` (which ends what it started), then any process
    still naming this test's temp folder, by pid."""
    if head.poll() is None:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    deadline = time.time() + 30
    while True:
        left = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if str(temp) in " ".join(p.info["cmdline"] or []):
                    left.append(p)
            except psutil.Error:
                continue
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    for p in left:
        p.kill()
    assert not left, f"Ray processes of the test cluster outlived it: {[x.pid for x in left]}"


def test_bad_input_is_refused_before_training(concept: Path, tmp_path: Path) -> None:
    make_images(tmp_path / "photos" / "alice", 2)
    people = tmp_path / "people.csv"
    out = tmp_path / "people"
    people.write_text("name,photos,token,class\nalice,photos/alice,sks,woman\nALICE,photos/alice,sks,woman\n"
                      "bob,photos/bob,sks,man\n", encoding="utf-8")
    proc = run_cli("personalize", str(people), "--concept", str(concept), "--out", str(out), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "line 3: the name 'ALICE' differs from 'alice' (line 2) only in case" in proc.stderr
    assert "line 4: the photo folder" in proc.stderr and "of 'bob' does not exist" in proc.stderr
    people.write_text("name,photos,token,class\nalice,photos/alice,z,woman\n", encoding="utf-8")
    proc = run_cli("personalize", str(people), "--concept", str(concept), "--out", str(out), check=False)
    assert proc.returncode == 2 and "alice: token 'z' is already a word of the concept's tokenizer" in proc.stderr
    people.write_text("name,photos,token,class\nalice,photos/alice,zwx,woman\n", encoding="utf-8")
    proc = run_cli("personalize", str(people), "--concept", str(concept), "--out", str(out),
                   "train.textual_inversion=null", check=False)  # a DreamBooth LoRA trains on the word itself
    assert proc.returncode == 2 and "alice: token 'zwx' splits into 3 pieces (z, w, x)" in proc.stderr
    people.write_text("name,photos,token,class\nalice,photos/alice,sks,woman\n", encoding="utf-8")
    proc = run_cli("personalize", str(people), "--concept", str(concept), "--out", str(out), "--address",
                   f"127.0.0.1:{_free_port()}", check=False)
    assert proc.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in proc.stderr
    assert not (out / "alice" / "checkpoints").exists()


RAY_PROCESSES = ("raylet", "gcs_server")


def _names(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _follow(proc: subprocess.Popen, until, timeout: float = 300, seen: dict | None = None) -> bool:
    """Note every process below ``proc`` in ``seen`` (``(pid, start) -> [process, command line]``, polled every
    0.05 s) until ``until(seen)`` is true (returns True), ``proc`` ends or ``timeout`` seconds pass (False)."""
    seen = {} if seen is None else seen
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                entry = seen.setdefault((child.pid, child.create_time()), [child, ""])
                entry[1] = _names(child) or entry[1]  # the latest: a fresh fork shows its parent's until exec
        except psutil.Error:
            pass
        if until(seen):
            return True
        time.sleep(0.05)
    return False


def _ray_seen(seen: dict, alive: bool = False) -> bool:
    return any(any(n in name for n in RAY_PROCESSES) and (not alive or p.is_running()) for p, name in seen.values())


def _all_gone(seen: dict, timeout: float = 20) -> list[str]:
    """Wait for every process in ``seen`` to end; kill and name those still running after ``timeout`` s."""
    deadline = time.time() + timeout
    alive = list(seen.values())
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [(p, name) for p, name in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p, _ in alive:
        p.kill()
    return [f"{p.pid} {name[:80]}" for p, name in alive]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ray_starts_while_preparing_and_a_stop_then_leaves_nothing(concept: Path, tmp_path: Path, how: str) -> None:
    """Ray boots while personalize prepares (here: drawing many class images); Ctrl-C (SIGINT to the terminal's
    process group) or SIGTERM (to personalize alone, as a scheduler sends it) during that: exit 130, nobody
    trained, no Ray process left, and the people are pending for the rerun."""
    csv_path, out = _people(tmp_path, ["alice", "bob"]), tmp_path / "people"
    args = _args(csv_path, concept, out, "data.with_prior_preservation=true", "data.num_class_images=2000",
                 "data.class_generation_steps=4")  # long enough never to finish here
    proc = subprocess.Popen([sys.executable, "-m", "sdtune", "personalize", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def ray_up_while_preparing(seen: dict) -> bool:
        return _ray_seen(seen, alive=True) and not list(out.glob("*/checkpoints")) and \
            len(list(out.glob("class-images/*/*.png"))) < 4000

    seen: dict = {}
    try:
        overlapped = _follow(proc, ray_up_while_preparing, seen=seen)
        assert overlapped, "Ray was not running while personalize prepared (it must start before the preparation)"
        (os.killpg if how == "ctrl-c" else os.kill)(proc.pid, signal.SIGINT if how == "ctrl-c" else signal.SIGTERM)
        _follow(proc, lambda _: False, seen=seen)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output
    alive = _all_gone(seen)
    assert not alive, f"left running after {how} during the preparation: {alive}"
    rows = _summary(out)
    assert rows["alice"]["status"] == rows["bob"]["status"] == "pending", output
    assert not list(out.glob("*/checkpoints")) and "Traceback" not in output


def test_a_failing_preparation_stops_the_ray_it_started(concept: Path, tmp_path: Path) -> None:
    """The concept's LoRA cannot be fused (a damaged file): the one error line as before, and the Ray that was
    booting meanwhile is shut down: no process left."""
    import shutil

    broken = tmp_path / "concept"
    shutil.copytree(concept, broken)
    (broken / LORA).write_bytes(b"not a safetensors file" * 10)
    csv_path, out = _people(tmp_path, ["alice"]), tmp_path / "people"
    proc = subprocess.Popen([sys.executable, "-m", "sdtune", "personalize", *_args(csv_path, broken, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: dict = {}
    try:
        _follow(proc, lambda _: False, seen=seen)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode not in (0, 130), stdout + stderr
    assert "Ray: starting on this machine" in stdout and "fusing the concept LoRA" in stdout, stdout
    assert _ray_seen(seen), "Ray was not started meanwhile"
    assert "Traceback" not in stderr and "cannot fuse the concept's LoRA" in stderr.strip().splitlines()[-1], stderr
    alive = _all_gone(seen)
    assert not alive, f"left running after a failed preparation: {alive}"

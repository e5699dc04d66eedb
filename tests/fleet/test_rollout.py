"""Staged rollouts end to end: ``edgecls fleet deploy --stages`` against real ``edgecls run --mqtt`` devices on a
looping video, a real broker, a good model that reaches every device and a bad one that is rolled back."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from broker_support import wait_until
from support import BIRD_MODEL, IMAGENET_MODEL, REPO, log_records, potato_subset, run_cli, write_video

from edge_app.runtime.signing import load_private_key, load_public_key, sign_model, sign_sha256

IMAGENET_SHA, BIRD_SHA = (hashlib.sha256(m.read_bytes()).hexdigest() for m in (IMAGENET_MODEL, BIRD_MODEL))
SOAK = ("--soak", "3s")


def fleet(*args, timeout: float = 180):
    return run_cli("fleet", *map(str, args), timeout=timeout)


@pytest.fixture
def kiosks(tmp_path, broker, keys, subscribe):
    """``start(n)`` → ``kiosk-1..n``: ``edgecls run --mqtt`` on Coral's ImageNet model and a looping parrot video,
    a status every 0.5 s; ``status(id)`` is a device's newest status, ``swaps(id)`` the sha256s it swapped to."""
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 30)], size=(320, 240))
    statuses = subscribe("edgecls/+/status")
    procs = []

    def status(device: str) -> dict:
        return next((b for b in reversed(statuses.bodies(f"{device}/status"))), {})

    def start(n: int) -> list[str]:
        devices = [f"kiosk-{i}" for i in range(1, n + 1)]
        for device in devices:
            folder = tmp_path / device
            folder.mkdir()
            shutil.copy(IMAGENET_MODEL, folder / "model.tflite")
            with open(folder / "stderr.log", "w") as stderr:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "edgecls", "run", str(folder / "model.tflite"), "--source", str(video),
                     "--loop", "--threads", "1", "--log", str(folder / "run.jsonl"), "--mqtt", broker.url,
                     "--device-id", device, "--trust", str(keys["good"][1]), "--status-every", "0.5"],
                    cwd=REPO, stderr=stderr, stdout=subprocess.DEVNULL))
        # FPS is measured over the first frames: the before-figures need a settled one.
        wait_until(lambda: all((s := status(d)).get("online") and s.get("frames", 0) > 20 and s.get("fps", 0) > 0
                               for d in devices), 120, "every kiosk online and classifying")
        return devices

    def swaps(device: str) -> list[str]:
        return [e["new_sha256"] for e in log_records(tmp_path / device / "run.jsonl") if e.get("event") == "model_swapped"]

    yield start, status, swaps
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def bad_model(tmp_path):
    """A model that calls every frame of the parrot video ``unknown``: potato leaves learned from 12 photos."""
    out = tmp_path / "potato.tflite"
    done = run_cli("learn", potato_subset(tmp_path / "leaves", per_class=4), "--out", out, "--threads", "2")
    assert done.returncode == 0, done.stderr
    return out


def test_a_good_model_reaches_every_device_in_stages_and_a_dry_run_sends_nothing(broker, keys, kiosks, tmp_path):
    start, status, swaps = kiosks
    devices = start(3)
    state = tmp_path / "rollout.json"
    common = (BIRD_MODEL, "--to", "kiosk-*", "--key", keys["good"][0], "--broker", broker.url, "--wait", 1,
              "--stages", "1,100%", *SOAK, "--state", state)
    plan = fleet("deploy", *common, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "1      1      pending  kiosk-1" in plan.stdout and "kiosk-2, kiosk-3" in plan.stdout, plan.stdout
    assert "soak 3 s" in plan.stdout and "unknown_rise=0.2" in plan.stdout and "fps_drop=0.5" in plan.stdout
    time.sleep(1)
    assert not state.exists() and all(swaps(d) == [] for d in devices)  # sent nothing, wrote nothing

    done = fleet("deploy", *common, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["result"] == "passed" and [s["devices"] for s in report["plan"]] == [["kiosk-1"], ["kiosk-2", "kiosk-3"]]
    for stage in report["plan"]:
        assert stage["state"] == "passed" and all(a["result"] == "accepted" for a in stage["acks"].values())
        for device in stage["devices"]:
            before, after = stage["before"][device], stage["after"][device]
            assert before["model_sha256"] == IMAGENET_SHA and before["unknown"] == 0.0
            assert after["model_sha256"] == BIRD_SHA and after["frames"] > 0 and after["fps"] > 0
            assert after["unknown"] == 0.0 and after["errors"] == 0 and stage["problems"][device] == []
    assert "soak" in done.stderr  # progress while soaking
    assert all(swaps(d) == [BIRD_SHA] and status(d)["model_sha256"] == BIRD_SHA for d in devices)
    assert json.loads(state.read_text())["plan"][1]["state"] == "passed"
    again = fleet("deploy", *common)  # everything passed already: nothing is sent again
    assert again.returncode == 0 and "3 device(s) run it" in again.stdout, again.stdout + again.stderr
    assert all(swaps(d) == [BIRD_SHA] for d in devices)


def test_a_bad_model_stops_at_the_first_stage_and_that_device_is_rolled_back(broker, keys, kiosks, bad_model):
    start, status, swaps = kiosks
    devices = start(3)
    done = fleet("deploy", bad_model, "--to", "kiosk-*", "--key", keys["good"][0], "--broker", broker.url, "--wait", 1,
                 "--stages", "1,100%", *SOAK, "--state", bad_model.with_suffix(".json"))
    assert done.returncode == 1, done.stdout + done.stderr
    bad_sha = hashlib.sha256(bad_model.read_bytes()).hexdigest()
    assert "stage 1 of 2 (1): rolled back" in done.stdout and "FAILED: unknown 0% -> 100%" in done.stdout, done.stdout
    assert "stopped at stage 1 of 2" in done.stderr.strip().splitlines()[-1]
    assert swaps("kiosk-1") == [bad_sha, IMAGENET_SHA]  # swapped back to the model it kept
    wait_until(lambda: status("kiosk-1")["model_sha256"] == IMAGENET_SHA, 10, "kiosk-1 back on its model")
    for device in devices[1:]:  # never got it
        assert swaps(device) == [] and status(device)["model_sha256"] == IMAGENET_SHA
    state = json.loads(bad_model.with_suffix(".json").read_text())
    assert [s["state"] for s in state["plan"]] == ["rolled back", "pending"]
    assert state["plan"][0]["rollback"]["kiosk-1"]["result"] == "accepted"
    rerun = fleet("deploy", bad_model, "--to", "kiosk-*", "--key", keys["good"][0], "--broker", broker.url, "--wait",
                  1, "--stages", "1,100%", *SOAK, "--state", bad_model.with_suffix(".json"))
    assert rerun.returncode == 1 and "delete" in rerun.stderr and swaps("kiosk-1") == [bad_sha, IMAGENET_SHA]


def test_an_interrupted_rollout_resumes_without_deploying_stage_1_again(broker, keys, kiosks, tmp_path):
    start, status, swaps = kiosks
    devices = start(2)
    state = tmp_path / "rollout.json"
    argv = [sys.executable, "-m", "edgecls", "fleet", "deploy", str(BIRD_MODEL), "--to", "kiosk-*", "--key",
            str(keys["good"][0]), "--broker", broker.url, "--wait", "1", "--stages", "1,100%", *SOAK, "--state",
            str(state)]
    # Ctrl-C as a terminal sends it (a process started in the background may inherit SIGINT ignored).
    first = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until(lambda: state.exists() and json.loads(state.read_text())["plan"][0]["state"] == "passed", 60,
               "stage 1 to pass")
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=30)
    assert first.returncode == 130, out + err
    assert "run the same command again" in err and str(state) in err
    assert json.loads(state.read_text())["plan"][0]["state"] == "passed"

    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stage 1 of 2: passed in an earlier run" in done.stderr
    assert swaps("kiosk-1") == [BIRD_SHA] and swaps("kiosk-2") == [BIRD_SHA]  # each got it once
    assert all(status(d)["model_sha256"] == BIRD_SHA for d in devices)


@pytest.mark.parametrize("args, says", [
    (("--stages", "1,100%", "--gate", "unknwon_rise=0.1"), "did you mean unknown_rise?"),
    (("--stages", "1,100%", "--gate", "fps_drop=2"), "fps_drop is a share from 0 to 1"),
    (("--stages", "0,100%"), "is not a device count"),
    (("--stages", "1,100%", "--soak", "ten minutes"), "--soak 'ten minutes'"),
    (("--soak", "10m"), "--soak belongs to a rollout in stages"),
])
def test_bad_rollout_input_is_one_line_and_exit_2(keys, args, says):
    done = fleet("deploy", IMAGENET_MODEL, "--to", "kiosk-*", "--key", keys["good"][0], "--broker",
                 "mqtt://127.0.0.1:9", *args)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_rollback_is_signed_and_installs_only_the_kept_model_it_names(keys):
    """The device side of a rollback: the signature is checked before the kept model is even read."""
    from edge_app.link.commands import CommandDesk

    acks, installed, reads = [], [], []
    kept = IMAGENET_MODEL.read_bytes()

    def kept_model():
        reads.append(1)
        return kept

    def installer(data: bytes, origin: str):
        installed.append((data, origin))
        return True, "swapped", hashlib.sha256(data).hexdigest()

    key = load_private_key(keys["good"][0])
    desk = CommandDesk("kiosk-1", acks.append, load_public_key(keys["good"][1]), installer, 8_000_000,
                       kept_model=kept_model)
    desk.start()
    try:
        other = load_private_key(keys["other"][0])
        for request, fields in [("unsigned", {**sign_sha256(other, IMAGENET_SHA), "previous": True}),
                                ("another", {**sign_sha256(key, BIRD_SHA), "previous": True}),
                                ("both", {**sign_sha256(key, IMAGENET_SHA), "previous": True, "model": "AAAA"}),
                                ("rollback", {**sign_sha256(key, IMAGENET_SHA), "previous": True})]:
            answered = len(acks)
            desk.submit("model", json.dumps({"id": request, **fields}).encode())
            wait_until(lambda n=answered: len(acks) > n, what=f"the ack of {request}")  # one at a time
        answers = {a["id"]: a for a in acks}
    finally:
        desk.close()
    assert "does not verify" in answers["unsigned"]["reason"] and not answers["unsigned"]["accepted"]
    assert "the model this device kept is" in answers["another"]["reason"]
    assert "exactly one of" in answers["both"]["reason"]
    assert answers["rollback"]["accepted"] and answers["rollback"]["sha256"] == IMAGENET_SHA
    assert [d for d, _ in installed] == [kept] and "rollback" in installed[0][1]
    assert len(reads) == 2  # the unsigned one never touched the kept file
    assert sign_model(key, kept) == sign_sha256(key, IMAGENET_SHA)


def test_stages_are_cumulative_shares_of_the_sorted_devices_and_gates_judge_against_before():
    from fleet.stages import judge, parse_gates, parse_stages, plan_stages, soak_figures

    kiosks = [f"kiosk-{i:02d}" for i in range(40, 0, -1)]
    plan = plan_stages(kiosks, parse_stages("1,10%,100%"))
    assert plan[0] == ["kiosk-01"] and plan[1] == ["kiosk-02", "kiosk-03", "kiosk-04"] and len(plan[2]) == 36
    assert plan_stages(["b", "a", "c"], ["1", "10%", "100%"]) == [["a"], [], ["b", "c"]]

    gates = parse_gates(["fps_drop=0.3", "uncertain_rise=off"])
    before = {"model_sha256": "old", "fps": 20.0, "unknown": 0.05, "uncertain": 0.1, "errors": 1, "frames": 100}
    start = {"model_sha256": "new", "frames": 100, "unknown_frames": 5, "uncertain_frames": 10, "errors": 1}

    def after(**end):
        status = {**start, "frames": 200, "unknown_frames": 10, "uncertain_frames": 60, "errors": 1, **end}
        return soak_figures(before, start, status, [end.get("fps", 19.0)], None)

    assert judge(before, after(), gates, "new") == []  # uncertain 10% -> 50%, but that gate is off
    assert judge(before, after(unknown_frames=35), gates, "new") == ["unknown 5% -> 30% (+25 pp, gate 20 pp)"]
    assert judge(before, after(fps=13.0), gates, "new") == ["fps 20.0 -> 13.0 (fell 35%, gate 30%)"]
    assert "error event" in judge(before, after(errors=2), gates, "new")[0]
    assert judge(before, after(frames=100, unknown_frames=5, uncertain_frames=10), gates, "new") == [
        "classified no frame during the soak"]
    gone = soak_figures(before, start, None, [], "connection lost (last will)")
    assert judge(before, gone, gates, "new") == ["offline (connection lost (last will))"]
    assert judge(before, gone, parse_gates(["offline=ignore"]), "new") == []

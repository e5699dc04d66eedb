"""``edgecls fleet deploy MODEL --stages 1,10%,100% --soak 10m``: a rollout in stages that stops and rolls back.

Each stage deploys the signed model to the devices it adds (the same round trip as a plain deploy),
then watches those devices' own retained status for the soak time against their figures from just
before the deploy (:mod:`fleet.stages` judges). A failing stage is rolled back: each of its devices
gets a signed rollback, ``"previous": true`` with the sha256 of the model it ran before (from its
status), and swaps back to the copy of that model it kept when the deploy replaced it (``--previous
MODEL`` sends that file instead to the devices that ran it). Every step is written to the state file
first, so a rerun of the same command resumes at the first stage that did not pass.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from edge_app.runtime.errors import CheckFailed
from fleet.stages import (
    before_figures,
    gate_text,
    judge,
    load_state,
    new_state,
    parse_duration,
    parse_gates,
    parse_stages,
    percent,
    plan_stages,
    save_state,
    soak_figures,
    state_path,
)

log = logging.getLogger("edgecls")

DEFAULT_SOAK = "10m"
FINAL_STATUS_WAIT_S = 30.0  # after the soak, for each device's next status (devices send one every 5 s)
ENDED = ("rolled back", "rollback failed")  # a stage in one of these states ended the rollout


def rollout(args: argparse.Namespace, sign, connect, targets) -> int:
    """Run (or resume, or with ``--dry-run`` only print) a staged rollout; the CLI hands over its deploy helpers.

    ``sign(args) -> (key id, signature fields, message fields)``, ``connect(args) -> FleetClient``,
    ``targets(args, fleet, statuses, key id) -> (online devices, {offline device: why})``.
    """
    from edge_app.runtime.files import check_writable

    stages = parse_stages(args.stages)
    soak_s = parse_duration(args.soak or DEFAULT_SOAK)
    gates = parse_gates(args.gate)
    ours, signed, fields = sign(args)
    previous = None
    if args.previous:
        _, before, before_fields = sign(argparse.Namespace(**{**vars(args), "model": args.previous, "url": None}))
        previous = (before["sha256"], before_fields)
    path = state_path(args.state, signed["sha256"])
    state = load_state(path, signed["sha256"], args.to, stages)
    if not args.dry_run:
        check_writable(path, "--state")
    with connect(args) as fleet:
        statuses = fleet.statuses(args.wait)
        if state is None:
            online, skipped = targets(args, fleet, statuses, ours)
            state = new_state(Path(args.model).name, signed["sha256"], args.to, stages, plan_stages(online, stages),
                              skipped)
        else:
            log.info("resuming the rollout recorded in %s", path)
        if args.dry_run:
            from fleet.report import plan_table

            print(json.dumps({"dry_run": True, "state_file": str(path), "soak_s": soak_s, "gates": gates, **state},
                             indent=2) if args.json else plan_table(state, gate_text(gates), soak_s, path))
            return 0
        return Rollout(args, fleet, statuses, state, path, fields, previous, gates, soak_s).run()


class Rollout:
    """One rollout's stages, run in order against a connected :class:`~fleet.client.FleetClient`."""

    def __init__(self, args, fleet, statuses: dict, state: dict, path: Path, fields: dict, previous, gates: dict,
                 soak_s: float):
        from edge_app.runtime.signing import load_private_key

        self.args, self.fleet, self.state, self.path = args, fleet, state, path
        self.fields, self.previous, self.gates, self.soak_s = fields, previous, gates, soak_s
        self.sha256 = state["model_sha256"]
        self.key = load_private_key(args.key)
        self.latest = dict(statuses)  # device -> its newest status
        self.seen_at: dict[str, float] = {}  # device -> when its newest status arrived (this machine's clock)

    def run(self) -> int:
        from fleet.report import stage_table

        plan, failed = self.state["plan"], None
        try:
            for stage in plan:
                if stage["state"] == "passed":
                    log.info("stage %d of %d: passed in an earlier run (%s)", stage["stage"], len(plan), self.path)
                    continue
                if stage["state"] in ENDED:
                    log.warning("stage %d of %d failed in an earlier run and was %s; delete %s to start this rollout "
                                "over", stage["stage"], len(plan), stage["state"], self.path)
                    if not self.args.json:
                        print(stage_table(stage, len(plan)) + "\n", flush=True)
                    failed = stage
                    break
                ok = self._roll_back(stage) if stage["state"] == "rolling back" else self._stage(stage)
                if not self.args.json:
                    print(stage_table(stage, len(plan)) + "\n", flush=True)
                if not ok:
                    failed = stage
                    break
        except KeyboardInterrupt:
            save_state(self.path, self.state)
            current = next((s for s in plan if s["state"] != "passed"), None)
            where = f"during stage {current['stage']} ({current['state']})" if current else "at the end"
            log.warning("interrupted %s; the rollout's state is in %s: run the same command again to go on from the "
                        "first stage that has not passed (devices that already run the model are not sent it again)",
                        where, self.path)
            raise
        summary = self._summary(failed)
        if self.args.json:
            print(json.dumps({"result": "failed" if failed else "passed", "summary": summary, "state_file":
                              str(self.path), "soak_s": self.soak_s, "gates": self.gates, **self.state}, indent=2))
        if failed or (self.state["skipped"] and self.gates["offline"] == "fail"):
            raise CheckFailed(summary)
        if not self.args.json:
            print(summary)
        return 0

    def _summary(self, failed: dict | None) -> str:
        plan, name = self.state["plan"], f"{self.state['model']} ({self.sha256[:12]})"
        if failed is None:
            running = sum(a["result"] == "accepted" for s in plan for a in s["acks"].values())
            offline = (f"; {len(self.state['skipped'])} matched device(s) were offline and did not get it: "
                       f"{', '.join(sorted(self.state['skipped']))}") if self.state["skipped"] else ""
            return f"rollout of {name}: {len(plan)} of {len(plan)} stage(s) passed, {running} device(s) run it{offline}"
        why = "; ".join(f"{d}: {', '.join(p)}" for d, p in sorted(failed["problems"].items()) if p) or "see above"
        back = [d for d, a in failed["rollback"].items() if a.get("result") == "accepted"]
        rest = sum(len(s["devices"]) for s in plan if s["stage"] > failed["stage"])
        return (f"rollout of {name} stopped at stage {failed['stage']} of {len(plan)} ({why}); rolled back "
                f"{len(back)} of {len(failed['rollback'])} device(s)"
                + (f", FAILED on {', '.join(sorted(set(failed['rollback']) - set(back)))}" if
                   len(back) < len(failed["rollback"]) else "") + f"; {rest} device(s) in later stages never got it")

    # -- one stage ----------------------------------------------------------------------------------------

    def _save(self, stage: dict, state: str) -> None:
        stage["state"] = state
        self.state["updated"] = round(time.time(), 3)
        save_state(self.path, self.state)

    def _pump(self, seconds: float, on_status=None) -> None:
        """Take the messages that arrive within ``seconds``: the newest status of each device."""
        end = time.monotonic() + seconds
        while (message := self.fleet.next_message(end - time.monotonic())) is not None:
            if message.kind != "status":
                continue
            self.latest[message.device_id], self.seen_at[message.device_id] = message.body, message.received
            if on_status is not None:
                on_status(message.device_id, message.body, message.received)

    def _stage(self, stage: dict) -> bool:
        devices, total = stage["devices"], len(self.state["plan"])
        if not devices:
            log.info("stage %d of %d (%s) adds no device", stage["stage"], total, stage["spec"])
            self._save(stage, "passed")
            return True
        self._pump(0.2)
        for device in devices:  # kept from an interrupted run: those were taken before its deploy
            if device not in stage["before"] and device in self.latest:
                stage["before"][device] = before_figures(self.latest[device])
        stage.setdefault("started", round(time.time(), 3))
        self._save(stage, "deploying")
        offline = [d for d in devices if not self.latest.get(d, {}).get("online")]
        running = [d for d in devices if d not in offline and self.latest[d].get("model_sha256") == self.sha256]
        send = [d for d in devices if d not in offline and d not in running]
        log.info("stage %d of %d (%s): deploying to %s", stage["stage"], total, stage["spec"], ", ".join(devices))
        answers = self.fleet.round_trip("model", send, lambda device: self.fields, self.args.timeout)
        acks = {d: {"result": "accepted", "reason": "already runs it"} for d in running}
        acks.update({d: {"result": "not sent", "reason": "offline"} for d in offline})
        for device, ack in answers.items():
            acks[device] = ({"result": "no answer", "reason": "timed out waiting for the device's ack"} if ack is None
                            else {"result": "accepted" if ack.get("accepted") else "rejected",
                                  "reason": str(ack.get("reason") or "")})
        stage["acks"] = acks
        took = [d for d in devices if acks[d]["result"] == "accepted"]
        for device in devices:
            result = acks[device]["result"]
            if result in ("rejected", "no answer") or (result == "not sent" and self.gates["offline"] == "fail"):
                stage["problems"][device] = [f"deploy {result}: {acks[device]['reason']}"]
        if stage["problems"]:
            self._save(stage, "rolling back")
            return self._roll_back(stage, took)
        self._save(stage, "soaking")
        for device, after in self._soak(stage, took).items():
            stage["after"][device] = after
            stage["problems"][device] = judge(stage["before"].get(device) or {}, after, self.gates, self.sha256)
        if any(stage["problems"].values()):
            self._save(stage, "rolling back")
            return self._roll_back(stage, took)
        stage["finished"] = round(time.time(), 3)
        self._save(stage, "passed")
        return True

    def _soak(self, stage: dict, devices: list[str]) -> dict[str, dict]:
        """Watch ``devices`` for the soak time; their figures over it (a device that fails for good ends it early)."""
        start, end, fps, offline = {}, {}, {d: [] for d in devices}, {}
        before = {d: stage["before"].get(d) or {} for d in devices}

        def on_status(device, body, received):
            if device not in fps:
                return
            if not body.get("online"):
                offline[device] = str(body.get("reason") or "offline")
            elif device not in start and body.get("model_sha256") == self.sha256:
                start[device] = body
            elif device in start:
                end[device] = body
                if isinstance(body.get("fps"), (int, float)):
                    fps[device].append(body["fps"])

        def figures() -> dict[str, dict]:
            return {d: soak_figures(before[d], start.get(d), end.get(d), fps[d], offline.get(d)) for d in devices}

        began = time.monotonic()
        tick = min(30.0, max(1.0, self.soak_s / 6))
        next_line, ends = began + tick, began + self.soak_s
        while (now := time.monotonic()) < ends:
            self._pump(min(ends, next_line) - now, on_status)
            current = figures()
            lost = {d: judge(before[d], f, self.gates, self.sha256) for d, f in current.items()
                    if d in offline or (d in end and self._for_good(before[d], f))}
            if any(lost.values()):
                log.warning("stage %d: %s; ending the soak early", stage["stage"],
                            "; ".join(f"{d}: {', '.join(p)}" for d, p in lost.items() if p))
                return current
            if time.monotonic() >= next_line:
                next_line += tick
                log.info("stage %d: soak %.0f of %.0f s: %s", stage["stage"], time.monotonic() - began, self.soak_s,
                         "; ".join(f"{d} unknown {percent(f['unknown'])}, uncertain {percent(f['uncertain'])}, fps "
                                   f"{f['fps'] if f['fps'] is not None else '-'}" for d, f in list(current.items())[:4])
                         + (f" (and {len(devices) - 4} more)" if len(devices) > 4 else ""))
        # The figures must cover the whole soak: each device's first status from after it ended.
        soaked, last = time.time(), time.monotonic() + FINAL_STATUS_WAIT_S
        while time.monotonic() < last and any(d not in offline and (d not in end or self.seen_at.get(d, 0) < soaked)
                                              for d in devices):
            self._pump(min(0.5, last - time.monotonic()), on_status)
        return figures()

    def _for_good(self, before: dict, after: dict) -> bool:
        """Whether a device already fails in a way the rest of the soak cannot mend (another model, errors, a restart)."""
        errors = self.gates["errors"]
        return (after.get("model_sha256") != self.sha256 or after.get("restarted")
                or (errors is not None and (after.get("errors") or 0) > errors))

    def _roll_back(self, stage: dict, took: list[str] | None = None) -> bool:
        """Put the stage's devices that took the model back on the model each ran before; False (the stage failed)."""
        from edge_app.runtime.signing import sign_sha256

        if took is None:  # resumed: those the interrupted run had not rolled back yet
            took = [d for d, a in stage["acks"].items() if a["result"] == "accepted"
                    and stage["rollback"].get(d, {}).get("result") != "accepted"]
        self._pump(0.2)
        back = {d: stage["before"][d] for d in took if (stage["before"].get(d) or {}).get("model_sha256")
                not in (None, self.sha256)}
        for device in [d for d, b in back.items() if self.latest.get(d, {}).get("model_sha256") == b["model_sha256"]]:
            # Rolled back by a run that was interrupted before it saw the ack.
            stage["rollback"][device] = {"result": "accepted", "reason": "runs it again",
                                         "sha256": back.pop(device)["model_sha256"]}
        for device in set(took) - set(back) - set(stage["rollback"]):
            known = (stage["before"].get(device) or {}).get("model_sha256")
            stage["rollback"][device] = {"result": "not needed" if known else "not sent",
                                         "reason": "it ran this model before" if known else "its model before is unknown"}

        def payload(device: str) -> dict:
            sha256 = back[device]["model_sha256"]
            if self.previous is not None and self.previous[0] == sha256:
                return self.previous[1]  # --previous: that file's bytes, signed like any deploy
            name = Path(str(back[device].get("model") or "model.tflite")).name
            return {**sign_sha256(self.key, sha256), "name": name, "previous": True}

        if back:
            log.warning("stage %d failed: rolling %s back to the model each ran before", stage["stage"],
                        ", ".join(sorted(back)))
        answers = self.fleet.round_trip("model", sorted(back), payload, self.args.timeout)
        for device, ack in answers.items():
            stage["rollback"][device] = {
                "result": "no answer" if ack is None else "accepted" if ack.get("accepted") else "rejected",
                "reason": "timed out waiting for the device's ack" if ack is None else str(ack.get("reason") or ""),
                "sha256": back[device]["model_sha256"]}
        stage["finished"] = round(time.time(), 3)
        failed = [d for d in back if stage["rollback"][d]["result"] != "accepted"]
        self._save(stage, "rollback failed" if failed else "rolled back")
        return False

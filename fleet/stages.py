"""A staged rollout's grammar and judgement, without a broker: stages, soak time, gates, figures, the state file.

``edgecls fleet deploy MODEL --stages 1,10%,100% --soak 10m --gate unknown_rise=0.2`` reads its flags here;
:mod:`fleet.rollout` does the deploying and watching. The stages are cumulative shares of the matched
devices in sorted id order, so a rerun picks the same devices; a device's health over a stage's soak is
read from its retained status (counters since it started) against its figures just before the deploy.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from edge_app.runtime.errors import FleetError
from edge_app.runtime.files import write_json

STATE_VERSION = 1
_STAGE = re.compile(r"(\d+)|(\d+(?:\.\d+)?)%")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Gate:
    """One health check of a soak: its default and what it means (``--help`` and the docs say the same)."""

    default: float | int | str
    help: str


# The one table of gates: the CLI's choices and defaults, the plan's printout and the judgement read it.
GATES = {
    "unknown_rise": Gate(0.2, "the share of unknown frames may rise at most this much over its figure before the "
                              "deploy (0.2 or 20%: 20 percentage points)"),
    "uncertain_rise": Gate(0.2, "the same for uncertain frames (below the device's --threshold)"),
    "fps_drop": Gate(0.5, "FPS may fall at most this share (0.5: to half of its figure before)"),
    "errors": Gate(0, "source_lost and model_rejected events from the deploy to the end of the soak, at most"),
    "offline": Gate("fail", "fail: a device that goes offline or stops reporting fails the stage; ignore: skip it"),
}


def parse_stages(text: str) -> list[str]:
    """``--stages``: comma-separated device counts or percentages of the matched devices, cumulative.

    Example:
        >>> parse_stages("1, 10%,100%")
        ['1', '10%', '100%']
    """
    stages = [s.strip() for s in str(text).split(",") if s.strip()]
    if not stages:
        raise FleetError("--stages needs counts or percentages of the devices, e.g. --stages 1,10%,100%")
    for stage in stages:
        found = _STAGE.fullmatch(stage)
        if not found or (found.group(1) and int(stage) < 1) or (found.group(2) and not 0 < float(found.group(2)) <= 100):
            raise FleetError(f"--stages {text!r}: {stage!r} is not a device count (1 or more) or a percentage "
                             "(more than 0%, at most 100%); e.g. --stages 1,10%,100%")
    return stages


def plan_stages(devices: list[str], stages: list[str]) -> list[list[str]]:
    """The devices each stage adds, in sorted id order: ``1,10%,100%`` of 40 = 1, then 3 more, then the other 36.

    A percentage rounds up (10% of 3 devices is 1); a stage that adds no device stays in the plan, empty.

    Example:
        >>> plan_stages(["k3", "k1", "k2"], ["1", "100%"])
        [['k1'], ['k2', 'k3']]
    """
    devices, n = sorted(devices), len(devices)
    plan, done = [], 0
    for i, stage in enumerate(stages, 1):
        size = min(n, int(stage) if not stage.endswith("%") else max(1, math.ceil(float(stage[:-1]) * n / 100 - 1e-9)))
        if size < done:
            raise FleetError(f"--stages {','.join(stages)}: stage {i} ({stage} = {size} device(s)) is smaller than "
                             f"stage {i - 1} ({done}); stages are cumulative, e.g. --stages 1,10%,100%")
        plan.append(devices[done:size])
        done = size
    if done < n:
        raise FleetError(f"--stages {','.join(stages)}: the last stage covers {done} of the {n} devices --to matches; "
                         "end with 100% (or name fewer devices in --to)")
    return plan


def parse_duration(text: str, flag: str = "--soak") -> float:
    """Seconds from ``30s``, ``10m``, ``1h`` or plain seconds (``90``).

    Example:
        >>> parse_duration("10m")
        600.0
    """
    found = _DURATION.fullmatch(str(text).strip().lower())
    if not found or float(found.group(1)) <= 0:
        raise FleetError(f"{flag} {text!r}: give a time above 0 such as 30s, 10m, 1h or plain seconds (90)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _share(value: str, name: str) -> float:
    share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    if not 0 <= share <= 1:
        raise ValueError(f"{name} is a share from 0 to 1 (or 0% to 100%)")
    return share


def parse_gates(given: list[str] | None) -> dict:
    """``--gate NAME=VALUE`` (repeatable) over the defaults; ``off`` turns a numeric gate off.

    Example:
        >>> parse_gates(["fps_drop=0.3", "errors=2"])["fps_drop"]
        0.3
    """
    gates = {name: gate.default for name, gate in GATES.items()}
    for item in given or []:
        name, sep, value = (s.strip() for s in item.partition("="))
        if name not in GATES:
            close = difflib.get_close_matches(name, GATES, 1)
            raise FleetError(f"--gate {item!r}: no gate {name!r}" + (f" (did you mean {close[0]}?)" if close else "") +
                             f"; the gates are {', '.join(GATES)}, e.g. --gate unknown_rise=0.2")
        try:
            if not sep or not value:
                raise ValueError("give it as NAME=VALUE")
            if value == "off" and name != "offline":
                gates[name] = None
            elif name == "offline":
                if value not in ("fail", "ignore"):
                    raise ValueError("offline is fail or ignore")
                gates[name] = value
            elif name == "errors":
                if not value.isdigit():
                    raise ValueError("errors is a count, 0 or more")
                gates[name] = int(value)
            else:
                gates[name] = _share(value, name)
        except ValueError as e:
            detail = str(e) if "could not convert" not in str(e) else f"{name} is a number"
            raise FleetError(f"--gate {item!r}: {detail}{' (or off)' if name != 'offline' else ''}; e.g. --gate "
                             f"{name}={GATES[name].default}") from None
    return gates


def gate_text(gates: dict) -> str:
    """``unknown_rise=0.2 uncertain_rise=0.2 fps_drop=0.5 errors=0 offline=fail``: the gates in one line."""
    return " ".join(f"{name}={'off' if value is None else value}" for name, value in gates.items())


def _ratio(part, whole) -> float | None:
    return part / whole if isinstance(part, int) and isinstance(whole, int) and whole > 0 else None


def before_figures(status: dict) -> dict:
    """What a device's status says just before a deploy: its model, counters, shares (since it started) and FPS."""
    figures = {key: status.get(key) for key in ("model", "model_sha256", "frames", "unknown_frames",
                                                "uncertain_frames", "errors", "fps")}
    figures["unknown"] = _ratio(status.get("unknown_frames"), status.get("frames"))
    figures["uncertain"] = _ratio(status.get("uncertain_frames"), status.get("frames"))
    return figures


def soak_figures(before: dict, start: dict | None, end: dict | None, fps_seen: list[float],
                 offline: str | None) -> dict:
    """A device's figures over the soak: shares of unknown and uncertain frames between the first status on the new
    model (``start``) and the last (``end``), the median FPS reported, errors since ``before``, offline or not."""
    after = {"offline": offline, "model_sha256": (end or {}).get("model_sha256"), "frames": None, "unknown": None,
             "uncertain": None, "fps": round(statistics.median(fps_seen), 1) if fps_seen else None, "errors": None,
             "restarted": False}
    if start is None or end is None:
        after["offline"] = offline or ("no status on the new model" if start is None else "no status after the soak")
        return after

    def delta(key: str, since: dict):
        a, b = since.get(key), end.get(key)
        return b - a if isinstance(a, int) and isinstance(b, int) else None

    frames = delta("frames", start)
    after["restarted"] = frames is not None and frames < 0
    after["frames"] = frames
    after["unknown"] = _ratio(delta("unknown_frames", start), frames)
    after["uncertain"] = _ratio(delta("uncertain_frames", start), frames)
    after["errors"] = delta("errors", before)
    return after


def judge(before: dict, after: dict, gates: dict, sha256: str) -> list[str]:
    """What is wrong with a device after its soak, one phrase each; empty: healthy."""
    if after.get("offline"):
        return [] if gates["offline"] == "ignore" else [f"offline ({after['offline']})"]
    problems = []
    if after.get("model_sha256") != sha256:
        problems.append(f"runs {str(after.get('model_sha256'))[:12]}, not the new model")
    if after.get("restarted"):
        problems.append("restarted during the soak")
    elif not after.get("frames"):
        problems.append("classified no frame during the soak")
    for name, key in (("unknown_rise", "unknown"), ("uncertain_rise", "uncertain")):
        limit, now = gates[name], after.get(key)
        if limit is not None and now is not None and now - (before.get(key) or 0.0) > limit + 1e-9:
            problems.append(f"{key} {percent(before.get(key))} -> {percent(now)} "
                            f"(+{(now - (before.get(key) or 0.0)) * 100:.0f} pp, gate {limit * 100:.0f} pp)")
    limit, was, now = gates["fps_drop"], before.get("fps"), after.get("fps")
    if limit is not None and isinstance(was, (int, float)) and was > 0 and now is not None and now < was * (1 - limit):
        problems.append(f"fps {was:.1f} -> {now:.1f} (fell {1 - now / was:.0%}, gate {limit:.0%})")
    if gates["errors"] is not None and (after.get("errors") or 0) > gates["errors"]:
        problems.append(f"{after['errors']} error event(s) (source_lost, model_rejected), gate {gates['errors']}")
    return problems


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def state_path(given: str | None, sha256: str) -> Path:
    """``--state``, else ``.edgecls-rollout-<sha256[:12]>.json`` in the current folder."""
    return Path(given) if given else Path(f".edgecls-rollout-{sha256[:12]}.json")


def new_state(model: str, sha256: str, to: str, stages: list[str], plan: list[list[str]], skipped: dict) -> dict:
    """A rollout's state: what it deploys where, and per stage what happened (kept in the state file)."""
    return {"version": STATE_VERSION, "model": model, "model_sha256": sha256, "to": to, "stages": ",".join(stages),
            "skipped": skipped,
            "plan": [{"stage": i, "spec": spec, "devices": devices, "state": "pending", "before": {}, "acks": {},
                      "after": {}, "problems": {}, "rollback": {}}
                     for i, (spec, devices) in enumerate(zip(stages, plan, strict=True), 1)]}


def load_state(path: Path, sha256: str, to: str, stages: list[str]) -> dict | None:
    """The state of an earlier run of the same rollout, or ``None`` when there is no state file.

    Raises:
        FleetError: the file is not a rollout's state, or another rollout's (model, ``--to`` or ``--stages``).
    """
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FleetError(f"--state {path}: cannot read it as a rollout's state ({e}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("plan"), list):
        raise FleetError(f"--state {path} is not the state of an edgecls rollout; pass another --state or delete it")
    theirs = (state.get("model_sha256"), state.get("to"), state.get("stages"))
    if theirs != (sha256, to, ",".join(stages)):
        raise FleetError(f"--state {path} is another rollout's (model {str(theirs[0])[:12]} --to {theirs[1]!r} "
                         f"--stages {theirs[2]}); run that command again to resume it, or pass another --state")
    return state


def save_state(path: Path, state: dict) -> None:
    """Written atomically after every step: a Ctrl-C or a crash leaves the last consistent state."""
    write_json(path, state)

"""``edgecls fleet status|watch|keygen|deploy|bench|pull``: the host side of a fleet of devices over an MQTT broker.

Devices run ``edgecls run MODEL --mqtt URL --device-id ID --trust KEY.pub``; this command reads
their retained status, signs models with the private key (which never leaves this machine) and
sends them as deploys or benchmark requests, then waits for each device's ack.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

from edge_app.runtime.errors import CheckFailed, FleetError, Interrupted, ModelError

log = logging.getLogger("edgecls")

EPILOG = """examples:
  edgecls fleet keygen ~/.config/edgecls/fleet.key        # then copy fleet.key.pub to every device
  edgecls fleet status --broker mqtt://broker.lan
  edgecls fleet watch --broker mqtts://ops:PASSWORD@broker.lan --ca ca.crt
  edgecls fleet deploy runs/potato/model_int8.tflite --to 'kiosk-*' --key fleet.key --broker mqtt://broker.lan
  edgecls fleet bench model_int8.tflite --to 'pi4-*,pi5-*' --key fleet.key --broker mqtt://broker.lan --md boards.md
  edgecls fleet pull --to 'kiosk-*' --key fleet.key --out field/pulled --broker mqtt://broker.lan

Devices join with: edgecls run MODEL --mqtt mqtt://broker.lan --device-id kiosk-03 --trust fleet.key.pub
A password can stay out of the command line: --broker mqtt://ops@broker.lan with EDGECLS_MQTT_PASSWORD set.
Exit codes: 0 done (every target accepted), 1 a target rejected or did not answer, 2 bad input.
"""

ACTIONS = {
    "status": ("every device's retained status, once", """examples:
  edgecls fleet status --broker mqtt://broker.lan
  edgecls fleet status --broker mqtt://broker.lan --json | jq '.[] | select(.online) | .device_id'
"""),
    "watch": ("a live table of the fleet, until Ctrl-C", """examples:
  edgecls fleet watch --broker mqtt://broker.lan --interval 5
"""),
    "keygen": ("make the ed25519 key pair that signs deploys (KEY, mode 0600, and KEY.pub)", """examples:
  edgecls fleet keygen ~/.config/edgecls/fleet.key
  scp ~/.config/edgecls/fleet.key.pub pi@kiosk-03:/etc/edgecls/fleet.key.pub    # never the private key
"""),
    "deploy": ("send a signed model to devices and wait for their acks", """examples:
  edgecls fleet deploy model_int8.tflite --to kiosk-03 --key fleet.key --broker mqtt://broker.lan
  edgecls fleet deploy model_int8.tflite --to 'kiosk-*,lab-pi5' --key fleet.key --broker mqtt://broker.lan
  edgecls fleet deploy big.tflite --to 'kiosk-*' --key fleet.key --broker mqtt://broker.lan \\
      --url https://files.lan/big.tflite      # devices download it; the signature is made here from MODEL

Each device verifies the signature against its --trust key, swaps the model in with the same checks
as a local swap (rolled back when they fail) and acks. Exit 0 when every target accepted.

In stages (the matched devices in sorted id order; counts or percentages, cumulative):
  edgecls fleet deploy leaf_v4.tflite --to 'kiosk-*' --key fleet.key --broker mqtt://broker.lan \\
      --stages 1,10%,100% --soak 10m --gate unknown_rise=0.1 --gate fps_drop=0.3
  edgecls fleet deploy leaf_v4.tflite --to 'kiosk-*' --key fleet.key --stages 1,10%,100% --dry-run   # the plan only

Each stage deploys to its devices, watches their status for --soak against their figures before, and
goes on when every one is healthy. A failing stage's devices are rolled back (a signed rollback to
the model each kept) and the rollout stops: exit 1. Ctrl-C, then the same command again, resumes
from the first stage that has not passed (the state file: --state). The gates are under --gate.
"""),
    "bench": ("benchmark a model on devices; one comparison table across boards", """examples:
  edgecls fleet bench model_int8.tflite --to 'pi*' --key fleet.key --broker mqtt://broker.lan
  edgecls fleet bench model_int8.tflite --to 'pi4-1,pi5-1' --key fleet.key --broker mqtt://broker.lan \\
      --runs 200 --threads 1,4 --json boards.json --md boards.md --plot boards.png

The device runs 'edgecls bench' on the model in a fresh process while it keeps classifying, so its
figures include that load (the report's device line says the load average).
"""),
    "pull": ("bring devices' labelled field photos home: OUT/<class>/*.jpg + OUT/manifest.jsonl", """examples:
  edgecls fleet pull --to 'kiosk-*' --key fleet.key --out field/pulled --broker mqtt://broker.lan
  edgecls fleet pull --to kiosk-03 --key fleet.key --out field/pulled --max-photos 100 --json
  edgecls train lab/ --field field/pulled --out runs/leaf_v5      # config.json says how many from each device

Devices (edgecls run --collect DIR --mqtt ... --trust fleet.key.pub) verify the signed request and send
the photos in DIR/labelled/ that this OUT does not have yet, oldest first; OUT/.pull-state.json keeps
where each device stopped, so an interrupted pull continues and a second one sends only what is new.
A photo two devices sent is written once (a duplicate); one labelled two ways is kept out (a conflict).
Exit 0 when every target answered, 1 when one did not or refused.
"""),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    # The actions parse and show help as the command's own parser does (edgecls' one-line errors, defaults shown).
    actions = parser.add_subparsers(dest="fleet_action", metavar="ACTION", title="actions", parser_class=type(parser),
                                    required=True)
    made = {}
    for name, (summary, examples) in ACTIONS.items():
        made[name] = sub = actions.add_parser(name, help=summary, description=summary, epilog=examples,
                                              formatter_class=parser.formatter_class, prog=f"edgecls fleet {name}")
        # Also after the action (edgecls fleet status -v); SUPPRESS keeps 'edgecls fleet -v status' working.
        sub.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more detail on stderr")
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors")
        if name != "keygen":
            sub.add_argument("--broker", default=os.environ.get("EDGECLS_BROKER"), metavar="URL",
                             help="mqtt[s]://[user[:password]@]host[:port] (default: $EDGECLS_BROKER)")
            sub.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) that signed an mqtts:// broker's")
            sub.add_argument("--wait", type=float, default=2.0, metavar="S",
                             help="seconds to collect the devices' retained status")
    made["status"].add_argument("--json", action="store_true", help="print a JSON list of the status objects")
    made["watch"].add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between redraws")
    made["keygen"].add_argument("out", metavar="KEY", help="private key file to write; the public key goes to KEY.pub")
    made["keygen"].add_argument("--force", action="store_true", help="replace an existing key pair")
    for name in ("deploy", "bench"):
        sub = made[name]
        sub.add_argument("model", metavar="MODEL", help=".tflite model to send")
        sub.add_argument("--to", required=True, metavar="ID|GLOB[,...]", help="devices, e.g. kiosk-03 or 'kiosk-*'")
        sub.add_argument("--key", required=True, metavar="KEY", help="ed25519 private key (edgecls fleet keygen)")
        sub.add_argument("--url", metavar="URL",
                         help="devices download MODEL's bytes from this http(s) URL instead of the message carrying them")
        sub.add_argument("--timeout", type=float, default=120.0 if name == "deploy" else 900.0, metavar="S",
                         help="seconds to wait for every device's answer")
    made["deploy"].add_argument("--json", action="store_true", help="print the acks as a JSON list")
    _add_rollout_arguments(made["deploy"])
    pull = made["pull"]
    pull.add_argument("--to", required=True, metavar="ID|GLOB[,...]", help="devices, e.g. kiosk-03 or 'kiosk-*'")
    pull.add_argument("--key", required=True, metavar="KEY", help="ed25519 private key (edgecls fleet keygen)")
    pull.add_argument("--out", required=True, metavar="DIR", help="the folder of class folders the photos go to")
    pull.add_argument("--timeout", type=float, default=60.0, metavar="S",
                      help="a device silent this long is listed as not answering (the next pull continues)")
    pull.add_argument("--max-photos", type=int, default=500, metavar="N", help="at most N photos from each device")
    pull.add_argument("--max-mb", type=float, default=200.0, metavar="MB", help="at most MB of photos from each device")
    pull.add_argument("--json", action="store_true", help="print each device's counts, duplicates and conflicts as JSON")
    bench = made["bench"]
    bench.add_argument("--runs", type=int, default=50, help="timed invokes on each device (at most 1000)")
    bench.add_argument("--threads", metavar="N[,N...]", help="interpreter thread counts, e.g. 1,4 (default: the device's)")
    bench.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    bench.add_argument("--md", metavar="FILE", help="write the comparison as a Markdown table")
    bench.add_argument("--plot", metavar="FILE.png", help="write a bar chart of latency per board (needs matplotlib)")


def main(args: argparse.Namespace) -> int:
    return {"status": status, "watch": watch, "keygen": keygen, "deploy": deploy, "bench": bench,
            "pull": pull}[args.fleet_action](args)


def _connect(args):
    from edge_app.runtime.broker import parse_broker_url
    from fleet.client import FleetClient

    if not args.broker:
        raise FleetError("--broker is missing: give the broker's URL, e.g. --broker mqtt://broker.lan "
                         "(or set EDGECLS_BROKER)")
    if args.wait < 0:
        raise FleetError(f"--wait must be 0 or more seconds, got {args.wait}")
    return FleetClient(parse_broker_url(args.broker, "--broker"), args.ca)


def status(args) -> int:
    from fleet.report import status_table

    with _connect(args) as fleet:
        statuses = fleet.statuses(args.wait)
    if args.json:
        print(json.dumps([statuses[d] for d in sorted(statuses)], indent=2))
    elif statuses:
        print(status_table(statuses))
    else:
        log.warning("no device has reported to %s yet (devices join with: edgecls run MODEL --mqtt URL "
                    "--device-id ID)", args.broker)
    return 0


def watch(args) -> int:
    from edge_app.runtime.broker import topic
    from fleet.report import status_table

    if args.interval <= 0:
        raise FleetError(f"--interval must be more than 0 seconds, got {args.interval}")
    statuses, events = {}, []
    tty = sys.stdout.isatty()
    try:
        with _connect(args) as fleet:
            fleet.subscribe(topic("+", "status"), topic("+", "event"))
            # The first table after half a second: the retained statuses arrive right after subscribing.
            drawn_at, changed = time.monotonic() - args.interval + min(args.interval, 0.5), True
            while True:
                message = fleet.next_message(max(0.0, drawn_at + args.interval - time.monotonic()))
                if message is not None and message.kind == "status":
                    statuses[message.device_id], changed = message.body, True
                elif message is not None and message.kind == "event":
                    events = (events + [message])[-8:]
                    changed = True
                if time.monotonic() - drawn_at < args.interval:
                    continue
                drawn_at = time.monotonic()
                if not (changed or tty):
                    continue  # a log file gets a table when something changed, a terminal a fresh one each time
                changed = False
                lines = [f"{time.strftime('%H:%M:%S')}  {len(statuses)} device(s) on {fleet.broker}",
                         status_table(statuses) if statuses else "(no device yet)"]
                lines += [f"  {time.strftime('%H:%M:%S', time.localtime(e.received))} {e.device_id} "
                          f"{e.body.get('event')}: {e.body.get('detail', '')}" for e in events]
                print(("\x1b[H\x1b[2J" if tty else "") + "\n".join(lines) + ("" if tty else "\n"), flush=True)
    except Interrupted:
        raise
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a watch ends


def keygen(args) -> int:
    from edge_app.runtime.signing import generate_keypair, key_id, load_private_key

    private, public = generate_keypair(args.out, force=args.force)
    log.info("wrote %s (private, mode 0600: keep it on this machine) and %s (copy it to each device's --trust)",
             private, public)
    print(f"{public}  key {key_id(load_private_key(private))}")
    return 0


def _signed_model(args) -> tuple[str, dict, dict]:
    """The signing key's id, the model's signature, and the message fields every device gets (before ``id``)."""
    from edge_app.runtime.artifact import is_tflite
    from edge_app.runtime.broker import MAX_PAYLOAD_BYTES, check_model_url
    from edge_app.runtime.signing import key_id, load_private_key, sign_model
    from fleet.client import parse_targets

    parse_targets(args.to)  # a bad --to fails before the model is read or the broker is asked

    path = Path(args.model)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"MODEL {path} does not exist; pass a .tflite file") from None
    except OSError as e:
        raise ModelError(f"cannot read MODEL {path}: {e.strerror}; pass a .tflite file") from None
    if not is_tflite(data):
        raise ModelError(f"{path} is not a TFLite model (no 'TFL3' flatbuffer identifier); pass a .tflite file "
                         "(edgecls convert RUN makes them)")
    if args.url is not None:
        check_model_url(args.url, "--url")  # what every device would refuse: credentials in it, or not http(s)
    if args.url is None and len(data) * 4 // 3 + 1000 > MAX_PAYLOAD_BYTES:
        raise FleetError(f"{path} is {len(data) / 1e6:.0f} MB, too big to send inside a message (devices take "
                         f"{MAX_PAYLOAD_BYTES / 1e6:.0f} MB); serve it over http and pass --url")
    key = load_private_key(args.key)
    signed = sign_model(key, data)
    fields = {**signed, "name": path.name}
    fields.update({"url": args.url} if args.url else {"model": base64.b64encode(data).decode("ascii")})
    return key_id(key), signed, fields


def _targets(args, fleet, statuses, ours: str) -> tuple[list[str], dict[str, str]]:
    """The online devices ``--to`` names, and the offline ones (not sent) with why; warns about distrust."""
    from fleet.client import match_targets

    matched = match_targets(args.to, statuses, fleet.broker)
    skipped = {d: "offline" + (f" ({statuses[d]['reason']})" if statuses[d].get("reason") else "")
               for d in matched if not statuses[d].get("online")}
    for device in matched:
        trusted = statuses[device].get("trust_key", "?")
        if device not in skipped and trusted != ours and trusted != "?":
            log.warning("%s trusts %s, not this key (%s): it will refuse", device,
                        f"key {trusted}" if trusted else "no key (no --trust)", ours)
    return [d for d in matched if d not in skipped], skipped


def _add_rollout_arguments(deploy: argparse.ArgumentParser) -> None:
    from fleet.stages import GATES

    staged = deploy.add_argument_group("in stages (docs/fleet.md, 'Rolling out in stages')")
    staged.add_argument("--stages", metavar="N|P%[,...]",
                        help="roll out in stages: device counts or percentages of the matched devices, cumulative, "
                        "e.g. 1,10%%,100%%")
    staged.add_argument("--soak", metavar="TIME", help="how long each stage's devices are watched: 30s, 10m, 1h or "
                        "seconds (default: 10m)")
    staged.add_argument("--gate", action="append", metavar="NAME=VALUE",
                        help="a health check of each stage's devices over the soak, repeatable; NAME=off turns one "
                        "off. The defaults: " + " ".join(f"{name}={gate.default}" for name, gate in GATES.items()) +
                        " (unknown_rise, uncertain_rise: percentage points as a share, 0.2 = 20 points; fps_drop: "
                        "0.5 = may fall to half; errors: source_lost and model_rejected events; offline: fail|ignore)")
    staged.add_argument("--dry-run", action="store_true", help="print the plan (stages, devices, soak, gates); send nothing")
    staged.add_argument("--state", metavar="FILE", help="where the rollout's progress is kept, to resume it "
                        "(default: .edgecls-rollout-<sha256[:12]>.json here)")
    staged.add_argument("--previous", metavar="MODEL", help="roll back the devices that ran this file by sending it "
                        "(default: each device swaps back to the model it kept)")


def deploy(args) -> int:
    from fleet.report import ack_table

    if args.stages is not None:
        from fleet.rollout import rollout

        return rollout(args, _signed_model, _connect, _targets)
    for flag in ("soak", "gate", "dry_run", "state", "previous"):
        if getattr(args, flag):
            raise FleetError(f"--{flag.replace('_', '-')} belongs to a rollout in stages; add --stages, e.g. "
                             "--stages 1,10%,100%")
    ours, signed, fields = _signed_model(args)
    with _connect(args) as fleet:
        statuses = fleet.statuses(args.wait)
        targets, skipped = _targets(args, fleet, statuses, ours)
        answers = fleet.round_trip("model", targets, lambda device: fields, args.timeout)
    if args.json:
        rows = [{"device_id": d, "result": "not sent", "reason": r} for d, r in skipped.items()]
        rows += [{"device_id": d, "result": "no answer"} if a is None else {"device_id": d, "result": "accepted" if
                 a.get("accepted") else "rejected", **a} for d, a in answers.items()]
        print(json.dumps(sorted(rows, key=lambda r: r["device_id"]), indent=2))
    else:
        print(ack_table(answers, skipped))
    failed = sorted([d for d, a in answers.items() if not (a or {}).get("accepted")] + list(skipped))
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(answers) + len(skipped)} device(s) did not take model "
                          f"{signed['sha256'][:12]}: {', '.join(failed)}")
    log.info("model %s is running on %d device(s)", signed["sha256"][:12], len(answers))
    return 0


def bench(args) -> int:
    from benchmarks.config import parse_threads
    from edge_app.runtime.files import check_writable
    from fleet.report import bench_table, merge_bench, write_bench_reports

    if not 1 <= args.runs <= 1000:
        raise FleetError(f"--runs must be from 1 to 1000, got {args.runs}")
    threads = parse_threads(args.threads)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise FleetError("--plot needs matplotlib: pip install matplotlib; or drop --plot")
    for flag, value in (("--json", args.json), ("--md", args.md), ("--plot", args.plot)):
        if value:
            check_writable(value, flag)
    ours, signed, fields = _signed_model(args)
    fields = {**fields, "runs": args.runs, **({"threads": list(threads)} if threads else {})}
    with _connect(args) as fleet:
        statuses = fleet.statuses(args.wait)
        targets, skipped = _targets(args, fleet, statuses, ours)
        answers = fleet.round_trip("bench", targets, lambda device: fields, args.timeout,
                                   on_progress=lambda device, ack: log.info("%s: benchmark running", device))
    answers.update(dict.fromkeys(skipped))
    report = merge_bench(answers, Path(args.model).name, signed["sha256"])
    for failure in report["failed"]:
        if failure["device_id"] in skipped:
            failure["reason"] = f"not sent: {skipped[failure['device_id']]}"
    print(bench_table(report))
    for written in write_bench_reports(report, args.json, args.md, args.plot):
        log.info("wrote %s", written)
    if report["failed"]:
        raise CheckFailed(f"{len(report['failed'])} of {len(answers)} device(s) returned no benchmark: "
                          f"{', '.join(f['device_id'] for f in report['failed'])}")
    return 0


def pull(args) -> int:
    from edge_app.runtime.signing import key_id, load_private_key
    from fleet.client import parse_targets
    from fleet.pull import pull_photos, pull_rows
    from fleet.pulled import PulledFolder
    from fleet.report import pull_table

    parse_targets(args.to)
    for flag, value in (("--max-photos", args.max_photos), ("--max-mb", args.max_mb), ("--timeout", args.timeout)):
        if not value > 0:
            raise FleetError(f"{flag} must be more than 0, got {value}")
    key = load_private_key(args.key)
    out = PulledFolder(args.out)  # writable? before the broker is asked
    with _connect(args) as fleet, out:
        statuses = fleet.statuses(args.wait)
        targets, skipped = _targets(args, fleet, statuses, key_id(key))
        runs, duplicates, conflicts = pull_photos(fleet, out, key, targets, statuses, args.max_photos,
                                                  int(args.max_mb * 1e6), args.timeout)
    rows = pull_rows(runs, skipped)
    if args.json:
        print(json.dumps({"out": str(out.root), "devices": rows, "duplicates": duplicates, "conflicts": conflicts},
                         indent=2))
    else:
        print(pull_table(rows, duplicates, conflicts))
    new = sum(r["new"] for r in rows)
    log.info("wrote %d new photo(s) to %s (where each came from: %s)", new, out.root, out.root / "manifest.jsonl")
    failed = [r["device_id"] for r in rows if r["result"] != "done"]
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(rows)} device(s) did not send their photos: {', '.join(failed)}; "
                          "pull again: each continues where it stopped")
    return 0

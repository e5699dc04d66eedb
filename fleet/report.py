"""What ``edgecls fleet`` prints and writes: the status table, the ack table, one benchmark across boards.

The benchmark rows are ``edgecls bench``'s (same columns, same cell format, from
:mod:`benchmarks.report`) with the device in front, so a board comparison reads like a bench report.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.report import COLUMNS, device_line, format_cell
from edge_app.runtime.files import atomic_path, write_json, write_text


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned columns, two spaces apart."""
    cells = [header, *rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def age(t: float | None, now: float | None = None) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, or ``-`` when unknown (a last will carries no time)."""
    if not isinstance(t, (int, float)):
        return "-"
    seconds = max(0.0, (now or time.time()) - t)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def status_table(statuses: dict[str, dict], now: float | None = None) -> str:
    """One row per device: online, model file name, sha256 prefix, FPS, temperature, last seen."""
    rows = []
    for device, s in sorted(statuses.items()):
        online = "yes" if s.get("online") else "no"
        if not s.get("online") and s.get("reason"):
            online += f" ({'lost' if 'will' in str(s['reason']) else s['reason']})"
        temperature = s.get("temperature_c")
        rows.append([device, online, Path(str(s.get("model") or "-")).name, str(s.get("model_sha256") or "-")[:12],
                     f"{s['fps']:.1f}" if s.get("online") and isinstance(s.get("fps"), (int, float)) else "-",
                     f"{temperature:.1f}" if isinstance(temperature, (int, float)) else "-", age(s.get("t"), now)])
    return text_table(["device", "online", "model", "sha256", "fps", "temp_c", "last seen"], rows)


def ack_table(answers: dict[str, dict | None], skipped: dict[str, str]) -> str:
    """One row per target: accepted / rejected / no answer / not sent, the model's sha256, the reason."""
    rows = []
    for device in sorted({*answers, *skipped}):
        if device in skipped:
            rows.append([device, "not sent", "-", skipped[device]])
            continue
        ack = answers[device]
        if ack is None:
            rows.append([device, "no answer", "-", "timed out waiting for the device's ack"])
        else:
            rows.append([device, "accepted" if ack.get("accepted") else "rejected", str(ack.get("sha256") or "-")[:12],
                         str(ack.get("reason") or "")])
    return text_table(["device", "result", "sha256", "reason"], rows)


def merge_bench(answers: dict[str, dict | None], model: str, sha256: str) -> dict:
    """One report from every board's ``edgecls bench --json``: rows gain ``device_id``; failures are listed.

    Shape: ``{"fleet": {model, sha256, boards}, "devices": {ID: device facts}, "results": [bench rows + device_id],
    "failed": [{"device_id", "reason"}]}``.
    """
    devices, results, failed = {}, [], []
    for device_id, ack in sorted(answers.items()):
        report = (ack or {}).get("result") if (ack or {}).get("accepted") else None
        if not isinstance(report, dict):
            failed.append({"device_id": device_id, "reason": (ack or {}).get("reason") or "no answer (timed out)"})
            continue
        devices[device_id] = report.get("device", {})
        results += [{"device_id": device_id, **row} for row in report.get("results", [])]
    return {"fleet": {"model": model, "sha256": sha256, "boards": len(devices)}, "devices": devices,
            "results": results, "failed": failed}


def bench_table(report: dict) -> str:
    """``edgecls bench``'s table with the device first, then each board's facts line and the failures."""
    header = ["device"] + [h for h, _ in COLUMNS]
    rows = [[r["device_id"]] + [format_cell(get(r)) for _, get in COLUMNS] for r in report["results"]]
    lines = [text_table(header, rows)] if rows else ["no board returned a result"]
    lines += [f"# {device}: {device_line(facts)}" for device, facts in report["devices"].items()]
    lines += [f"# {f['device_id']}: FAILED: {f['reason']}" for f in report["failed"]]
    return "\n".join(lines)


def bench_markdown(report: dict) -> str:
    """The comparison as a Markdown table, with the line of facts of every board under it."""
    head = ["device"] + [h for h, _ in COLUMNS]
    out = [f"`{report['fleet']['model']}` (sha256 `{report['fleet']['sha256'][:12]}`) measured with "
           f"`edgecls fleet bench` on {report['fleet']['boards']} board(s):", "",
           "| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join([r["device_id"]] + [format_cell(get(r)) for _, get in COLUMNS]) + " |"
            for r in report["results"]]
    out += [""] + [f"- `{device}`: {device_line(facts)}" for device, facts in report["devices"].items()]
    out += [f"- `{f['device_id']}`: no result ({f['reason']})" for f in report["failed"]]
    return "\n".join(out) + "\n"


def bench_plot(report: dict, path: str | Path) -> Path:
    """Horizontal bars of p50 latency per board and thread count, whiskers to p90: which board is fastest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = [f"{r['device_id']} x{r['threads']}" for r in rows]
    p50 = [r["latency_ms"]["p50"] for r in rows]
    p90 = [r["latency_ms"]["p90"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(rows) + 1.2)))
    boards = list(dict.fromkeys(r["device_id"] for r in rows))
    colors = [plt.cm.tab10(boards.index(r["device_id"]) % 10) for r in rows]
    ax.barh(range(len(rows)), p50, xerr=[[0] * len(rows), [b - a for a, b in zip(p50, p90, strict=True)]],
            color=colors, capsize=3)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("invoke latency p50 (ms); whisker to p90")
    ax.set_title(f"{report['fleet']['model']} across {len(boards)} board(s)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".").lower() or "png", bbox_inches="tight")
    plt.close(fig)
    return path


def write_bench_reports(report: dict, json_path=None, md_path=None, plot_path=None) -> list[Path]:
    written = []
    if json_path:
        written.append(write_json(json_path, report))
    if md_path:
        written.append(write_text(md_path, bench_markdown(report)))
    if plot_path and report["results"]:
        written.append(bench_plot(report, plot_path))
    return written


def _before_after(before: dict | None, after: dict | None, key: str) -> str:
    from fleet.stages import percent

    was, now = (before or {}).get(key), (after or {}).get(key)
    if key == "fps":
        return f"{was if was is not None else '-'} -> {now if now is not None else '-'}"
    return f"{percent(was)} -> {percent(now)}"


def plan_table(state: dict, gates: str, soak_s: float, path) -> str:
    """A staged rollout's plan (``--dry-run``): the devices of each stage, the soak, the gates, the state file."""
    rows = [[str(s["stage"]), s["spec"], s["state"], ", ".join(s["devices"]) or "(no new device)"]
            for s in state["plan"]]
    lines = [f"rollout of {state['model']} ({state['model_sha256'][:12]}) to {state['to']!r}, devices in sorted id order:",
             text_table(["stage", "share", "state", "devices"], rows),
             f"each stage: deploy, soak {soak_s:g} s, then the gates: {gates}"]
    lines += [f"not in the plan: {d} ({why})" for d, why in sorted(state["skipped"].items())]
    lines.append(f"state file: {path}")
    return "\n".join(lines)


def stage_table(stage: dict, stages: int) -> str:
    """One stage of a rollout: per device the deploy's ack, before -> after per gate, the outcome (and rollback)."""
    header = ["device", "deploy", "unknown", "uncertain", "fps", "errors", "outcome"]
    rows = []
    for device in stage["devices"]:
        ack, after = stage["acks"].get(device, {}), stage["after"].get(device)
        problems = stage["problems"].get(device)
        outcome = ("FAILED: " + "; ".join(problems) if problems else "offline (ignored)" if (after or {}).get("offline")
                   else "healthy" if after else "skipped (offline)" if ack.get("result") == "not sent" else "-")
        row = [device, ack.get("result", "-"), _before_after(stage["before"].get(device), after, "unknown"),
               _before_after(stage["before"].get(device), after, "uncertain"),
               _before_after(stage["before"].get(device), after, "fps"),
               str((after or {}).get("errors", "-") if (after or {}).get("errors") is not None else "-"), outcome]
        if stage["rollback"]:
            back = stage["rollback"].get(device)
            row.append("-" if back is None else back["result"] + (f" ({back['reason']})" if back.get("reason") and
                                                                  back["result"] != "accepted" else ""))
        rows.append(row)
    if stage["rollback"]:
        header.append("rollback")
    title = f"stage {stage['stage']} of {stages} ({stage['spec']}): {stage['state']}"
    return title + ("\n" + text_table(header, rows) if rows else " (no new device)")


def pull_table(rows: list[dict], duplicates: list[dict], conflicts: list[dict]) -> str:
    """``fleet pull``: one row per target (photos, MB, new, duplicates, conflicts, refused, result), then what
    two devices both sent and what they labelled two ways."""
    table = text_table(["device", "result", "photos", "MB", "new", "dup", "conflicts", "refused", "reason"],
                       [[r["device_id"], r["result"], str(r["photos"]), f"{r['bytes'] / 1e6:.1f}", str(r["new"]),
                         str(r["duplicates"]), str(r["conflicts"]), str(r["refused"]), r["reason"]] for r in rows])
    lines = [table]
    lines += [f"# duplicate {d['sha256'][:16]}: {d['label']} from {', '.join(d['devices'])} (written once, "
              f"{d['path']})" for d in duplicates]
    lines += [f"# conflict {c['sha256'][:16]}: " + ", ".join(f"{s['device']} says {s['label']}" for s in c["sent"])
              + " (kept out of every class)" for c in conflicts]
    return "\n".join(lines)

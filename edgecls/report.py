"""``edgecls report RUN``: one self-contained HTML page for a run, images inline.

It reads only what the stages wrote (config.json, metrics.json, history plots, conversion.json,
bench.json, live.json) and says plainly which stage has not run yet, so it opens from a USB stick
on a laptop in the field with nothing else beside it.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
from pathlib import Path

from converter.report import disagreement_cell, drop_cell, layer_name
from edge_app.runtime import rundir
from edge_app.runtime.errors import EdgeclsError
from edge_app.runtime.files import write_text

EXAMPLES = """examples:
  edgecls report runs/potato
  edgecls report runs/potato --out /media/usb/potato-report.html"""

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1rem 1.5rem;color:#1d2630}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2rem;margin-top:2rem}
.sub{color:#5b6b7b}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{background:#f3f6f9;border-radius:8px;padding:.6rem 1rem;min-width:9rem}.card b{display:block;font-size:1.4rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #dde3ea;padding:.25rem .55rem;text-align:right}
th{background:#f3f6f9}td:first-child,th:first-child{text-align:left}.pass{color:#17803d;font-weight:600}
.fail{color:#b42318;font-weight:600}.side{display:flex;flex-wrap:wrap;gap:2rem;align-items:flex-start}
img{max-width:100%;border:1px solid #dde3ea;border-radius:4px}.grid img{max-width:260px;margin:.2rem}
.facts td{text-align:left}.missing{color:#8a5a00;background:#fff7e0;padding:.4rem .8rem;border-radius:6px}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("run", help="a run directory made by edgecls train (and convert, bench, demo)")
    parser.add_argument("--out", help="where to write the page (default: RUN/report.html)")


def main(args: argparse.Namespace) -> int:
    path = write_report(Path(args.run), Path(args.out) if args.out else None)
    print(path)
    return 0


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) and return its path.

    Example:
        >>> write_report(Path("runs/demo"))
        PosixPath('runs/demo/report.html')
    """
    if not (run_dir / rundir.CONFIG).is_file():
        raise EdgeclsError(f"{run_dir} is not a run directory (no config.json); train one first: "
                           f"edgecls train DATA --out {run_dir}")
    run = {name: _load(run_dir / f"{name}.json") for name in ("config", "metrics", "conversion", "bench", "live")}
    parts = [
        _header(run_dir, run),
        _dataset(run["config"]),
        _training(run_dir, run),
        _confusions(run),
        _per_class(run),
        _examples(run_dir),
        _conversion(run["conversion"]),
        _field(run),
        _unknown(run["conversion"], run["live"]),
        _bench(run_dir, run["bench"]),
        _live(run["live"]),
        _learned(run_dir, run),
        _device(run),
    ]
    page = (f"<!doctype html><html lang=en><meta charset=utf-8><title>edgecls — {_e(run_dir.name)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style><body>"
            + "\n".join(p for p in parts if p) + "</body></html>\n")
    out = out or run_dir / rundir.REPORT
    write_text(out, page)
    return out


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EdgeclsError(f"{path} is not valid JSON ({e}); re-run the stage that wrote it") from e


def _e(value) -> str:
    return html.escape(str(value))


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _missing(what: str, command: str) -> str:
    return f"<p class=missing>{_e(what)} — run <code>{_e(command)}</code></p>"


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _int8(conversion: dict | None) -> dict | None:
    variants = (conversion or {}).get("variants", [])
    return next((v for v in variants if v.get("quant") == "int8"), None)


def _header(run_dir: Path, run: dict) -> str:
    config, metrics, conversion = run["config"], run["metrics"] or {}, run["conversion"]
    int8 = _int8(conversion)
    live = run["live"] or {}
    cards = [("float test accuracy", _pct(metrics.get("test_accuracy")))]
    if int8:
        cards += [("int8 accuracy", _pct(int8.get("accuracy"))), ("int8 size", f"{int8['size_bytes'] / 1e6:.2f} MB"),
                  ("int8 p50 latency", f"{int8['latency_ms']['p50']:.2f} ms")]
    if live.get("fps"):
        cards.append(("live pipeline", f"{live['fps']:.0f} FPS"))
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    size = config.get("image_size", "?")
    size = "×".join(map(str, size)) if isinstance(size, list) else size
    return (f"<h1>{_e(run_dir.name)}</h1><p class=sub>{_e(config.get('backbone', '?'))}, "
            f"{_e(size)} px, {len(config.get('labels', []))} classes · report written {when}</p>"
            "<div class=cards>" + "".join(f"<div class=card>{_e(k)}<b>{_e(v)}</b></div>" for k, v in cards) + "</div>")


def _dataset(config: dict) -> str:
    labels = config.get("labels", [])
    splits = config.get("splits", {})
    rows = []
    for i, label in enumerate(labels):
        counts = [sum(1 for _, c in splits.get(s, []) if c == i) for s in ("train", "val", "test")]
        rows.append([_e(label), *counts])
    totals = [len(splits.get(s, [])) for s in ("train", "val", "test")]
    rows.append(["<b>all</b>", *(f"<b>{t}</b>" for t in totals)])
    carved = config.get("split_source") or {}
    where = "; ".join(f"{k}: {v}" for k, v in carved.items()) if isinstance(carved, dict) else str(carved)
    return ("<h2>Dataset</h2>"
            f"<p>{_e(config.get('data_dir', ''))}" + (f"<br><span class=sub>{_e(where)}</span>" if where else "") + "</p>"
            + _table(["class", "train", "val", "test"], rows))


def _training(run_dir: Path, run: dict) -> str:
    config = run["config"]
    settings = ", ".join(f"{k} {config[k]}" for k in ("weights", "epochs", "fine_tune_epochs", "batch_size", "seed")
                         if k in config)
    source = config.get("weights_source") or {}
    origin = f"<p class=sub>starting weights: {_e(source['origin'])}</p>" if source.get("origin") else ""
    curves = _img(run_dir / "curves.png", "training curves")
    return ("<h2>Training</h2>" + f"<p>{_e(settings)}</p>" + origin
            + (curves or _missing("no curves.png", f"edgecls train DATA --out {run_dir}")))


def _matrix(matrix: list[list[int]], labels: list[str], title: str) -> str:
    peak = max((max(row) for row in matrix), default=1) or 1
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{_e(x)}</th>" for x in labels) + "</tr>"
    rows = []
    for i, (label, row) in enumerate(zip(labels, matrix, strict=False)):
        # Right answers shade blue, mistakes red, by count relative to the largest cell.
        cells = "".join(f"<td style='background:rgba({'37,99,235' if i == j else '220,38,38'},{0.6 * n / peak:.2f})'>{n}</td>"
                        for j, n in enumerate(row))
        rows.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    return f"<div><h3>{_e(title)}</h3><table>{head}{''.join(rows)}</table></div>"


def _confusions(run: dict) -> str:
    metrics, conversion = run["metrics"], run["conversion"] or {}
    labels = (run["config"] or {}).get("labels", [])
    # The converter's float matrix is on the very images the int8 one is, so the two compare directly.
    float_matrix = conversion.get("float_confusion_matrix") or (metrics or {}).get("confusion_matrix")
    if not float_matrix:
        return ""
    blocks = [_matrix(float_matrix, labels, "Keras float")]
    int8 = _int8(conversion)
    if int8 and int8.get("confusion_matrix"):
        blocks.append(_matrix(int8["confusion_matrix"], labels, "TFLite int8, same images"))
    return "<h2>Confusion matrices (test split)</h2><div class=side>" + "".join(blocks) + "</div>"


def _per_class(run: dict) -> str:
    metrics = run["metrics"]
    if not metrics:
        return ""
    int8 = _int8(run["conversion"]) or {}
    deltas = int8.get("per_class_delta_pp", {})
    rows = []
    for label, m in metrics["per_class"].items():
        delta = deltas.get(label)
        rows.append([_e(label), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"],
                     "–" if delta is None else f"{delta:+.1f}"])
    return "<h2>Per class</h2>" + _table(["class", "precision", "recall", "F1", "support", "int8 Δ accuracy (pp)"], rows)


def _examples(run_dir: Path) -> str:
    parts = []
    wrong = _img(run_dir / "misclassified.png", "misclassified test images")
    if wrong:
        parts.append("<h2>Misclassified test images</h2>" + wrong)
    cams = sorted((run_dir / "gradcam").glob("*.png"))[:8] if (run_dir / "gradcam").is_dir() else []
    if cams:
        parts.append("<h2>Grad-CAM</h2><p class=sub>where the model looked</p><div class=grid>"
                     + "".join(_img(p, p.stem) for p in cams) + "</div>")
    return "".join(parts)


def _conversion(conversion: dict | None) -> str:
    if not conversion:
        return "<h2>Conversion</h2>" + _missing("not converted yet", "edgecls convert RUN --quant all")
    rows = []
    for v in conversion.get("variants", []):
        verdict = "<span class=pass>pass</span>" if v.get("passed") else \
            "<span class=fail>FAIL</span> " + _e("; ".join(v.get("failures", [])))
        lat = v.get("latency_ms") or {}
        notes = []
        if v.get("kept_float"):
            notes.append("kept float for XNNPACK: " + ", ".join(f"{op} ×{n}" for op, n in v["kept_float"]["ops"].items()))
        if (v.get("repair") or {}).get("kept_layers"):
            notes.append("repaired: " + ", ".join(layer_name(n) for n in v["repair"]["kept_layers"]) + " in float")
        rows.append([_e(v["quant"]), f"{v['size_bytes'] / 1e6:.2f} MB", _pct(v.get("accuracy")), _e(drop_cell(v)),
                     _e(disagreement_cell(v)), _pct(v.get("agreement")),
                     f"{lat.get('p50', 0):.2f} / {lat.get('p90', 0):.2f}", verdict + "<br>" * bool(notes)
                     + _e("; ".join(notes))])
    speed = conversion.get("speed") or {}
    verdict = ""
    if speed.get("fastest"):
        ratios = ", ".join(f"{q} {r:.2f}×" for q, r in (speed.get("speedup_vs_fp32") or {}).items())
        verdict = (f"<p>Fastest on this machine: <b>{_e(speed['fastest'])}</b>; smallest: "
                   f"<b>{_e(speed.get('smallest', '?'))}</b>" + (f" (speed vs fp32: {_e(ratios)})" if ratios else "") + "</p>")
    return ("<h2>Conversion</h2>" + f"<p>float accuracy {_pct(conversion.get('float_accuracy'))} on "
            f"{(conversion.get('check_data') or {}).get('num_images', '?')} held-out images</p>"
            + _table(["variant", "size", "accuracy", "drop (pp) [95% interval]", "lost / gained (p)", "agreement",
                      "p50 / p90 ms", "check"], rows) + verdict
            + "<p class=sub>A variant fails when its drop is above the limit and unlikely to be chance: McNemar's "
              "exact test on the images where it and the float model disagree (p &lt; 0.05).</p>")


def _field(run: dict) -> str:
    """Lab and field apart: the trained model on its held-out field photos (``train --field``) and each converted
    variant on the field photos ``convert`` measured, beside their lab figures."""
    metrics, conversion = run["metrics"] or {}, run["conversion"] or {}
    trained = metrics.get("field") or {}
    variants = [v for v in conversion.get("variants", []) if v.get("field")]
    if not trained.get("held_out") and not variants:
        return ("<h2>Lab and field</h2>" + _missing("measured on lab photos only: a kiosk sees leaves on the plant",
                                                    "edgecls eval MODEL FIELD_PHOTOS/ (or train/convert --field)"))
    rows = []
    if trained.get("held_out"):
        rows.append(["Keras model (training)", _pct(metrics.get("test_accuracy")), _pct(trained["accuracy"]),
                     _pct(trained["balanced_accuracy"]), "—", trained["num_images"]])
    for v in variants:
        f = v["field"]
        rows.append([_e(v["quant"]), _pct(v.get("accuracy")), _pct(f["accuracy"]), _pct(f["balanced_accuracy"]),
                     _pct(f.get("unknown_rate")), f["num_images"]])
    source = (conversion.get("field") or {}).get("source") or "the run's held-out field photos"
    return ("<h2>Lab and field</h2><p class=sub>lab: photos like the training ones; field: photos like a kiosk's "
            f"({_e(source)}), never pooled with the lab figures</p>"
            + _table(["model", "lab accuracy", "field top-1", "field balanced", "field unknown", "field photos"], rows))


def _unknown(conversion: dict | None, live: dict | None) -> str:
    """Each variant's 'unknown' on the check images (and photos of none of the classes), like its accuracy."""
    variants = [v for v in (conversion or {}).get("variants", []) if v.get("unknown")]
    if not variants:
        return ""
    check = next((v["unknown"]["check"] for v in variants if v["unknown"].get("check")), None)
    rows = []
    for v in variants:
        u, test = v["unknown"], v["unknown"].get("test") or {}
        row = [_e(v["quant"]), f"{u['threshold']:.4f}", f"{u['references']} ({u['reference_bytes'] / 1e3:.0f} kB)",
               _pct(test.get("known_accepted")), f"{_pct(test.get('accuracy'))} → {_pct(test.get('accuracy_accepted'))}"]
        if check:
            c = u.get("check") or {}
            row += [f"{_pct(c.get('knn', {}).get('unknown_rejected'))} ({c.get('knn', {}).get('auroc')})",
                    f"{_pct(c.get('max_softmax', {}).get('unknown_rejected'))} ({c.get('max_softmax', {}).get('auroc')})"]
        rows.append(row)
    head = ["variant", "threshold", "reference set", "known accepted", "accuracy → among accepted"]
    if check:
        head += ["none-of-the-classes called unknown (AUROC)", "max softmax would (AUROC)"]
    shown = (live or {}).get("unknown_shown")
    return ("<h2>Unknown: none of the classes</h2><p class=sub>each variant carries a reference set computed with "
            f"itself; its threshold accepts {_pct(variants[0]['unknown']['accept'])} of "
            f"{_e(variants[0]['unknown']['calibrated_on'])}"
            + (f"; photos of none of the classes: {_e(check['folder'])} ({check['num_images']})" if check else "")
            + "</p>" + _table(head, rows)
            + (f"<p>Live loop: {shown['unknown']} of {shown['frames']} frames of photos of other things said "
               "<b>Not something I know</b>.</p>" if shown else ""))


def _bench(run_dir: Path, bench: dict | None) -> str:
    if not bench:
        return "<h2>Benchmark</h2>" + _missing("not benchmarked yet", f"edgecls bench {run_dir}/*.tflite --json {run_dir}/bench.json")
    rows = []
    for r in bench.get("results", []):
        lat = r.get("latency_ms", {})
        acc = r.get("accuracy")
        acc = acc.get("top1") if isinstance(acc, dict) else acc
        rows.append([_e(Path(r["model"]).name), _e(r.get("quant", "")), r.get("threads", ""),
                     f"{lat.get('mean', 0):.2f}", f"{lat.get('p50', 0):.2f}", f"{lat.get('p90', 0):.2f}",
                     f"{lat.get('p99', 0):.2f}", f"{r.get('fps', 0):.0f}", f"{r.get('peak_rss_mb', 0):.0f}", _pct(acc)])
    plots = "".join(_img(p, p.stem) for p in sorted(run_dir.glob("bench*.png")))
    return ("<h2>Benchmark</h2>" + _table(["model", "quant", "threads", "mean ms", "p50", "p90", "p99", "FPS",
                                          "peak RSS MB", "top-1"], rows) + plots)


def _live(live: dict | None) -> str:
    if not live:
        return ""
    stages = live.get("stage_ms_p50", {})
    split = ", ".join(f"{k} {v:.2f} ms" for k, v in stages.items())
    return ("<h2>Live pipeline</h2>"
            f"<p>{live.get('frames', 0)} frames of {_e(live.get('source', ''))} at {live.get('fps', 0):.1f} FPS"
            + (f"; label accuracy {_pct(live['accuracy'])}" if live.get("accuracy") is not None else "")
            + (f"; median per frame: {_e(split)}" if split else "") + "</p>")


def _learned(run_dir: Path, run: dict) -> str:
    """The host-trained model beside a head learned on a pretrained embedding (``edgecls learn``), same test photos."""
    learned = _load((run_dir / rundir.LEARNED).with_suffix(".learn.json"))
    if not learned or not learned.get("test"):
        return ""
    metrics, int8 = run["metrics"] or {}, _int8(run["conversion"]) or {}
    source = (run["config"] or {}).get("weights_source") or {}
    host = ("trained from scratch" if source.get("kind", "none") == "none"
            else f"transfer + fine-tune from {source.get('name', 'pretrained')} weights")
    trained_s = (metrics.get("timing") or {}).get("fit_s")
    rows = [[f"{_e(host)} (host, <code>edgecls train</code>; int8)", _pct(int8.get("accuracy", metrics.get("test_accuracy"))),
             f"{trained_s:.0f} s" if trained_s else "—", f"{int8.get('size_bytes', 0) / 1e6:.2f} MB",
             f"{(int8.get('latency_ms') or {}).get('p50', 0):.2f}"],
            [f"new {_e(learned['head'])} head on frozen uint8 ImageNet MobileNetV2 features (device, "
             "<code>edgecls learn</code>)", _pct(learned["test"]["accuracy"]), f"{sum(learned['seconds'].values()):.0f} s",
             f"{learned['size_bytes'] / 1e6:.2f} MB", f"{(learned.get('latency_p50_ms') or {}).get('learned', 0):.2f}"]]
    return ("<h2>Host training beside device learning</h2><p class=sub>the same training photos and the same test "
            f"split ({learned['test']['num_images']} images); <code>edgecls learn</code> needs no TensorFlow and "
            "runs on the device; time: the training stages alone</p>"
            + _table(["model", "test accuracy", "time", "size", "p50 ms"], rows))


def _device(run: dict) -> str:
    device = (run["bench"] or {}).get("device") or (run["live"] or {}).get("device") or \
        (run["conversion"] or {}).get("machine")
    if not device:
        return ""
    rows = [[_e(k), _e(round(v, 2) if isinstance(v, float) else v)] for k, v in device.items()
            if v is not None and not isinstance(v, (dict, list))]
    return "<h2>Device</h2><div class=facts>" + _table(["fact", "value"], rows) + "</div>"

"""The kiosk page served at ``/`` by :mod:`edge_app.kiosk.server`, in the language of the request.

Two views of one page. The farmer's (the default): the verdict in big type with its class card (the name, what it
is, what to do, in the page's language), how sure the kiosk is in words, a hint when it does not know, and the
labelled frames it looks like. The operator's ("Details", or any visit with the kiosk token): the scores, FPS,
history and device, and with ``--learn`` the field loop (review with groups of near-identical frames and bulk
labels, labelled, teach, model). No CDN, no framework, no web font from elsewhere: a farm kiosk is often offline;
the script, the style and a Devanagari font come from ``/static/``.

Every word the page shows is here, in :func:`texts`, marked for gettext: ``make translations`` extracts them
with Babel into ``locale/kiosk.pot``. Names and labels are always shown as text, never parsed as HTML.
"""

from __future__ import annotations

import functools
import html
import json
import re
from pathlib import Path

from edge_app.kiosk.i18n import LANGUAGES, NAMES, translations

STATIC = Path(__file__).parent / "static"
# What /static/ serves: a fixed list, read once (never a path from a request).
SCRIPT_FONTS = {"hi": ("noto-sans-devanagari-400.woff2", "noto-sans-devanagari-700.woff2")}
STATIC_FILES = {"kiosk.js": "text/javascript; charset=utf-8", "kiosk.css": "text/css; charset=utf-8",
                "noto-sans-devanagari-400.woff2": "font/woff2", "noto-sans-devanagari-700.woff2": "font/woff2"}


def texts(_) -> dict[str, str]:
    """Every word of the page, through ``_`` (a gettext). ``{name}`` is filled in by the page's script."""
    return {
        # the farmer's view: every one of these must be translated (a test holds each language to it)
        "title": _("Plant check"),
        "language": _("Language"),
        "details": _("Details"),
        "hide_details": _("Hide details"),
        "starting": _("Starting…"),
        "offline": _("Connection lost, trying again…"),
        "live_view": _("What the camera sees"),
        "unknown": _("Not something I know"),
        "uncertain": _("I am not sure"),
        "sure": _("Sure"),
        "not_sure": _("Not sure"),
        "hint_unknown": _("Show one leaf at a time, close to the camera, in good light."),
        "hint_unsure": _("Hold it still, a little closer and in good light, and wait a moment."),
        "what_to_do": _("What to do"),
        "looks_like": _("Looks like these"),
        # the operator's view
        "recent": _("Recent"),
        "fps": _("{fps} FPS, {ms} ms, frame {frame}"),
        "tab_review": _("Review"),
        "tab_labelled": _("Labelled"),
        "tab_teach": _("Teach"),
        "tab_model": _("Model"),
        "token": _("token"),
        "use": _("Use"),
        "label": _("Label"),
        "discard": _("Discard"),
        "move": _("Move"),
        "unlabel": _("Unlabel"),
        "undo": _("Undo"),
        "right_class": _("right class, or a new one"),
        "class_name": _("class name"),
        "select_all": _("Select all"),
        "clear": _("Clear"),
        "selected": _("{n} selected"),
        "label_selected": _("Label selected"),
        "discard_selected": _("Discard selected"),
        "similar": _("{n} similar frames"),
        "select_these": _("Select these"),
        "show_all": _("Show all {n}"),
        "why_low_score": _("low score"),
        "why_small_margin": _("close call"),
        "why_sample": _("random sample"),
        "why_novel": _("unlike anything known"),
        "labelled_help": _("The newest labelled frames: move one to the right class, or send it back to Review."),
        "teach_help": _("Type the class, hold the object in front of the camera, press Capture: the frames over a "
                        "few seconds become examples of that class."),
        "frames_over": _("frames over"),
        "seconds": _("s"),
        "capture": _("Capture"),
        "model_help": _("Apply learns from every labelled frame (in the background; the camera keeps running), "
                        "checks the new model beside the running one on the same held-out frames, and swaps it in. "
                        "Undo puts the previous one back."),
        "apply": _("Apply"),
        "msg_labelled": _("labelled {label}"),
        "msg_labelled_many": _("labelled {n} frames as {label}"),
        "msg_sent_back_many": _("sent {n} frames back to review"),
        "msg_discarded": _("discarded"),
        "msg_discarded_many": _("discarded {n} frames"),
        "msg_moved": _("moved to {label}"),
        "msg_back": _("back to review"),
        "msg_capturing": _("capturing {label}…"),
        "msg_captured": _("captured {n} frames of {label}"),
        "msg_type_class": _("type a class name first"),
        "msg_select_first": _("select frames first (click a picture; shift-click for a run of them)"),
        "msg_learning": _("learning started"),
        "msg_undone": _("undone: running {version}"),
        "msg_token_saved": _("token saved"),
        "paused": _("collection paused: {why}"),
        "newest_of": _("the newest {n} of {total}"),
        "frames_count": _("{n} frames"),
        "job_learning": _("learning from the labelled frames…"),
        "job_swapping": _("swapping the new model in…"),
        "job_applied": _("applied {version}"),
        "job_rejected": _("the new model was rejected: {error}"),
        "job_failed": _("failed: {error}"),
        "held_out": _("held-out frames"),
        "new_model": _("new model"),
        "running_model": _("running model"),
        "too_few": _("too few frames to hold any out: label 5 or more per class to see accuracy"),
        "running": _("running"),
        "classes_count": _("{n} classes"),
        "held_out_accuracy": _("held-out {accuracy}"),
    }


FARMER_KEYS = ("title", "language", "details", "starting", "offline", "live_view", "unknown", "uncertain", "sure",
               "not_sure", "hint_unknown", "hint_unsure", "what_to_do", "looks_like")

TEMPLATE = """<!doctype html>
<html lang="{{lang}}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<link rel="stylesheet" href="/static/kiosk.css">{{preload}}
</head>
<body class="farmer">
<header>
  <strong class="brand">{{title}}</strong>
  <label class="lang">{{language}} <select id="lang">{{language_options}}</select></label>
  <button id="details-toggle" type="button">{{details}}</button>
</header>
<main><img id="view" src="/stream.mjpg" alt="{{live_view}}"></main>
<aside>
  <div id="offline">{{offline}}</div>
  <div id="label" class="verdict">{{starting}}</div>
  <div id="sure" class="sure" hidden></div>
  <p id="description" class="description"></p>
  <div id="advice-box" hidden><h2>{{what_to_do}}</h2><p id="advice"></p></div>
  <p id="hint" class="hint" hidden></p>
  <div id="examples-box" hidden><h2>{{looks_like}}</h2><div id="examples" class="thumbs"></div></div>
  <div id="details" class="operator-only">
    <div class="bar"><div id="bar"></div></div>
    <div id="score"></div>
    <div class="muted" id="fps"></div>
    <div><strong>{{recent}}</strong><ol id="history"></ol></div>
    <div class="muted" id="device"></div>
  </div>
</aside>
<section id="field" class="operator-only" hidden>
  <nav><button data-tab="review" class="on">{{tab_review}} <span id="waiting"></span></button>
    <button data-tab="labelled">{{tab_labelled}}</button><button data-tab="teach">{{tab_teach}}</button><button data-tab="model">{{tab_model}}</button>
    <span id="tokenbox" hidden>{{token}} <input id="token" size="28" autocomplete="off"> <button id="savetoken">{{use}}</button></span></nav>
  <div id="msg" class="muted"></div>
  <div id="tab-review">
    <div class="row toolbar"><button id="select-all">{{select_all}}</button><button id="select-none">{{clear}}</button>
      <span id="selected" class="muted"></span>
      <input id="bulk-label" list="classes" placeholder="{{right_class}}" maxlength="64">
      <button id="bulk-apply" class="primary">{{label_selected}}</button><button id="bulk-discard">{{discard_selected}}</button>
      <button id="bulk-undo" hidden>{{undo}}</button></div>
    <div class="muted" id="paused"></div><div id="grid"></div></div>
  <div id="tab-labelled" hidden>
    <p class="muted">{{labelled_help}}</p>
    <div class="muted" id="labelled-total"></div><div class="grid" id="labelled-grid"></div>
  </div>
  <div id="tab-teach" hidden>
    <p class="muted">{{teach_help}}</p>
    <div class="row"><input id="teach-label" list="classes" placeholder="{{class_name}}" maxlength="64">
      <input id="teach-frames" type="number" value="20" min="1" max="200" style="max-width:6rem"> {{frames_over}}
      <input id="teach-seconds" type="number" value="4" min="0" max="60" style="max-width:5rem"> {{seconds}}
      <button id="capture" class="primary">{{capture}}</button></div>
    <table id="counts"></table>
  </div>
  <div id="tab-model" hidden>
    <p class="muted">{{model_help}}</p>
    <div class="row"><button id="apply" class="primary">{{apply}}</button><button id="undo">{{undo}}</button></div>
    <div id="job"></div>
    <table id="versions"></table>
  </div>
  <datalist id="classes"></datalist>
</section>
<script id="texts" type="application/json">{{texts_json}}</script>
<script src="/static/kiosk.js"></script>
</body></html>
"""


@functools.cache
def render(lang: str) -> bytes:
    """The page in ``lang`` (one of :data:`~edge_app.kiosk.i18n.LANGUAGES`), made once per language."""
    words = texts(translations(lang).gettext)
    options = "".join(f'<option value="{code}"{" selected" if code == lang else ""}>{html.escape(NAMES[code])}</option>'
                      for code in LANGUAGES)
    # In a <script> element: no "</" may close it early, whatever a translation says.
    as_json = json.dumps(words, ensure_ascii=False).replace("<", "\\u003c").replace("&", "\\u0026")
    # A script the browser may lack: its font comes with the page's first requests, before anything is drawn.
    preload = "".join(f'\n<link rel="preload" href="/static/{name}" as="font" type="font/woff2" crossorigin>'
                      for name in SCRIPT_FONTS.get(lang, ()))
    fill = {"lang": lang, "language_options": options, "texts_json": as_json, "preload": preload}
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: fill[m[1]] if m[1] in fill else html.escape(words[m[1]]), TEMPLATE)
    return page.encode("utf-8")


@functools.cache
def static_file(name: str) -> tuple[bytes, str] | None:
    """``(bytes, content type)`` of a file /static/ serves, or ``None``."""
    kind = STATIC_FILES.get(name)
    return None if kind is None else ((STATIC / name).read_bytes(), kind)

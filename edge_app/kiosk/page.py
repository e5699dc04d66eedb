"""The kiosk page served at ``/`` by :mod:`edge_app.kiosk.server`: one self-contained HTML file.

No CDN, no framework: a farm kiosk is often offline. It polls ``/status`` twice a second and
shows ``/stream.mjpg``. With ``--learn`` it shows the field loop (review, labelled: move or send
back, teach, model: apply and undo); the token comes from the link printed at start (``#token=...``,
kept in the browser's local storage) or is typed once, and goes with every field-loop request, reads
too: their images are fetched with it and shown from blob URLs (an ``<img src>`` cannot send a
header). Every name and label is shown as text, never parsed as HTML.
"""

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgecls live</title>
<style>
  :root { color-scheme: dark; font-family: system-ui, sans-serif; }
  body { margin: 0; background: #111; color: #eee; display: grid; grid-template-columns: minmax(0, 3fr) minmax(16rem, 1fr);
         min-height: 100vh; }
  main { display: flex; align-items: center; justify-content: center; background: #000; }
  main img { max-width: 100%; max-height: 100vh; }
  aside { padding: 1.5rem; display: flex; flex-direction: column; gap: 1rem; }
  #label { font-size: 2.6rem; font-weight: 700; line-height: 1.1; word-break: break-word; }
  #label.uncertain { color: #fb3; }
  #label.unknown { color: #8cf; }
  .bar { height: .8rem; background: #333; border-radius: .4rem; overflow: hidden; }
  .bar div { height: 100%; width: 0; background: #5c5; transition: width .3s; }
  #score { font-size: 1.4rem; }
  .muted { color: #999; font-size: .9rem; }
  ol { padding-left: 1.2rem; margin: 0; max-height: 40vh; overflow: auto; }
  li { margin: .2rem 0; }
  #offline { display: none; color: #f66; font-weight: 700; }
  #field { grid-column: 1 / -1; padding: 1rem 1.5rem 2rem; border-top: 1px solid #333; }
  #field nav button { margin-right: .4rem; }
  button, input { font: inherit; padding: .45rem .8rem; border-radius: .4rem; border: 1px solid #555;
                  background: #222; color: #eee; }
  button { cursor: pointer; }
  button.primary { background: #2a6; border-color: #2a6; color: #fff; }
  button.on { background: #444; }
  button:disabled { opacity: .5; cursor: default; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: 1rem; margin-top: 1rem; }
  .card { background: #1b1b1b; border-radius: .5rem; padding: .6rem; display: flex; flex-direction: column; gap: .4rem; }
  .card img { width: 100%; border-radius: .3rem; }
  .row { display: flex; flex-wrap: wrap; gap: .4rem; align-items: center; }
  .row input { flex: 1; min-width: 6rem; }
  #msg { min-height: 1.4rem; margin-top: .6rem; }
  .bad { color: #f66; } .good { color: #5c5; }
  table { border-collapse: collapse; margin-top: .6rem; } td, th { padding: .2rem .8rem; text-align: left; }
  @media (max-width: 700px) { body { grid-template-columns: 1fr; } }
</style></head>
<body>
<main><img id="view" src="/stream.mjpg" alt="live camera view"></main>
<aside>
  <div id="offline">connection lost, retrying</div>
  <div id="label">starting</div>
  <div class="bar"><div id="bar"></div></div>
  <div id="score"></div>
  <div class="muted" id="fps"></div>
  <div><strong>Recent</strong><ol id="history"></ol></div>
  <div class="muted" id="device"></div>
</aside>
<section id="field" hidden>
  <nav><button data-tab="review" class="on">Review <span id="waiting"></span></button>
    <button data-tab="labelled">Labelled</button><button data-tab="teach">Teach</button><button data-tab="model">Model</button>
    <span id="tokenbox" hidden>token <input id="token" size="28" autocomplete="off"> <button id="savetoken">Use</button></span></nav>
  <div id="msg" class="muted"></div>
  <div id="tab-review"><div class="muted" id="paused"></div><div class="grid" id="grid"></div></div>
  <div id="tab-labelled" hidden>
    <p class="muted">The newest labelled frames: move one to the right class, or send it back to Review.</p>
    <div class="muted" id="labelled-total"></div><div class="grid" id="labelled-grid"></div>
  </div>
  <div id="tab-teach" hidden>
    <p class="muted">Type the class, hold the object in front of the camera, press Capture: the frames over a few
      seconds become examples of that class.</p>
    <div class="row"><input id="teach-label" list="classes" placeholder="class name" maxlength="64">
      <input id="teach-frames" type="number" value="20" min="1" max="200" style="max-width:6rem"> frames over
      <input id="teach-seconds" type="number" value="4" min="0" max="60" style="max-width:5rem"> s
      <button id="capture" class="primary">Capture</button></div>
    <table id="counts"></table>
  </div>
  <div id="tab-model" hidden>
    <p class="muted">Apply learns from every labelled frame (in the background; the camera keeps running), checks the
      new model beside the running one on the same held-out frames, and swaps it in. Undo puts the previous one back.</p>
    <div class="row"><button id="apply" class="primary">Apply</button><button id="undo">Undo</button></div>
    <div id="job"></div>
    <table id="versions"></table>
  </div>
  <datalist id="classes"></datalist>
</section>
<script>
const $ = (id) => document.getElementById(id);
const time = (t) => new Date(t * 1000).toLocaleTimeString();
async function poll() {
  try {
    const s = await (await fetch('/status', {cache: 'no-store'})).json();
    $('offline').style.display = 'none';
    if (s.label !== null) {
      // "unknown": none of the model's classes (its reference photos say so).
      $('label').textContent = s.unknown ? 'Not something I know' : s.label;
      $('label').className = s.unknown ? 'unknown' : s.uncertain ? 'uncertain' : '';
      $('bar').style.width = (100 * s.score).toFixed(0) + '%';
      $('score').textContent = (100 * s.score).toFixed(1) + '%';
      $('fps').textContent = s.fps.toFixed(1) + ' FPS, ' + s.latency_ms.toFixed(0) + ' ms, frame ' + s.frame;
    }
    $('history').innerHTML = '';
    for (const h of s.history) {
      const li = document.createElement('li');
      li.textContent = time(h.t) + '  ' + (h.event ? h.event + ' ' + h.detail : h.label + ' ' + (100 * h.score).toFixed(0) + '%');
      $('history').appendChild(li);
    }
    const d = s.device || {}, r = s.run || {};
    $('device').textContent = [r.model && r.model.split('/').pop(), r.runtime, r.delegate, r.threads && r.threads + ' threads',
      d.board || d.cpu_model, d.cpu_temperature_c != null && d.cpu_temperature_c + ' \\u00b0C',
      d.throttled && 'throttled ' + d.throttled].filter(Boolean).join(' \\u00b7 ');
  } catch (e) {
    $('offline').style.display = 'block';
  }
}
$('view').onerror = () => setTimeout(() => { $('view').src = '/stream.mjpg?' + Date.now(); }, 2000);
setInterval(poll, 500); poll();

// --- the field loop (--learn) ------------------------------------------------------------------
const pct = (x) => x == null ? '\\u2014' : (100 * x).toFixed(0) + '%';
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text != null) e.textContent = text;
  if (cls) e.className = cls; return e; };
const found = /[#&]token=([^&]+)/.exec(location.hash);
if (found) { localStorage.setItem('edgecls-token', decodeURIComponent(found[1])); history.replaceState(null, '', '/'); }
let token = localStorage.getItem('edgecls-token') || '';
function say(text, ok) { $('msg').textContent = text; $('msg').className = ok === undefined ? 'muted' : ok ? 'good' : 'bad'; }
async function act(action, body) {
  const r = await fetch('/api/' + action, {method: 'POST', headers: {'Content-Type': 'application/json',
    'X-Edgecls-Token': token}, body: JSON.stringify(body || {})});
  const out = await r.json().catch(() => ({error: r.statusText}));
  if (r.status === 401) { $('tokenbox').hidden = false; }
  if (!r.ok) { say(out.error || r.statusText, false); throw new Error(out.error); }
  return out;
}
async function get(route) {
  const r = await fetch('/api/' + route, {cache: 'no-store', headers: {'X-Edgecls-Token': token}});
  if (r.status === 401) { $('tokenbox').hidden = false; }
  if (!r.ok) { const out = await r.json().catch(() => ({})); say(out.error || r.statusText, false); throw new Error(out.error); }
  return r.json();
}
async function picture(img, url) {  // an <img src> cannot send the token: fetch, then show the blob
  const r = await fetch(url, {cache: 'no-store', headers: {'X-Edgecls-Token': token}});
  if (!r.ok) return;
  img.onload = () => URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(await r.blob());
}
let classes = {model: [], labelled: {}};
async function refreshClasses() {
  classes = await get('classes');
  const names = [...new Set([...Object.keys(classes.labelled), ...classes.model])];
  $('classes').replaceChildren(...names.map((n) => { const o = el('option'); o.value = n; return o; }));
  const rows = Object.entries(classes.labelled).map(([n, c]) => { const tr = el('tr'); tr.append(el('td', n), el('td', c + ' frames')); return tr; });
  $('counts').replaceChildren(...rows);
}
function card(item) {
  const c = el('div', null, 'card'); c.dataset.id = item.id;
  const img = el('img'); picture(img, '/api/collected/' + encodeURIComponent(item.id) + '.jpg'); img.alt = item.label;
  const why = {low_score: 'low score', small_margin: 'close call', sample: 'random sample'}[item.why] || item.why;
  c.append(img, el('div', (item.top || []).slice(0, 3).map(([l, s]) => l + ' ' + pct(s)).join(' \\u00b7 ') + ' (' + why + ')', 'muted'));
  const quick = el('div', null, 'row');
  for (const [l] of (item.top || []).slice(0, 3)) { const b = el('button', l); b.onclick = () => label(item.id, l, c); quick.append(b); }
  const other = el('div', null, 'row'); const input = el('input'); input.setAttribute('list', 'classes');
  input.placeholder = 'right class, or a new one'; input.maxLength = 64;
  const ok = el('button', 'Label', 'primary'); ok.onclick = () => input.value.trim() && label(item.id, input.value, c);
  const drop = el('button', 'Discard'); drop.onclick = () => act('discard', {id: item.id}).then(() => { c.remove(); say('discarded', true); });
  other.append(input, ok, drop); c.append(quick, other); return c;
}
async function label(id, name, c) {
  const out = await act('label', {id, label: name}); c.remove(); say('labelled ' + out.label, true); refreshClasses();
}
async function refreshReview() {
  const got = await get('collected');
  $('waiting').textContent = '(' + got.items.length + ')';
  $('paused').textContent = got.paused ? 'collection paused: ' + got.paused : '';
  const shown = new Set([...$('grid').children].map((c) => c.dataset.id));
  const ids = new Set(got.items.map((i) => i.id));
  for (const c of [...$('grid').children]) if (!ids.has(c.dataset.id)) c.remove();
  for (const item of got.items.reverse()) if (!shown.has(item.id)) $('grid').prepend(card(item));
}
function labelledCard(item) {
  const c = el('div', null, 'card'); c.dataset.id = item.id;
  const img = el('img'); img.alt = item.label;
  picture(img, '/api/labelled/' + encodeURIComponent(item.label) + '/' + encodeURIComponent(item.id) + '.jpg');
  const row = el('div', null, 'row'); const input = el('input'); input.setAttribute('list', 'classes');
  input.value = item.label; input.maxLength = 64;
  const move = el('button', 'Move', 'primary');
  move.onclick = async () => { const name = input.value.trim(); if (!name || name === item.label) return;
    const out = await act('relabel', {id: item.id, label: name}); say('moved to ' + out.label, true);
    refreshLabelled(); refreshClasses(); };
  const back = el('button', 'Unlabel');
  back.onclick = async () => { await act('unlabel', {id: item.id}); c.remove(); say('back to review', true);
    refreshReview(); refreshClasses(); };
  row.append(input, move, back);
  c.append(img, el('div', item.label, 'muted'), row); return c;
}
async function refreshLabelled() {
  const got = await get('labelled');
  $('labelled-total').textContent = got.total > got.items.length ? 'the newest ' + got.items.length + ' of ' + got.total : '';
  $('labelled-grid').replaceChildren(...got.items.map(labelledCard));
}
function showJob(j) {
  const box = $('job'); box.replaceChildren();
  if (j.state === 'idle') return;
  box.append(el('p', {learning: 'learning from the labelled frames\\u2026', swapping: 'swapping the new model in\\u2026',
    applied: 'applied ' + j.version, rejected: 'the new model was rejected: ' + j.error, failed: 'failed: ' + j.error}[j.state] || j.state,
    j.state === 'applied' ? 'good' : (j.state === 'failed' || j.state === 'rejected') ? 'bad' : 'muted'));
  if (j.val) {
    const t = el('table'); const head = el('tr'); head.append(el('th', 'held-out frames'), el('th', 'new model'), el('th', 'running model'));
    const row = el('tr'); row.append(el('td', String(j.val.num_images)), el('td', pct(j.val.accuracy)), el('td', pct(j.val_before && j.val_before.accuracy)));
    t.append(head, row); box.append(t);
  } else if (j.state === 'applied') { box.append(el('p', 'too few frames to hold any out: label 5 or more per class to see accuracy', 'muted')); }
}
async function followJob() {
  const j = await get('job'); showJob(j);
  $('apply').disabled = j.state === 'learning' || j.state === 'swapping';
  if ($('apply').disabled) { setTimeout(followJob, 1000); return; }
  if ($('msg').textContent === 'learning started') say('');
  refreshVersions();
}
async function refreshVersions() {
  const v = await get('versions');
  const rows = v.versions.slice(-5).reverse().map((x) => { const tr = el('tr');
    tr.append(el('td', x.version + (v.history[v.history.length - 1] === x.version ? ' (running)' : '')), el('td', x.created),
      el('td', x.labels.length + ' classes'), el('td', 'held-out ' + pct(x.val && x.val.accuracy))); return tr; });
  $('versions').replaceChildren(...rows);
  $('undo').disabled = !v.history.length;
}
function tab(name) {
  for (const b of document.querySelectorAll('#field nav button[data-tab]')) b.classList.toggle('on', b.dataset.tab === name);
  for (const t of ['review', 'labelled', 'teach', 'model']) $('tab-' + t).hidden = t !== name;
  if (name === 'model') { followJob(); }
  if (name === 'teach') refreshClasses();
  if (name === 'labelled') { refreshClasses(); refreshLabelled(); }
}
for (const b of document.querySelectorAll('#field nav button[data-tab]')) b.onclick = () => tab(b.dataset.tab);
$('savetoken').onclick = () => { token = $('token').value.trim(); localStorage.setItem('edgecls-token', token); $('tokenbox').hidden = true; say('token saved');
  refreshClasses(); refreshReview(); refreshVersions(); };
$('capture').onclick = async () => {
  const name = $('teach-label').value.trim(); if (!name) { say('type a class name first', false); return; }
  $('capture').disabled = true; say('capturing ' + name + '\\u2026');
  try { const out = await act('teach', {label: name, frames: +$('teach-frames').value, seconds: +$('teach-seconds').value});
    say(out.problem ? out.problem : 'captured ' + out.saved + ' frames of ' + out.label, !out.problem); refreshClasses();
  } finally { $('capture').disabled = false; }
};
$('apply').onclick = async () => { await act('apply'); say('learning started', true); followJob(); };
$('undo').onclick = async () => { const out = await act('undo'); say('undone: running ' + out.running, true); refreshVersions(); };
(async () => {
  const s = await (await fetch('/status', {cache: 'no-store'})).json().catch(() => ({}));
  if (!s.learn) return;
  $('field').hidden = false; $('tokenbox').hidden = !!token;
  refreshClasses(); refreshReview(); refreshVersions(); setInterval(() => { if (!$('tab-review').hidden) refreshReview(); }, 3000);
})();
</script>
</body></html>
"""

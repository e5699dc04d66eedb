// The kiosk page's script: the farmer's verdict, the operator's figures and the field loop (--learn).
// Every word comes from the page's #texts (its language); every name and label is set as text, never as HTML.
'use strict';
const $ = (id) => document.getElementById(id);
const T = JSON.parse($('texts').textContent);
const f = (key, vars) => T[key].replace(/\{(\w+)\}/g, (m, name) => (vars && name in vars ? String(vars[name]) : m));
const LANG = document.documentElement.lang;
const time = (t) => new Date(t * 1000).toLocaleTimeString(LANG);
const pct = (x) => x == null ? '\u2014' : (100 * x).toFixed(0) + '%';
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text != null) e.textContent = text;
  if (cls) e.className = cls; return e; };

// --- the token (from the link printed at start, kept in this browser) and the view --------------------------------
const found = /[#&]token=([^&]+)/.exec(location.hash);
if (found) { localStorage.setItem('edgecls-token', decodeURIComponent(found[1])); history.replaceState(null, '', location.pathname + location.search); }
let token = localStorage.getItem('edgecls-token') || '';
function setView(operator) {
  document.body.classList.toggle('farmer', !operator);
  $('details-toggle').textContent = operator ? T.hide_details : T.details;
  localStorage.setItem('edgecls-view', operator ? 'operator' : 'farmer');
}
setView(localStorage.getItem('edgecls-view') === 'operator' || !!found);
$('details-toggle').onclick = () => {
  setView(document.body.classList.contains('farmer'));
  if (!$('field').hidden && !document.body.classList.contains('farmer')) { refreshReview(true).catch(() => {}); refreshVersions().catch(() => {}); }
};
$('lang').onchange = () => { const u = new URL(location.href); u.searchParams.set('lang', $('lang').value); location.href = u.href; };
let canSeeFrames = false;  // the field loop's pictures: with the token, or on a kiosk run with --public-view

async function picture(img, url) {  // an <img src> cannot send the token: fetch, then show the blob
  const r = await fetch(url, {cache: 'no-store', headers: {'X-Edgecls-Token': token}});
  if (!r.ok) return false;
  img.onload = () => URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(await r.blob());
  return true;
}
const frameUrl = (label, id) => '/api/labelled/' + encodeURIComponent(label) + '/' + encodeURIComponent(id) + '.jpg';

// --- the verdict, twice a second ------------------------------------------------------------------------------------
let shownExamples = '';
async function poll() {
  try {
    const s = await (await fetch('/status?lang=' + encodeURIComponent(LANG), {cache: 'no-store'})).json();
    $('offline').style.display = 'none';
    if (s.label !== null) showVerdict(s);
    $('history').replaceChildren(...s.history.map((h) => el('li', time(h.t) + '  ' + (h.event ? h.event + ' ' + h.detail
      : h.label + ' ' + (100 * h.score).toFixed(0) + '%'))));
    const d = s.device || {}, r = s.run || {};
    $('device').textContent = [r.model && r.model.split('/').pop(), r.runtime, r.delegate, r.threads && r.threads + ' threads',
      d.board || d.cpu_model, d.cpu_temperature_c != null && d.cpu_temperature_c + ' \u00b0C',
      d.throttled && 'throttled ' + d.throttled].filter(Boolean).join(' \u00b7 ');
  } catch (e) {
    $('offline').style.display = 'block';
  }
}
function showVerdict(s) {
  const card = s.card;
  // "unknown": none of the model's classes (its reference photos say so); "uncertain": below --threshold.
  $('label').textContent = s.unknown ? T.unknown : s.uncertain ? T.uncertain : card ? card.name : s.label;
  $('label').className = 'verdict' + (s.unknown ? ' unknown' : s.uncertain ? ' uncertain' : '');
  const known = !s.unknown && !s.uncertain;
  $('sure').hidden = !known;
  $('sure').textContent = s.sure ? T.sure : T.not_sure;
  $('sure').className = 'sure' + (s.sure ? '' : ' no');
  $('description').textContent = known && card ? card.description : '';
  $('advice').textContent = known && card ? card.advice : '';
  $('advice-box').hidden = !(known && card && card.advice);
  $('hint').hidden = known && s.sure;
  $('hint').textContent = s.unknown ? T.hint_unknown : T.hint_unsure;
  $('bar').style.width = (100 * s.score).toFixed(0) + '%';
  $('score').textContent = s.label + ' ' + (100 * s.score).toFixed(1) + '%';
  $('fps').textContent = f('fps', {fps: s.fps.toFixed(1), ms: s.latency_ms.toFixed(0), frame: s.frame});
  showExamples(known && canSeeFrames ? (s.examples || []) : []);
}
async function showExamples(examples) {
  const key = examples.map((x) => x.label + '/' + x.id).join('|');
  if (key === shownExamples) return;
  shownExamples = key;
  const imgs = examples.map((x) => { const img = el('img'); img.alt = x.label; return img; });
  $('examples').replaceChildren(...imgs);
  $('examples-box').hidden = !examples.length;
  await Promise.all(examples.map((x, i) => picture(imgs[i], frameUrl(x.label, x.id))));
}
$('view').onerror = () => setTimeout(() => { $('view').src = '/stream.mjpg?' + Date.now(); }, 2000);
setInterval(poll, 500); poll();

// --- the field loop (--learn) ----------------------------------------------------------------------------------------
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
let classes = {model: [], labelled: {}};
async function refreshClasses() {
  classes = await get('classes');
  canSeeFrames = true;
  const names = [...new Set([...Object.keys(classes.labelled), ...classes.model])];
  $('classes').replaceChildren(...names.map((n) => { const o = el('option'); o.value = n; return o; }));
  $('counts').replaceChildren(...Object.entries(classes.labelled).map(([n, c]) => {
    const tr = el('tr'); tr.append(el('td', n), el('td', f('frames_count', {n: c}))); return tr; }));
}

// Review: frames in groups of near-identical ones; click selects, shift-click a run, a group's button all of it.
const selected = new Set();
let lastClicked = null, lastBulk = null;
const allCards = () => [...document.querySelectorAll('#grid .card')];
function showSelection() {
  for (const c of allCards()) c.classList.toggle('selected', selected.has(c.dataset.id));
  $('selected').textContent = selected.size ? f('selected', {n: selected.size}) : '';
}
function choose(c, event) {
  const cards = allCards().filter((d) => !d.hidden);  // a run of what is shown
  if (event.shiftKey && lastClicked) {
    const [a, b] = [cards.indexOf(lastClicked), cards.indexOf(c)].sort((x, y) => x - y);
    if (a >= 0) { for (const d of cards.slice(a, b + 1)) selected.add(d.dataset.id); showSelection(); return; }
  }
  if (selected.has(c.dataset.id)) selected.delete(c.dataset.id); else selected.add(c.dataset.id);
  lastClicked = c; showSelection();
}
// A frame's card is made once and kept while the frame waits: a refresh moves it, never retypes what the
// operator typed in it or fetches its picture again.
const cardsMade = new Map();
function card(item) {
  if (cardsMade.has(item.id)) return cardsMade.get(item.id);
  const c = el('div', null, 'card'); c.dataset.id = item.id; cardsMade.set(item.id, c);
  const img = el('img'); img.alt = item.label; img.onclick = (e) => choose(c, e);
  const why = T['why_' + item.why] || item.why;
  c.append(img, el('div', (item.top || []).slice(0, 3).map(([l, s]) => l + ' ' + pct(s)).join(' \u00b7 ') + ' (' + why + ')', 'muted'));
  const quick = el('div', null, 'row');
  for (const [l] of (item.top || []).slice(0, 3)) { const b = el('button', l); b.onclick = () => label([item.id], l); quick.append(b); }
  const other = el('div', null, 'row'); const input = el('input'); input.setAttribute('list', 'classes');
  input.placeholder = T.right_class; input.maxLength = 64;
  const ok = el('button', T.label, 'primary'); ok.onclick = () => input.value.trim() && label([item.id], input.value);
  const drop = el('button', T.discard); drop.onclick = () => discard([item.id]);
  other.append(input, ok, drop); c.append(quick, other);
  c.show = () => { if (!c.shown) { c.shown = true; picture(img, '/api/collected/' + encodeURIComponent(item.id) + '.jpg'); } };
  return c;
}
function groupBox(members) {
  const box = el('div', null, 'group'); box.dataset.group = members[0].id;
  const cards = members.map(card);
  const grid = el('div', null, 'grid'); grid.append(...cards);
  const FEW = 4;
  cards.forEach((c, i) => { c.hidden = i >= FEW; if (!c.hidden) c.show(); });
  if (members.length > 1) {
    const head = el('div', null, 'row');
    head.append(el('strong', f('similar', {n: members.length})));
    const pick = el('button', T.select_these);
    pick.onclick = () => { for (const m of members) selected.add(m.id); showSelection(); };
    head.append(pick);
    for (const [l] of (members[0].top || []).slice(0, 3)) {
      const b = el('button', l + ' \u00d7' + members.length); b.onclick = () => label(members.map((m) => m.id), l); head.append(b);
    }
    if (members.length > FEW) {
      const more = el('button', f('show_all', {n: members.length}));
      more.onclick = () => { for (const c of cards) { c.hidden = false; c.show(); } more.remove(); };
      head.append(more);
    }
    box.append(head);
  }
  box.append(grid); return box;
}
function forget(ids) {  // frames labelled or discarded leave the page at once, before the list is asked again
  for (const id of ids) { selected.delete(id); const c = cardsMade.get(id); if (c) c.remove(); cardsMade.delete(id); }
}
async function label(ids, name) {
  const out = await act('label', ids.length === 1 ? {id: ids[0], label: name} : {ids, label: name});
  const done = out.ids || [out.id];
  forget(done);
  lastBulk = done.length > 1 ? done : null;
  $('bulk-undo').hidden = !lastBulk;
  // The list first, then the word: what the message says is done is what the page shows.
  await refreshReview(true).catch(() => {}); refreshClasses();
  say(done.length > 1 ? f('msg_labelled_many', {n: done.length, label: out.label}) : f('msg_labelled', {label: out.label}), true);
}
async function discard(ids) {
  const out = await act('discard', ids.length === 1 ? {id: ids[0]} : {ids});
  const done = out.ids || [out.id];
  forget(done);
  await refreshReview(true).catch(() => {});
  say(done.length > 1 ? f('msg_discarded_many', {n: done.length}) : T.msg_discarded, true);
}
let reviewKey = '';
async function refreshReview(force) {
  const got = await get('collected');
  $('waiting').textContent = '(' + got.items.length + ')';
  $('paused').textContent = got.paused ? f('paused', {why: got.paused}) : '';
  const key = got.items.map((i) => i.id + ':' + i.group).join(',');
  if (key === reviewKey && !force) return;
  // Not while the operator types in a card: the new frames can wait for the next refresh.
  if (!force && $('grid').contains(document.activeElement) && document.activeElement.tagName === 'INPUT') return;
  reviewKey = key;
  const ids = new Set(got.items.map((i) => i.id));
  for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
  for (const id of [...cardsMade.keys()]) if (!ids.has(id)) cardsMade.delete(id);
  const groups = new Map();
  for (const item of got.items) { if (!groups.has(item.group)) groups.set(item.group, []); groups.get(item.group).push(item); }
  $('grid').replaceChildren(...[...groups.values()].map(groupBox));
  showSelection();
}
$('select-all').onclick = () => { for (const c of allCards()) selected.add(c.dataset.id); showSelection(); };
$('select-none').onclick = () => { selected.clear(); showSelection(); };
$('bulk-apply').onclick = () => {
  const name = $('bulk-label').value.trim();
  if (!selected.size) { say(T.msg_select_first, false); return; }
  if (!name) { say(T.msg_type_class, false); return; }
  label([...selected], name);
};
$('bulk-discard').onclick = () => { if (!selected.size) { say(T.msg_select_first, false); return; } discard([...selected]); };
$('bulk-undo').onclick = async () => {
  if (!lastBulk) return;
  const out = await act('unlabel', {ids: lastBulk});
  lastBulk = null; $('bulk-undo').hidden = true;
  await refreshReview(true).catch(() => {}); refreshClasses();
  say(f('msg_sent_back_many', {n: out.ids.length}), true);
};

function labelledCard(item) {
  const c = el('div', null, 'card'); c.dataset.id = item.id;
  const img = el('img'); img.alt = item.label;
  picture(img, frameUrl(item.label, item.id));
  const row = el('div', null, 'row'); const input = el('input'); input.setAttribute('list', 'classes');
  input.value = item.label; input.maxLength = 64;
  const move = el('button', T.move, 'primary');
  move.onclick = async () => { const name = input.value.trim(); if (!name || name === item.label) return;
    const out = await act('relabel', {id: item.id, label: name}); say(f('msg_moved', {label: out.label}), true);
    refreshLabelled(); refreshClasses(); };
  const back = el('button', T.unlabel);
  back.onclick = async () => { await act('unlabel', {id: item.id}); c.remove(); say(T.msg_back, true);
    refreshReview(true); refreshClasses(); };
  row.append(input, move, back);
  c.append(img, el('div', item.label, 'muted'), row); return c;
}
async function refreshLabelled() {
  const got = await get('labelled');
  $('labelled-total').textContent = got.total > got.items.length ? f('newest_of', {n: got.items.length, total: got.total}) : '';
  $('labelled-grid').replaceChildren(...got.items.map(labelledCard));
}
function showJob(j) {
  const box = $('job'); box.replaceChildren();
  if (j.state === 'idle') return;
  const words = {learning: T.job_learning, swapping: T.job_swapping, applied: f('job_applied', {version: j.version}),
    rejected: f('job_rejected', {error: j.error}), failed: f('job_failed', {error: j.error})};
  box.append(el('p', words[j.state] || j.state,
    j.state === 'applied' ? 'good' : (j.state === 'failed' || j.state === 'rejected') ? 'bad' : 'muted'));
  if (j.val) {
    const t = el('table'); const head = el('tr'); head.append(el('th', T.held_out), el('th', T.new_model), el('th', T.running_model));
    const row = el('tr'); row.append(el('td', String(j.val.num_images)), el('td', pct(j.val.accuracy)), el('td', pct(j.val_before && j.val_before.accuracy)));
    t.append(head, row); box.append(t);
  } else if (j.state === 'applied') { box.append(el('p', T.too_few, 'muted')); }
}
async function followJob() {
  const j = await get('job'); showJob(j);
  $('apply').disabled = j.state === 'learning' || j.state === 'swapping';
  if ($('apply').disabled) { setTimeout(followJob, 1000); return; }
  if ($('msg').textContent === T.msg_learning) say('');
  refreshVersions();
}
async function refreshVersions() {
  const v = await get('versions');
  const rows = v.versions.slice(-5).reverse().map((x) => { const tr = el('tr');
    tr.append(el('td', x.version + (v.history[v.history.length - 1] === x.version ? ' (' + T.running + ')' : '')), el('td', x.created),
      el('td', f('classes_count', {n: x.labels.length})), el('td', f('held_out_accuracy', {accuracy: pct(x.val && x.val.accuracy)}))); return tr; });
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
$('savetoken').onclick = () => { token = $('token').value.trim(); localStorage.setItem('edgecls-token', token); $('tokenbox').hidden = true;
  say(T.msg_token_saved); refreshClasses(); refreshReview(true); refreshVersions(); };
$('capture').onclick = async () => {
  const name = $('teach-label').value.trim(); if (!name) { say(T.msg_type_class, false); return; }
  $('capture').disabled = true; say(f('msg_capturing', {label: name}));
  try { const out = await act('teach', {label: name, frames: +$('teach-frames').value, seconds: +$('teach-seconds').value});
    say(out.problem ? out.problem : f('msg_captured', {n: out.saved, label: out.label}), !out.problem); refreshClasses();
  } finally { $('capture').disabled = false; }
};
$('apply').onclick = async () => { await act('apply'); say(T.msg_learning, true); followJob(); };
$('undo').onclick = async () => { const out = await act('undo'); say(f('msg_undone', {version: out.running}), true); refreshVersions(); };
(async () => {
  const s = await (await fetch('/status', {cache: 'no-store'})).json().catch(() => ({}));
  if (!s.learn) return;
  $('field').hidden = false; $('tokenbox').hidden = !!token;
  refreshClasses().catch(() => {});
  const operator = () => !document.body.classList.contains('farmer');
  if (operator()) { refreshReview(true); refreshVersions(); }  // the farmer's view loads no frames to review
  setInterval(() => { if (!$('tab-review').hidden && operator()) refreshReview().catch(() => {}); }, 3000);
})();

"""The kiosk page served at ``/`` by :mod:`edge_app.live.web`: one self-contained HTML file.

No CDN, no framework: a farm kiosk is often offline. It polls ``/status`` twice a second and
shows ``/stream.mjpg``.
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
  .bar { height: .8rem; background: #333; border-radius: .4rem; overflow: hidden; }
  .bar div { height: 100%; width: 0; background: #5c5; transition: width .3s; }
  #score { font-size: 1.4rem; }
  .muted { color: #999; font-size: .9rem; }
  ol { padding-left: 1.2rem; margin: 0; max-height: 40vh; overflow: auto; }
  li { margin: .2rem 0; }
  #offline { display: none; color: #f66; font-weight: 700; }
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
<script>
const $ = (id) => document.getElementById(id);
const time = (t) => new Date(t * 1000).toLocaleTimeString();
async function poll() {
  try {
    const s = await (await fetch('/status', {cache: 'no-store'})).json();
    $('offline').style.display = 'none';
    if (s.label !== null) {
      $('label').textContent = s.label;
      $('label').className = s.uncertain ? 'uncertain' : '';
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
</script>
</body></html>
"""

"""The page of `mirasol serve`: one self-contained HTML file (no scripts or fonts from elsewhere, so
it works on a machine without internet) that uses the same JSON API as any client.

Upload a video or pick an example, watch it, ask; the answer comes with the time it took, the
answers with the audio removed and with the video removed, and a timeline under the video: one
frame per chunk (as the model saw it) with a bar of how much the answer rests on that chunk (the
drop in log p(answer) when the decoder may not read it; see evidence.py). Clicking a chunk seeks
the video there. With a token, open the page as /#token=TOKEN (the fragment never reaches a log).

Below, a live stream (where the server's --allow-streams allows its URL): its latest frame, its
chunk timeline growing, and the standing answers and alerts as they come (Server-Sent Events
from /streams/{id}/events; streams.py).
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mirasol: ask a video</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{background:#2d3a4a;color:#fff;padding:10px 20px}header span{opacity:.75;font-size:.9em;margin-left:1em}
main{display:grid;grid-template-columns:minmax(320px,640px) minmax(280px,1fr);gap:20px;padding:20px}
section{background:#fff;border-radius:8px;padding:14px;box-shadow:0 1px 3px #0002}
video{width:100%;max-height:360px;background:#000;border-radius:4px}
label{display:block;margin:.6em 0 .2em;font-weight:600}
input[type=text]{width:100%;box-sizing:border-box;padding:6px}
button{padding:6px 14px;margin-top:8px;cursor:pointer}
#timeline{display:flex;gap:2px;margin-top:10px;align-items:flex-end;overflow-x:auto;min-height:20px}
.chunk{flex:1 0 36px;max-width:90px;text-align:center;font-size:11px;cursor:pointer}
.chunk img{width:100%;image-rendering:pixelated;border-radius:2px;display:block}
.bar{background:#e0873a;width:100%;margin-top:2px}.bar.neg{background:#8aa4c8}
.barbox{height:48px;display:flex;align-items:flex-end}
#answer{font-size:1.4em;font-weight:700;margin:.3em 0}
.muted{color:#666;font-size:.9em}.error{color:#b00020}
table{border-collapse:collapse}td{padding:2px 10px 2px 0}
#stream-section{grid-column:1/-1}
.row{display:flex;gap:16px;flex-wrap:wrap}.row>div{flex:1 1 260px}
#stream-frame{width:192px;height:192px;image-rendering:pixelated;background:#000;border-radius:4px;display:block}
#stream-timeline{display:flex;gap:1px;margin-top:8px;overflow-x:auto;min-height:26px}
.tick{flex:0 0 10px;height:22px;background:#5b8c5a;border-radius:1px}.tick.alert{background:#e0873a}
#stream-answers{max-height:220px;overflow-y:auto;font-size:.92em;padding-left:1.2em}
#stream-answers .when{font-weight:700;color:#a04d00}
</style></head><body>
<header><b>mirasol</b> &middot; ask a video<span id="run"></span></header>
<main>
<section>
  <label for="file">Upload a video</label><input id="file" type="file" accept="video/*">
  <label for="example">or pick an example</label>
  <select id="example"><option value="">(examples)</option></select>
  <button id="use-example">Use example</button>
  <div id="progress" class="muted"></div>
  <video id="player" controls muted playsinline></video>
  <div id="timeline" aria-label="evidence per chunk"></div>
  <div id="timeline-note" class="muted"></div>
</section>
<section>
  <label for="question">Question</label><input id="question" type="text" placeholder="what is cooked?">
  <label for="choices">Choices (optional, comma-separated)</label><input id="choices" type="text" placeholder="red, green, blue">
  <label for="family">Or choose among the training answers of a question family</label><select id="family"><option value="">(free answer)</option></select>
  <button id="ask" disabled>Ask</button>
  <div id="answer"></div><div id="elapsed" class="muted"></div>
  <table id="controls" hidden>
    <tr><td>without audio</td><td id="no-audio"></td></tr>
    <tr><td>without video</td><td id="no-video"></td></tr>
  </table>
  <div id="note" class="muted"></div><div id="error" class="error"></div>
</section>
<section id="stream-section" aria-label="live stream">
  <div class="row">
    <div>
      <label for="stream-url">Follow a live stream</label>
      <input id="stream-url" type="text" placeholder="udp://127.0.0.1:5000">
      <label for="stream-ask">Standing question (optional)</label>
      <input id="stream-ask" type="text" placeholder="what color is the object?">
      <label for="stream-every">every (seconds of video)</label><input id="stream-every" type="text" value="2">
      <label for="stream-when">Alert when (question=answer, optional)</label>
      <input id="stream-when" type="text" placeholder="what color is the object?=red">
      <button id="stream-start">Follow</button> <button id="stream-stop" disabled>Stop</button>
      <button id="stream-ask-now" disabled>Ask the question now</button>
      <div id="stream-note" class="muted"></div>
    </div>
    <div>
      <img id="stream-frame" alt="the stream's latest frame">
      <div id="stream-state" class="muted"></div>
    </div>
    <div><b>Standing answers</b><ol id="stream-answers"></ol></div>
  </div>
  <div id="stream-timeline" aria-label="chunks seen"></div>
  <div id="stream-error" class="error"></div>
</section>
</main>
<script>
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const auth = token ? {"Authorization": "Bearer " + token} : {};
const $ = (id) => document.getElementById(id);
let videoId = null, chunks = [];
async function api(path, options = {}) {
  options.headers = Object.assign({}, options.headers || {}, auth);
  const r = await fetch(path, options);
  let body = null; try { body = await r.json(); } catch (e) {}
  if (!r.ok) throw new Error((body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : r.statusText) + " (" + r.status + ")");
  return body;
}
function showError(e) { $("error").textContent = e.message || String(e); }
async function init() {
  try {
    const info = await api("/info");
    $("run").textContent = `${info.run}: ${info.preset || "custom"}, ${info.combiner} combiner, ${info.chunk_seconds} s chunks`;
    for (const name of info.trained_on.families_with_answers || []) { const o = document.createElement("option"); o.value = o.textContent = name; $("family").appendChild(o); }
    for (const name of info.examples) { const o = document.createElement("option"); o.value = o.textContent = name; $("example").appendChild(o); }
    const allowed = (info.streams && info.streams.allowed) || [];
    $("stream-note").textContent = allowed.length ? `this server may follow: ${allowed.join(", ")}` : "live streams are off on this server (its operator allows them with --allow-streams)";
    $("stream-start").disabled = !allowed.length;
  } catch (e) { showError(e); }
}
async function waitReady(id) {
  for (;;) {
    const s = await api(`/videos/${id}`);
    if (s.state === "ready") return s;
    if (s.state === "failed") throw new Error(s.error);
    $("progress").textContent = `encoding: ${s.chunks_done}${s.chunks_total ? "/" + s.chunks_total : ""} chunks`;
    await new Promise((r) => setTimeout(r, 300));
  }
}
async function submitted(result) {
  videoId = result.id;
  const s = await waitReady(result.id);
  chunks = s.chunks;
  $("progress").textContent = `ready: ${s.name}, ${chunks.length} chunks` + (result.cached ? " (from the cache)" : "");
  drawTimeline(null);
  $("ask").disabled = false;
}
$("file").addEventListener("change", async () => {
  const f = $("file").files[0]; if (!f) return;
  $("error").textContent = ""; $("ask").disabled = true; $("progress").textContent = "uploading...";
  $("player").src = URL.createObjectURL(f);
  const form = new FormData(); form.append("file", f, f.name);
  try { await submitted(await api("/videos", {method: "POST", body: form})); } catch (e) { $("progress").textContent = ""; showError(e); }
});
$("use-example").addEventListener("click", async () => {
  const name = $("example").value; if (!name) return;
  $("error").textContent = ""; $("ask").disabled = true; $("progress").textContent = "encoding...";
  try {
    const r = await fetch(`/examples/${encodeURIComponent(name)}/video`, {headers: auth});
    if (r.ok) $("player").src = URL.createObjectURL(await r.blob());
    await submitted(await api(`/examples/${encodeURIComponent(name)}`, {method: "POST"}));
  } catch (e) { showError(e); }
});
function drawTimeline(evidence) {
  const box = $("timeline"); box.innerHTML = "";
  const segs = evidence ? evidence.segments : chunks.map((c) => ({first_chunk: c.index, start: c.start, drop: null}));
  const top = Math.max(1e-6, ...segs.map((s) => Math.abs(s.drop || 0)));
  for (const s of segs) {
    const d = document.createElement("div"); d.className = "chunk";
    const start = s.start;
    d.title = `${start.toFixed(1)} s` + (s.drop === null || s.drop === undefined ? "" : `: drop ${s.drop.toFixed(3)} nats`);
    d.dataset.drop = s.drop === null || s.drop === undefined ? "" : s.drop;
    const img = document.createElement("img"); img.alt = `chunk ${s.first_chunk}`;
    img.src = `/videos/${videoId}/chunks/${s.first_chunk}.png` + (token ? `?token=${encodeURIComponent(token)}` : "");
    const barbox = document.createElement("div"); barbox.className = "barbox";
    const bar = document.createElement("div"); bar.className = "bar" + ((s.drop || 0) < 0 ? " neg" : "");
    bar.style.height = `${Math.round(48 * Math.abs(s.drop || 0) / top)}px`;
    barbox.appendChild(bar);
    const t = document.createElement("div"); t.textContent = `${start.toFixed(0)}s`;
    d.append(barbox, img, t);
    d.addEventListener("click", () => { $("player").currentTime = start; });
    box.appendChild(d);
  }
  $("timeline-note").textContent = evidence ? `bar: how much the answer's log-probability drops when the model may not read that chunk (blue: rises); the tallest bar is ${top.toFixed(3)} nats` : "";
}
$("ask").addEventListener("click", async () => {
  if (!videoId) return;
  $("error").textContent = ""; $("answer").textContent = "..."; $("ask").disabled = true;
  const choices = $("choices").value.split(",").map((c) => c.trim()).filter((c) => c);
  const started = performance.now();
  try {
    const r = await api(`/videos/${videoId}/ask`, {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({question: $("question").value, choices: choices.length ? choices : null,
                            family: $("family").value || null})});
    $("answer").textContent = r.answer || "(empty answer)";
    $("elapsed").textContent = `answered in ${(r.seconds * 1000).toFixed(0)} ms by the model, ${(performance.now() - started).toFixed(0)} ms in all (with evidence and the two controls)`;
    $("no-audio").textContent = r.without_audio; $("no-video").textContent = r.without_video; $("controls").hidden = false;
    $("note").textContent = r.note || "";
    drawTimeline(r.evidence);
  } catch (e) { $("answer").textContent = ""; showError(e); }
  $("ask").disabled = false;
});
let streamId = null, events = null;
const withToken = (path) => path + (token ? (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : "");
function streamState(s) {
  $("stream-state").textContent = `${s.state}: ${s.video_seconds} s of video, ${s.chunks} chunks, ${s.dropped} dropped` + (s.lag_seconds === null || s.lag_seconds === undefined ? "" : `, ${s.lag_seconds.toFixed(2)} s behind`) + (s.reason ? ` (${s.reason})` : "");
}
$("stream-start").addEventListener("click", async () => {
  $("stream-error").textContent = ""; $("stream-answers").innerHTML = ""; $("stream-timeline").innerHTML = "";
  const ask = $("stream-ask").value.trim(), when = $("stream-when").value.trim(), every = parseFloat($("stream-every").value);
  const body = {url: $("stream-url").value.trim(), ask: ask ? [ask] : [], when: when ? [when] : []};
  if (every > 0) body.every = every;
  try {
    const s = await api("/streams", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    streamId = s.id; streamState(s); $("stream-stop").disabled = false; $("stream-ask-now").disabled = false;
    if (events) events.close();
    events = new EventSource(withToken(`/streams/${s.id}/events`));
    events.addEventListener("chunk", (e) => {
      const c = JSON.parse(e.data);
      $("stream-frame").src = withToken(`/streams/${streamId}/frame.png?chunk=${c.index}`);
      const t = document.createElement("div"); t.className = "tick"; t.dataset.index = c.index;
      t.title = `chunk ${c.index}: ${c.start.toFixed(1)}-${c.end.toFixed(1)} s, ${c.lag_seconds.toFixed(2)} s behind`;
      const line = $("stream-timeline"); line.appendChild(t);
      while (line.children.length > 120) line.removeChild(line.firstChild);
      line.scrollLeft = line.scrollWidth;
      $("stream-state").textContent = `live: ${c.video_seconds} s of video, ${c.chunks} chunks, ${c.dropped} dropped, ${c.lag_seconds.toFixed(2)} s behind`;
    });
    events.addEventListener("answer", (e) => {
      const a = JSON.parse(e.data);
      const li = document.createElement("li");
      if (a.kind === "when") {
        li.className = "when";
        li.textContent = `[${a.video_seconds} s] alert: ${a.question} -> ${a.answer} (chunk ${a.chunk}: ${a.chunk_start}-${a.chunk_end} s)`;
        const tick = $("stream-timeline").querySelector(`[data-index="${a.chunk}"]`); if (tick) tick.classList.add("alert");
      } else li.textContent = `[${a.video_seconds} s] ${a.question} -> ${a.answer || "(empty answer)"}`;
      $("stream-answers").prepend(li);
    });
    events.addEventListener("end", (e) => { streamState(JSON.parse(e.data)); events.close(); $("stream-stop").disabled = true; });
  } catch (e) { $("stream-error").textContent = e.message || String(e); }
});
$("stream-ask-now").addEventListener("click", async () => {
  if (!streamId) return;
  try {
    const a = await api(`/videos/${streamId}/ask`, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({question: $("stream-ask").value})});
    const li = document.createElement("li"); li.textContent = `[${a.video_seconds} s] asked: ${a.question || "(caption)"} -> ${a.answer || "(empty answer)"}`;
    $("stream-answers").prepend(li);
  } catch (e) { $("stream-error").textContent = e.message || String(e); }
});
$("stream-stop").addEventListener("click", async () => {
  if (!streamId) return;
  try { streamState(await api(`/streams/${streamId}`, {method: "DELETE"})); } catch (e) { $("stream-error").textContent = e.message || String(e); }
});
init();
</script></body></html>
"""

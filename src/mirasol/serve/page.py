"""The page of `mirasol serve`: one self-contained HTML file (no scripts or fonts from elsewhere, so
it works on a machine without internet) that uses the same JSON API as any client.

Upload a video or pick an example, watch it, ask; the answer comes with the time it took, the
answers with the audio removed and with the video removed, and a timeline under the video: one
frame per chunk (as the model saw it) with a bar of how much the answer rests on that chunk (the
drop in log p(answer) when the decoder may not read it; see evidence.py). Clicking a chunk seeks
the video there. With a token, open the page as /#token=TOKEN (the fragment never reaches a log).
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
init();
</script></body></html>
"""

// fulcra view: the page. Everything it shows comes from this server (no external asset).
"use strict";
const $ = (id) => document.getElementById(id);
let S = null;            // the last /api/state
let orbit = { azimuth: 0, elevation: 0.3, radius: 4 };
let marks = [];          // training cameras projected in the orbit image
let stroke = null;       // pixels of the scribble being drawn
let strokeNegative = false;  // the stroke marks what is not the object (shift, or the "negative" box)
let stamp = 0;           // cache buster of the images
let viewImage = new Image();

function setBusy(text) {
  document.body.dataset.busy = text ? "1" : "0";
  $("status").textContent = text || (S && S.selected != null ? `selected ${S.selected} Gaussians` : "ready");
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const j = await r.json();
  if (!r.ok) { $("error").textContent = j.error || r.statusText; throw new Error(j.error); }
  $("error").textContent = "";
  return j;
}

function applyState(st) {
  S = st;
  document.body.dataset.selected = st.selected == null ? "" : String(st.selected);
  $("message").textContent = st.message || "";
  $("selected").textContent = st.selected == null ? "" : `${st.selected} / ${st.num_gaussians} Gaussians` + (st.seconds != null ? ` (${st.seconds.toFixed(2)} s)` : "");
  $("export").disabled = !st.selected;
  const t = st.threshold;
  $("threshold").disabled = !t; $("threshold-auto").disabled = !t || t.auto;
  if (t) {
    $("threshold").min = t.min; $("threshold").max = t.max;
    $("threshold").step = (t.max - t.min) / 1000 || 0.001; $("threshold").value = t.value;
    $("threshold-label").textContent = t.auto ? `${t.label} (${t.value.toPrecision(4)})` : t.label;
  } else { $("threshold-label").textContent = ""; }
  $("text-row").style.display = st.text ? "" : "none";
  $("command").textContent = st.query ? `text query: ${st.query}` : st.clicks.length ? `same as: fulcra run segment ... prompt.view=${st.view} 'prompt.clicks=${JSON.stringify(st.clicks)}'` + (st.negative && st.negative.length ? ` 'prompt.negative_clicks=${JSON.stringify(st.negative)}'` : "") + (t && !t.auto ? ` threshold=${t.value}` : "") : "";
  const sel = $("view-select");
  if (!sel.options.length) for (const v of st.views) sel.add(new Option(v.name, v.name));
  sel.value = st.view;
  setBusy("");
}

function drawView() {
  const c = $("view"), g = c.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(viewImage, 0, 0, c.width, c.height);
  if (stroke) {
    const k = c.width / viewImage.naturalWidth;
    g.fillStyle = strokeNegative ? "#f42" : "#3f3";
    for (const [x, y] of stroke) g.fillRect(x * k, y * k, k, k);
  }
}

function loadView() {
  const v = S.views.find((x) => x.name === S.view);
  const c = $("view"), scale = Math.max(1, Math.floor(480 / v.width));
  c.width = v.width * scale; c.height = v.height * scale;
  return new Promise((resolve) => {
    viewImage = new Image();
    viewImage.onload = () => { drawView(); resolve(); };
    viewImage.src = `/api/view/${encodeURIComponent(S.view)}.png?t=${stamp}`;
  });
}

function loadThumbs() {
  const box = $("thumbs");
  if (!box.children.length) {
    for (const v of S.views) {
      const f = document.createElement("figure"), im = document.createElement("img");
      im.alt = v.name; f.dataset.name = v.name; f.append(im, v.name);
      f.onclick = () => chooseView(v.name);
      box.append(f);
    }
  }
  for (const f of box.children) {
    f.classList.toggle("current", f.dataset.name === S.view);
    f.querySelector("img").src = `/api/view/${encodeURIComponent(f.dataset.name)}.png?t=${stamp}`;
  }
}

let orbitBusy = false, orbitAgain = false;
async function loadOrbit() {
  if (orbitBusy) { orbitAgain = true; return; }
  orbitBusy = true;
  try {
    const q = `azimuth=${orbit.azimuth}&elevation=${orbit.elevation}&radius=${orbit.radius}`;
    const o = await api(`/api/orbit?${q}`);
    const im = new Image();
    await new Promise((res) => { im.onload = res; im.src = o.image; });
    const c = $("orbit");
    c.width = o.width; c.height = o.height;
    const g = c.getContext("2d");
    g.drawImage(im, 0, 0);
    marks = o.cameras;
    for (const m of marks) {
      const cur = m.name === S.view;
      g.strokeStyle = g.fillStyle = cur ? "#fc3" : "#6cf";
      g.beginPath(); g.moveTo(m.x, m.y); g.lineTo(m.dx, m.dy); g.stroke();
      g.beginPath(); g.arc(m.x, m.y, cur ? 5 : 3, 0, 2 * Math.PI); g.fill();
    }
    document.body.dataset.orbit = String(Date.now());
  } finally {
    orbitBusy = false;
    if (orbitAgain) { orbitAgain = false; loadOrbit(); }
  }
}

async function refresh() {
  stamp += 1;
  await Promise.all([loadView(), loadOrbit()]);
  loadThumbs();
}

async function chooseView(name) {
  if (S.view === name) return;
  S = { ...S, view: name, clicks: [], negative: [] };  // the server's clicks belong to the view they were made on
  $("view-select").value = name;
  orbit = await api(`/api/orbit-of?view=${encodeURIComponent(name)}`);  // fly to that camera's direction
  await refresh();
}

async function select(clicks, negative) {
  setBusy("segmenting…");
  try {
    applyState(await api("/api/select", { view: S.view, clicks, negative: negative || [] }));
  } catch (e) { setBusy(""); }
  stroke = null;
  await refresh();
}

function pixelOf(e) {
  const c = $("view"), r = c.getBoundingClientRect();
  const v = S.views.find((x) => x.name === S.view);
  const x = Math.floor((e.clientX - r.left) * v.width / r.width), y = Math.floor((e.clientY - r.top) * v.height / r.height);
  return [Math.min(v.width - 1, Math.max(0, x)), Math.min(v.height - 1, Math.max(0, y))];  // the canvas edge
}

function addPixel(p) {
  const last = stroke[stroke.length - 1];
  if (!last) { stroke.push(p); return; }
  const n = Math.max(Math.abs(p[0] - last[0]), Math.abs(p[1] - last[1]));
  for (let i = 1; i <= n; i++) {  // one point per pixel step along the stroke
    const q = [Math.round(last[0] + (p[0] - last[0]) * i / n), Math.round(last[1] + (p[1] - last[1]) * i / n)];
    if (!stroke.some((s) => s[0] === q[0] && s[1] === q[1])) stroke.push(q);
  }
}

function setup() {
  const vc = $("view");
  vc.addEventListener("mousedown", (e) => {
    stroke = []; strokeNegative = e.shiftKey || $("negative-mode").checked; addPixel(pixelOf(e)); drawView();
  });
  vc.addEventListener("mousemove", (e) => { if (stroke) { addPixel(pixelOf(e)); drawView(); } });
  window.addEventListener("mouseup", () => {
    if (!stroke) return;
    const clicks = [...S.clicks], negative = [...(S.negative || [])];  // the stroke adds to this view's clicks
    const into = strokeNegative ? negative : clicks;
    for (const p of stroke) if (!into.some((s) => s[0] === p[0] && s[1] === p[1])) into.push(p);
    select(clicks, negative);
  });
  const oc = $("orbit");
  let drag = null;
  oc.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: false, o: { ...orbit } }; });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
    orbit.azimuth = drag.o.azimuth - dx * 0.01;
    orbit.elevation = Math.max(-1.45, Math.min(1.45, drag.o.elevation + dy * 0.01));
    if (drag.moved) loadOrbit();
  });
  oc.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved) {
      const r = oc.getBoundingClientRect(), x = (e.clientX - r.left) * oc.width / r.width, y = (e.clientY - r.top) * oc.height / r.height;
      const hit = marks.find((m) => (m.x - x) ** 2 + (m.y - y) ** 2 < 64);
      if (hit) chooseView(hit.name);
    }
    drag = null;
  });
  oc.addEventListener("wheel", (e) => { e.preventDefault(); orbit.radius *= e.deltaY > 0 ? 1.1 : 1 / 1.1; loadOrbit(); }, { passive: false });
  $("view-select").onchange = (e) => chooseView(e.target.value);
  $("clear").onclick = async () => { applyState(await api("/api/clear", {})); await refresh(); };
  $("export").onclick = async () => {
    setBusy("exporting…");
    try { const r = await api("/api/export", {}); applyState(r.state); $("message").textContent = r.message; document.body.dataset.exported = "1"; }
    catch (e) { setBusy(""); }
  };
  const find = async () => {
    setBusy("searching…");
    try { applyState(await api("/api/text", { text: $("text").value })); } catch (e) { setBusy(""); }
    await refresh();
  };
  $("text-go").onclick = find;
  $("text").addEventListener("keydown", (e) => { if (e.key === "Enter") find(); });
  $("threshold").onchange = async (e) => { applyState(await api("/api/threshold", { value: parseFloat(e.target.value) })); await refresh(); };
  $("threshold-auto").onclick = async () => { applyState(await api("/api/threshold", { value: null })); await refresh(); };
}

(async function main() {
  setup();
  applyState(await api("/api/state"));
  orbit = S.orbit;
  await refresh();
  document.body.dataset.ready = "1";
})();

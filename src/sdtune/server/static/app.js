// sdtune serve: the page. Plain JS over the REST API (/api) and server-sent events; no build step.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
};
const state = { dataset: null, job: null, run: null, source: null, configs: null, keys: null };

async function api(path, options = {}) {
  const opts = { ...options, headers: { ...(options.headers || {}) } };
  if (opts.json !== undefined) {
    opts.body = JSON.stringify(opts.json);
    opts.headers["Content-Type"] = "application/json";
    delete opts.json;
  }
  const res = await fetch("/api" + path, opts);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!res.ok) {
    const err = new Error((data && data.error) || res.statusText);
    err.fields = data && data.fields;
    throw err;
  }
  return data;
}

// "1 image", "2 images": the page's counts, as sdtune.words.counted says them in the terminal.
const counted = (n, word) => `${n} ${n === 1 ? word : word + "s"}`;

function flash(text, bad = false) {
  const box = $("#flash");
  box.textContent = text;
  box.className = bad ? "bad" : "";
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, bad ? 9000 : 4000);
}

// A side list: one row per item (its name, a note on the right), the open one marked, a line when there is none.
// Rebuilt only when what it shows changed: the list refreshes every few seconds, and a row replaced under the
// pointer would lose the click (Playwright saw "element was detached from the DOM" on every retry).
function sideList(ul, items, { selected, hash, name, note, noteClass = () => "muted", empty }) {
  const shown = JSON.stringify(items.map(it => [selected(it), hash(it), name(it), note(it), noteClass(it)]));
  if (ul.dataset.shown === shown) return;
  ul.dataset.shown = shown;
  ul.replaceChildren(...items.map(it => el("li", { class: selected(it) ? "selected" : "", onclick: () => {
    location.hash = hash(it); } }, el("span", {}, name(it)), el("span", { class: noteClass(it) }, note(it)))));
  if (!items.length) ul.append(el("li", { class: "muted" }, empty));
}

// A detail panel's data, or its error in the panel.
async function load(view, path) {
  try { return await api(path); } catch (e) { view.replaceChildren(el("p", { class: "err" }, e.message)); return null; }
}

const fileUrl = (path, download = false) =>
  "/api/files/" + path.split("/").map(encodeURIComponent).join("/") + (download ? "?download=1" : "");

// ---- tabs ----------------------------------------------------------------------------------------------------
function route() {
  const [tab, arg] = (location.hash.slice(1) || "datasets").split("/");
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== "tab-" + tab;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === tab);
  if (tab !== "jobs" && state.source) { state.source.close(); state.source = null; }
  if (tab === "datasets") loadDatasets(arg ? decodeURIComponent(arg) : state.dataset);
  if (tab === "train") loadTrainForm();
  if (tab === "jobs") loadJobs(arg ? Number(arg) : state.job);
  if (tab === "results") loadRuns(arg ? decodeURIComponent(arg) : state.run);
}
window.addEventListener("hashchange", route);

async function workerStatus() {
  try {
    const s = await api("/status");
    $("#worker").textContent = s.worker_pid ? `worker running (pid ${s.worker_pid})` :
      "no worker: jobs wait (sdtune serve or sdtune jobs work)";
  } catch (e) { $("#worker").textContent = e.message; }
}

// ---- datasets ------------------------------------------------------------------------------------------------
async function loadDatasets(open) {
  const list = await api("/datasets");
  sideList($("#dataset-list"), list, { selected: d => d.path === open, hash: d => "datasets/" + encodeURIComponent(d.path),
    name: d => d.name, note: d => `${d.images} img, ${d.captioned} capt.`, empty: "none yet" });
  if (open) showDataset(open);
}

async function showDataset(path) {
  state.dataset = path;
  const view = $("#dataset-view");
  const d = await load(view, "/dataset?path=" + encodeURIComponent(path));
  if (!d) return;
  const missing = d.records.filter(r => !r.caption).length;
  const thumbs = d.records.map(r => {
    const area = el("textarea", { "aria-label": "caption of " + r.file, placeholder: "no caption" });
    area.value = r.caption;
    area.addEventListener("change", async () => {
      try {
        await api("/dataset/caption", { method: "PUT", json: { path, file: r.file, caption: area.value } });
        flash("caption saved: " + r.file);
      } catch (e) { flash(e.message, true); }
    });
    return el("div", { class: "thumb" },
      el("img", { src: `/api/dataset/thumb?path=${encodeURIComponent(path)}&file=${encodeURIComponent(r.file)}`,
                  alt: r.file, loading: "lazy" }),
      el("div", { class: "name" }, r.file), area);
  });
  const captionText = el("input", { id: "caption-text", value: "a photo of sks person", size: 28 });
  const captioner = el("input", { id: "captioner", placeholder: "or a captioner: florence-2, joycaption, blip",
                                  size: 36 });
  const resolution = el("input", { id: "check-resolution", type: "number", value: 512, min: 8, step: 8, style: "width:6em" });
  const checkOut = el("div", { id: "check-result" });
  view.replaceChildren(
    el("h2", {}, d.name, " ", el("span", { class: "muted" }, `${counted(d.images, "image")}, ${d.captioned} captioned (${d.layout})`)),
    el("div", {},
      el("button", { class: "primary", id: "train-on", onclick: () => {
        state.trainDataset = path; location.hash = "train"; } }, "Train on this dataset →")),
    el("h3", {}, `Caption the ${counted(missing, "image")} without one`),
    el("div", {}, captionText, " ", captioner, " ",
      el("button", { id: "caption-missing", disabled: missing ? null : "disabled", onclick: async () => {
        try {
          const job = await api("/jobs/other", { method: "POST", json: { kind: "caption", dataset: path,
            caption: captioner.value ? null : captionText.value, captioner: captioner.value || null } });
          flash(`caption job ${job.id} queued: the captioned copy appears as ${path.split("/").pop()}-captioned`);
        } catch (e) { flash(e.message, true); }
      } }, "Caption missing")),
    el("h3", {}, "Check"),
    el("div", {}, "resolution ", resolution, " ", el("button", { id: "check-dataset", onclick: async () => {
      checkOut.replaceChildren(el("p", { class: "muted" }, "checking..."));
      try { renderCheck(checkOut, await api(`/dataset/check?path=${encodeURIComponent(path)}&resolution=${resolution.value}`)); }
      catch (e) { checkOut.replaceChildren(el("p", { class: "err" }, e.message)); }
    } }, "Check dataset")),
    checkOut,
    d.problems.length ? el("details", {}, el("summary", {}, counted(d.problems.length, "note")),
      el("pre", {}, d.problems.join("\n"))) : "",
    el("h3", {}, "Images"),
    thumbs.length ? el("div", { class: "thumbs" }, thumbs) : el("p", { class: "muted" }, "no images in this folder"));
}

function renderCheck(box, r) {
  const buckets = Object.entries(r.buckets || {});
  box.replaceChildren(
    el("p", { class: r.ok ? "ok" : "err", id: "check-verdict" },
       r.ok ? `OK: ${counted(r.images, "image")} can train` : `${counted(r.errors.length, "error")}: training would stop`),
    buckets.length ? el("table", {}, el("tr", {}, el("th", {}, `bucket at ${r.bucket_resolution}px`), el("th", {}, "images")),
      buckets.map(([b, n]) => el("tr", {}, el("td", {}, b), el("td", {}, n)))) : "",
    el("pre", {}, r.text));
}

$("#upload-files").addEventListener("change", async (ev) => {
  const files = [...ev.target.files];
  if (!files.length) return;
  const name = $("#upload-name").value.trim();
  const body = new FormData();
  for (const f of files) body.append("files", f, f.name);
  flash(`uploading ${counted(files.length, "file")}...`);
  try {
    const r = await api(`/datasets/${encodeURIComponent(name)}/upload`, { method: "POST", body });
    flash(`${r.stored.length} stored` + (r.refused.length ? `, ${r.refused.length} refused:\n` + r.refused.join("\n") : ""),
          r.refused.length > 0);
    location.hash = "datasets/" + encodeURIComponent(r.dataset);
    loadDatasets(r.dataset);
  } catch (e) { flash(e.message, true); }
  ev.target.value = "";
});
$("#open-folder").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = "datasets/" + encodeURIComponent($("#folder-path").value.trim());
});

// ---- new training --------------------------------------------------------------------------------------------
const LABELS = { "train.max_steps": "Steps", "train.lora.rank": "LoRA rank", "train.learning_rate": "Learning rate",
  "data.resolution": "Resolution (px)", "validation.prompts": "Validation prompts (one per line)",
  "data.instance_prompt": "Instance prompt (DreamBooth)" };

function get(obj, key) { return key.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), obj); }

async function loadTrainForm() {
  if (!state.configs) state.configs = await api("/configs");
  const cfgs = state.configs;
  const ready = $("#f-ready");
  if (!ready.options.length) {
    for (const name of Object.keys(cfgs.ready)) ready.append(el("option", { value: name }, name));
    for (const b of cfgs.bases) $("#f-base").append(el("option", { value: b }, b));
    ready.addEventListener("change", fillKeys);
  }
  const datasets = await api("/datasets");
  const ds = $("#f-dataset");
  const chosen = state.trainDataset || ds.value;
  ds.replaceChildren(...datasets.map(d => el("option", { value: d.path }, `${d.path} (${counted(d.images, "image")})`)));
  if (chosen && ![...ds.options].some(o => o.value === chosen)) ds.append(el("option", { value: chosen }, chosen));
  if (chosen) ds.value = chosen;
  if (chosen && chosen.endsWith("-captioned") && cfgs.ready["toy-t2i-lora"] && !state.readyTouched)
    ready.value = "toy-t2i-lora";
  fillKeys();
}

function fillKeys() {
  const cfg = state.configs.ready[$("#f-ready").value];
  $("#ready-description").textContent = cfg.description;
  const base = get(cfg.config, "model.base");
  if (base && [...$("#f-base").options].some(o => o.value === base)) $("#f-base").value = base;
  const box = $("#form-keys");
  box.replaceChildren(...state.configs.form_keys.map(key => {
    const value = get(cfg.config, key);
    const input = key === "validation.prompts"
      ? el("textarea", { name: key, rows: 2, cols: 48 }) : el("input", { name: key });
    input.value = Array.isArray(value) ? value.join("\n") : (value ?? "");
    return el("label", {}, LABELS[key] || key, input, el("span", { class: "field-err", "data-key": key }));
  }));
}

async function loadAdvanced() {
  if (state.keys) return;
  state.keys = await api("/config-keys");
  const box = $("#advanced-keys");
  box.replaceChildren(...state.keys.map(k => el("div", { class: "adv-row", "data-key": k.key },
    el("code", {}, k.key), el("input", { name: "adv:" + k.key, placeholder: String(k.default).slice(0, 60) }),
    el("small", {}, k.type), el("span", { class: "field-err", "data-key": k.key }))));
}
$("#advanced").addEventListener("toggle", loadAdvanced);
$("#adv-filter").addEventListener("input", (ev) => {
  for (const row of document.querySelectorAll(".adv-row"))
    row.hidden = !row.dataset.key.includes(ev.target.value.trim());
});

function parseValue(key, text) {
  const t = text.trim();
  if (t === "") return null;  // an empty field keeps the ready config's value (an empty list too)
  if (key === "validation.prompts" && !t.startsWith("[")) return t.split("\n").map(s => s.trim()).filter(Boolean);
  if (/^-?\d+$/.test(t)) return Number(t);
  if (/^-?(\d+\.?\d*|\.\d+)(e-?\d+)?$/i.test(t)) return Number(t);
  if (t === "true" || t === "false") return t === "true";
  if (t.startsWith("[") || t.startsWith("{")) { try { return JSON.parse(t); } catch { return t; } }
  return t;
}

function formBody() {
  const values = {};
  for (const input of $("#form-keys").querySelectorAll("[name]")) {
    const v = parseValue(input.name, input.value);
    if (v !== null) values[input.name] = v;
  }
  for (const input of $("#advanced-keys").querySelectorAll("[name]")) {
    const v = parseValue(input.name.slice(4), input.value);
    if (v !== null) values[input.name.slice(4)] = v;
  }
  return { ready: $("#f-ready").value, base: $("#f-base").value, dataset: $("#f-dataset").value || null,
           values, name: $("#f-name").value.trim() || null };
}

function showFieldErrors(fields, message) {
  for (const span of document.querySelectorAll(".field-err")) span.textContent = "";
  $("#form-error").textContent = message || "";
  for (const [key, msg] of Object.entries(fields || {})) {
    const spans = document.querySelectorAll(`.field-err[data-key="${CSS.escape(key)}"]`);
    for (const s of spans) s.textContent = msg;
    if (spans.length && key.startsWith("data.") === false && !state.configs.form_keys.includes(key))
      $("#advanced").open = true;
  }
}

$("#train-form").addEventListener("change", async (ev) => {
  if (ev.target.id === "f-ready") state.readyTouched = true;
  try { await api("/configs/check", { method: "POST", json: formBody() }); showFieldErrors({}, ""); }
  catch (e) { showFieldErrors(e.fields, e.message); }
});
$("#train-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const button = $("#start-training");
  button.disabled = true;
  try {
    const job = await api("/jobs/train", { method: "POST", json: formBody() });
    showFieldErrors({}, "");
    flash(`job ${job.id} queued: ${job.name}`);
    location.hash = "jobs/" + job.id;
  } catch (e) { showFieldErrors(e.fields, e.message); }
  finally { button.disabled = false; }
});

// ---- jobs ----------------------------------------------------------------------------------------------------
function percent(p) { return p && p.max_steps ? Math.min(100, Math.round(100 * p.step / p.max_steps)) : 0; }

async function loadJobs(open, listOnly = false) {
  const jobs = await api("/jobs");
  sideList($("#job-list"), jobs, { selected: j => j.id === open, hash: j => "jobs/" + j.id, name: j => `#${j.id} ${j.name}`,
    note: j => j.state + (j.progress && j.progress.max_steps ? ` ${percent(j.progress)}%` : ""),
    noteClass: j => "state " + j.state, empty: "no jobs yet" });
  if (open && !listOnly) watchJob(open);
  // an ended job's stream is closed; if the job moved on without this page (retried from the CLI, picked up by a
  // worker), follow it again: one new stream per change, never one per refresh
  const shown = jobs.find(j => j.id === state.job);
  if (listOnly && shown && !state.source && shown.state !== state.jobState) watchJob(shown.id);
}

function watchJob(id) {
  if (state.source && state.job === id) return;
  if (state.source) state.source.close();
  state.job = id;
  const source = new EventSource(`/api/jobs/${id}/events`);
  state.source = source;
  source.addEventListener("progress", (ev) => renderJob(JSON.parse(ev.data)));
  // The job ended: the server closes the stream. Refresh the list only: reopening the stream here (as
  // loadJobs(id) did) got the same view and "end" again at once, a reconnect loop that re-rendered the panel
  // many times a second, so its links and buttons were replaced under the pointer.
  source.addEventListener("end", () => { source.close(); if (state.source === source) state.source = null;
    loadJobs(id, true); });
  source.onerror = () => { /* the browser reconnects by itself (a server restart) */ };
}

function lossChart(curve) {
  const W = 600, H = 180, pad = 34;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "loss per step");
  const xs = curve.map(p => p[0]), ys = curve.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys) || 1;
  const sx = x => pad + (W - pad - 8) * (x - x0) / Math.max(1, x1 - x0);
  const sy = y => H - pad + 8 - (H - pad - 4) * (y - y0) / Math.max(1e-12, y1 - y0);
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", curve.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#3b63d1"); line.setAttribute("stroke-width", "1.6");
  svg.append(line);
  for (const [x, y, text, anchor] of [[pad, 12, `loss ${y1.toFixed(4)}`, "start"], [pad, H - pad + 4, y0.toFixed(4), "start"],
                                      [W - 8, H - 6, `step ${x1}`, "end"], [pad, H - 6, `step ${x0}`, "start"]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "11"); t.setAttribute("fill", "#687186");
    t.setAttribute("text-anchor", anchor); t.textContent = text; svg.append(t);
  }
  return svg;
}

function eta(seconds) {
  if (seconds == null) return "";
  return seconds >= 90 ? `ETA ${Math.round(seconds / 60)} min` : `ETA ${Math.round(seconds)} s`;
}

// Replace only the parts of a panel whose data changed: while a job runs its view arrives every second, and a
// button or link rebuilt under the pointer loses the click. parts: [[key, () => element], ...] in order.
function patchParts(view, parts) {
  const old = [...view.children];
  const make = ([key, build]) => { const node = build(); node.dataset.part = key; return node; };
  if (old.length !== parts.length || view.dataset.job !== String(state.job)) {
    view.dataset.job = String(state.job);
    view.replaceChildren(...parts.map(make));
    return;
  }
  parts.forEach((part, i) => { if (old[i].dataset.part !== part[0]) old[i].replaceWith(make(part)); });
}

function renderJob(j) {
  state.jobState = j.state;
  const p = j.progress;
  const act = (action, label) => el("button", { id: `job-${action}`, onclick: async () => {
    try { await api(`/jobs/${j.id}/${action}`, { method: "POST" }); flash(`job ${j.id}: ${label}`); watchJob(j.id);
          loadJobs(j.id); } catch (e) { flash(e.message, true); } } }, label);
  const key = (...data) => JSON.stringify(data);
  const none = () => el("div", { hidden: "" });
  const { samples = [], ...numbers } = p || {};
  patchParts($("#job-view"), [
    [key(j.id, j.name, j.state), () => el("h2", {}, `#${j.id} ${j.name} `,
      el("span", { class: "state " + j.state, id: "job-state" }, j.state))],
    [key(j.kind, j.attempts, j.run, j.message), () => el("div", { class: "kv muted" }, el("span", {}, j.kind),
      el("span", {}, `attempt ${j.attempts}`), j.run ? el("span", {}, j.run) : "",
      j.message ? el("span", {}, j.message) : "")],
    [key(numbers, j.state), () => !p ? none() : el("div", {},
      el("div", { class: "bar" }, el("div", { style: `width:${percent(p)}%` })),
      el("div", { class: "kv" }, el("strong", { id: "job-step" }, `step ${p.step}/${p.max_steps ?? "?"}`),
        p.loss != null ? el("span", {}, `loss ${p.loss.toFixed(4)}`) : "",
        j.state === "running" ? el("span", {}, eta(p.eta_seconds)) : "",
        p.finished ? el("span", { class: "ok" }, "finished") : ""),
      (p.curve || []).length >= 2 ? lossChart(p.curve) : el("p", { class: "muted", id: "job-no-loss" }, "no loss yet"))],
    [key(!!p, samples, j.run), () => !p ? none() : el("div", {}, el("h3", {}, "Validation images"),
      samples.length ? el("div", { class: "samples", id: "job-samples" }, samples.map(s => el("figure", {},
        el("img", { src: fileUrl(`${j.run}/${s}`), alt: s }), el("figcaption", {}, s.split("/")[1] || s))))
        : el("p", { class: "muted", id: "job-no-samples" }, "no samples yet"))],
    [key(!!p && j.state === "finished", j.run), () => p && j.state === "finished" && j.run
      ? el("p", {}, el("a", { href: "#results/" + encodeURIComponent(j.run.split("/").pop()), id: "to-results" },
        "Results and downloads →")) : none()],
    [key(j.id, j.actions), () => el("div", {}, (j.actions || []).map(a => act(a.action, a.label)))],  // by state
    [key(j.log_tail), () => el("div", {}, el("h3", {}, "Log"), j.log_tail ? el("pre", { id: "job-log" }, j.log_tail)
      : el("p", { class: "muted", id: "job-log" }, "no log yet"))],
  ]);
}

// ---- results -------------------------------------------------------------------------------------------------
async function loadRuns(open) {
  const runs = await api("/runs");
  sideList($("#run-list"), runs, { selected: r => r.name === open, hash: r => "results/" + encodeURIComponent(r.name),
    name: r => r.name, note: r => r.kind === "run" ? (r.finished ? "finished" : `step ${r.step}/${r.max_steps ?? "?"}`) : r.kind,
    empty: "no runs yet" });
  $("#run-list").append(el("li", { class: "plain" }, evalForm(runs)));
  if (open) showRun(open);
}

function evalForm(runs) {
  const finished = runs.filter(r => r.kind === "run" && r.finished);
  if (!finished.length) return "";
  const boxes = finished.map(r => el("label", {}, el("input", { type: "checkbox", value: r.path }), " ", r.name));
  const prompts = el("textarea", { rows: 3, cols: 28, placeholder: "prompts, one per line" });
  return el("details", { id: "eval-form" }, el("summary", {}, "Compare runs (eval)"), boxes, prompts,
    el("button", { onclick: async () => {
      const chosen = boxes.map(b => b.querySelector("input")).filter(i => i.checked).map(i => i.value);
      try {
        const job = await api("/jobs/other", { method: "POST", json: { kind: "eval", runs: chosen,
          prompts: prompts.value.split("\n").map(x => x.trim()).filter(Boolean) } });
        flash(`eval job ${job.id} queued: its report appears under Runs when it ends`);
      } catch (e) { flash(e.message, true); }
    } }, "Evaluate"));
}

async function showRun(name) {
  state.run = name;
  const view = $("#run-view");
  const r = await load(view, "/runs/" + encodeURIComponent(name));
  if (!r) return;
  const queue = (kind, label) => el("button", { id: `run-${kind}`, onclick: async () => {
    try { const job = await api("/jobs/other", { method: "POST", json: { kind, run: r.path } });
          flash(`${label}: job ${job.id} queued`); } catch (e) { flash(e.message, true); } } }, label);
  const pickRows = r.pick && typeof r.pick === "object" ? Object.entries(r.pick).filter(([, v]) => typeof v !== "object") : [];
  view.replaceChildren(
    el("h2", {}, r.name),
    r.progress ? el("p", {}, r.progress.finished ? el("span", { class: "ok" }, `finished: ${counted(r.progress.step, "step")}`)
      : `step ${r.progress.step}/${r.progress.max_steps ?? "?"} (not finished)`) : "",
    el("h3", {}, "Downloads"),
    r.downloads.length ? el("div", { class: "downloads", id: "downloads" }, r.downloads.map(d =>
      el("a", { href: fileUrl(d.path, true) }, d.label))) : el("p", { class: "muted" }, "nothing to download yet"),
    el("div", {}, queue("export", "Make a kohya file"), queue("pick", "Pick the best checkpoint")),
    r.reports.length ? el("div", {}, el("h3", {}, "Reports"), r.reports.map(p => el("a", { href: fileUrl(p), target: "_blank" }, p))) : "",
    (r.tables || []).map(t => el("div", {}, el("h3", {}, t.title === "pick" ? "Checkpoints compared (pick)" : "Evaluation"),
      el("table", { class: "results" }, el("tr", {}, t.columns.map(c => el("th", {}, c))),
        t.rows.map(row => el("tr", {}, row.map(c => el("td", {}, c))))))),
    pickRows.length ? el("div", {}, el("h3", {}, "Pick"), el("table", {}, pickRows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))) : "",
    r.card ? el("div", {}, el("h3", {}, "Model card"), el("pre", { class: "card" }, r.card)) : "");
}

workerStatus();
setInterval(workerStatus, 10000);
setInterval(() => {  // the queue's states change without this page: keep the list current
  if (location.hash.startsWith("#jobs") && !document.hidden) loadJobs(state.job, true).catch(() => {});
}, 3000);
route();

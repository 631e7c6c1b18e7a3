// chattune ui: the page's behaviour. Every action is one call to the UI's JSON API (chattune/ui/app.py).
"use strict";
const $ = (id) => document.getElementById(id);
const fieldId = (key) => "f-" + key.replaceAll(".", "_");
let options = null, job = null, chatHistory = [], validateTimer = null;

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
async function errorOf(resp) {
  try {
    const body = await resp.json();
    return typeof body.error === "string" ? body : { error: body.error?.message || body.detail || resp.statusText, fields: {} };
  } catch (e) { return { error: resp.status + " " + resp.statusText, fields: {} }; }
}
async function call(method, path, body) {
  const resp = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  if (!resp.ok) { const err = await errorOf(resp); err.status = resp.status; throw err; }
  return resp.json();
}
function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;  // model output and data are text, never markup
  return node;
}
function status(text) { $("status").textContent = text || ""; }

// ---- tabs
for (const button of document.querySelectorAll("header button[data-tab]")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}
function showTab(name) {
  for (const b of document.querySelectorAll("header button[data-tab]")) b.classList.toggle("on", b.dataset.tab === name);
  for (const s of document.querySelectorAll("section")) s.classList.toggle("on", s.id === "tab-" + name);
  if (name === "runs") loadRuns();
  if (name === "chat") loadChatTargets();
  if (name === "env") loadEnv();
}

// ---- the config form: fields from /api/options, validated by /api/config on every change
async function loadOptions() {
  try { options = await call("GET", "/api/options"); } catch (err) { status(err.error); return; }
  status("");
  const box = $("fields");
  box.replaceChildren();
  for (const f of options.fields) {
    const wrap = el("div", { class: "field" });
    wrap.appendChild(el("label", { for: fieldId(f.key), title: f.help }, f.key));
    let input;
    if (f.choices) {
      input = el("select", { id: fieldId(f.key) });
      for (const c of f.choices) input.appendChild(el("option", { value: c }, c));
    } else {
      input = el("input", { id: fieldId(f.key), placeholder: f.default === null ? "" : String(f.default) });
    }
    if (f.default !== null) input.value = f.key === "model.name" || f.key === "data.path" ? "" : String(f.default);
    wrap.appendChild(input);
    wrap.appendChild(el("div", { class: "err", id: "err-" + f.key }));
    box.appendChild(wrap);
    input.addEventListener("input", scheduleValidate);
    input.addEventListener("change", scheduleValidate);
  }
  suggest("model.name", options.models);
  suggest("data.path", options.data);
  $(fieldId("model.name")).value = options.models[0];
  $(fieldId("data.path")).value = options.data[0];
  $("runs-dir").textContent = "runs in " + options.runs_dir;
  validate();
}
function suggest(key, values) {
  const list = el("datalist", { id: "list-" + key });
  for (const v of values) list.appendChild(el("option", { value: v }));
  document.body.appendChild(list);
  $(fieldId(key)).setAttribute("list", list.id);
}
function formValues() {
  const values = {};
  for (const f of options.fields) {
    const v = $(fieldId(f.key)).value.trim();
    if (v !== "" && v !== String(f.default)) values[f.key] = v;
  }
  return values;
}
function scheduleValidate() { clearTimeout(validateTimer); validateTimer = setTimeout(validate, 250); }
function showFieldErrors(fields) {
  for (const f of options.fields) {
    const lines = fields[f.key] || [];
    $("err-" + f.key).textContent = lines.join("\n");
    $(fieldId(f.key)).classList.toggle("bad", lines.length > 0);
  }
  const known = new Set(options.fields.map((f) => f.key));
  $("general-error").textContent = Object.entries(fields).filter(([k]) => !known.has(k)).map(([, v]) => v.join("\n")).join("\n");
}
async function validate() {
  try {
    const out = await call("POST", "/api/config", { fields: formValues() });
    showFieldErrors({});
    $("yaml").textContent = out.yaml;
    $("command").textContent = out.command;
    $("start").disabled = false;
    return true;
  } catch (err) {
    showFieldErrors(Object.keys(err.fields || {}).length ? err.fields : { "": [err.error] });
    $("start").disabled = true;
    return false;
  }
}
$("copy").addEventListener("click", () => navigator.clipboard?.writeText($("command").textContent));
$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const resp = await fetch("/api/upload?name=" + encodeURIComponent(file.name), { method: "POST", headers: headers(false), body: file });
  if (!resp.ok) { $("upload-note").textContent = (await errorOf(resp)).error; return; }
  const out = await resp.json();
  $(fieldId("data.path")).value = out.path;
  $("upload-note").textContent = `uploaded ${out.bytes} bytes`;
  validate();
});

// ---- data inspect: examples with trained tokens coloured, the length histogram, lint findings
$("inspect").addEventListener("click", async () => {
  const box = $("inspection");
  box.hidden = false;
  box.replaceChildren(el("p", {}, "inspecting..."));
  try { renderInspection(await call("POST", "/api/inspect", { fields: formValues(), examples: 3 })); }
  catch (err) { box.replaceChildren(el("p", { class: "finding error" }, err.error)); }
});
function renderInspection(r) {
  const box = $("inspection");
  box.replaceChildren(el("h3", {}, `data inspect (template ${r.template}, max_length ${r.max_length})`));
  for (const [split, s] of Object.entries(r.stats)) {
    box.appendChild(el("p", { class: "stats" }, `${split}: ${s.examples} examples, ${s.tokens} tokens, ` +
      `${s.trained_tokens} trained; truncated ${s.truncated}, dropped ${s.dropped}`));
  }
  const peak = Math.max(1, ...r.histogram.map((b) => b.count));
  const hist = el("div", { id: "histogram" });
  for (const b of r.histogram) {
    const line = el("div", {}, `${b.lo}-${b.hi} `);
    line.appendChild(el("span", { class: "bar" + (b.over_max_length ? " over" : ""), style: `width:${Math.round(300 * b.count / peak)}px` }));
    line.appendChild(document.createTextNode(` ${b.count}${b.over_max_length ? " > max_length" : ""}`));
    hist.appendChild(line);
  }
  box.appendChild(hist);
  for (const kind of ["errors", "warnings", "skipped"]) {
    for (const f of r[kind]) box.appendChild(el("div", { class: "finding " + kind.replace(/s$/, "") }, `${kind.replace(/s$/, "")}: ${f.where}: ${f.message}`));
  }
  for (const ex of r.examples) {
    const div = el("div", { class: "example" });
    div.appendChild(el("div", { class: "seg-context" }, `${ex.source} (${ex.tokens} tokens, ${ex.trained} trained)`));
    for (const [text, kind] of ex.segments) div.appendChild(el("span", { class: "seg-" + kind }, text));
    box.appendChild(div);
  }
  box.appendChild(el("p", { class: "seg-context" }, "legend: green = trained, grey = context, purple = special token"));
}

// ---- training jobs: start, watch (progress, live loss curve, log), stop, resume
$("start").addEventListener("click", async () => {
  if (!(await validate())) return;
  try { watch(await call("POST", "/api/train", { fields: formValues() })); } catch (err) { showFieldErrors(err.fields || { "": [err.error] }); }
});
$("stop").addEventListener("click", async () => { if (job) watch(await call("POST", `/api/jobs/${job.id}/stop`)); });
$("resume").addEventListener("click", async () => {
  if (job) try { watch(await call("POST", `/api/runs/${encodeURIComponent(job.run)}/resume`)); } catch (err) { status(err.error); }
});
function watch(view) {
  job = view;
  $("job").hidden = false;
  $("job-run").textContent = view.run;
  $("job-state").textContent = view.state;
  $("job").dataset.state = view.state;
  $("progress").max = view.max_steps || 1;
  $("progress").value = view.step;
  $("job-step").textContent = view.max_steps ? `step ${view.step}/${view.max_steps}` : "starting...";
  $("job-log").textContent = view.log;
  $("stop").disabled = !["running"].includes(view.state);
  $("resume").disabled = view.state !== "stopped";
  drawCurve(view.loss, view.eval_loss);
  if (["running", "stopping"].includes(view.state)) {
    setTimeout(async () => { try { watch(await call("GET", `/api/jobs/${view.id}`)); } catch (err) { status(err.error); } }, 1000);
  }
}
function drawCurve(loss, evalLoss) {
  const svg = $("curve");
  svg.replaceChildren();
  const all = loss.concat(evalLoss);
  if (!all.length) return;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1), Math.min(...ys), Math.max(...ys)];
  const px = (x) => 40 + 470 * (x - x0) / (x1 - x0), py = (y) => 170 - 155 * (y - y0) / ((y1 - y0) || 1);
  const line = (points, colour, name) => {
    const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    pl.setAttribute("points", points.map((p) => `${px(p[0])},${py(p[1])}`).join(" "));
    pl.setAttribute("fill", "none"); pl.setAttribute("stroke", colour); pl.setAttribute("stroke-width", "2");
    pl.setAttribute("data-series", name); pl.setAttribute("data-points", String(points.length));
    svg.appendChild(pl);
  };
  line(loss, "#2563eb", "loss");
  if (evalLoss.length) line(evalLoss, "#dc2626", "eval_loss");
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4"); label.setAttribute("y", "14"); label.setAttribute("font-size", "11");
  label.textContent = `loss ${y1.toFixed(3)} .. ${y0.toFixed(3)} (blue: train, red: eval)`;
  svg.appendChild(label);
}

// ---- runs: list, compare, report, export, chat
$("refresh").addEventListener("click", loadRuns);
async function loadRuns() {
  let out;
  try { out = await call("GET", "/api/runs"); } catch (err) { status(err.error); return; }
  const body = $("runs");
  body.replaceChildren();
  for (const r of out.runs) {
    const tr = el("tr", { "data-run": r.name, "data-state": r.state });
    const pick = el("input", { type: "checkbox", class: "pick", value: r.name });
    tr.appendChild(el("td")).appendChild(pick);
    for (const v of [r.name, r.state, r.model, r.data, r.steps, r.final_loss === null || r.final_loss === undefined ? "-" : r.final_loss.toFixed(4), r.best_metric]) {
      tr.appendChild(el("td", {}, String(v)));
    }
    const actions = tr.appendChild(el("td"));
    const open = actions.appendChild(el("button", { class: "open" }, "open"));
    open.addEventListener("click", () => openRun(r));
    const chat = actions.appendChild(el("button", { class: "chat" }, "chat"));
    chat.addEventListener("click", () => { showTab("chat"); loadChatTargets(r.name); });
    body.appendChild(tr);
  }
}
function openRun(r) {
  const box = $("run-detail");
  box.hidden = false;
  box.replaceChildren(el("h3", {}, r.name));
  const img = el("img", { alt: "loss curve", style: "max-width:560px" });
  img.src = `/api/runs/${encodeURIComponent(r.name)}/loss.png?t=${Date.now()}`;  // an <img> sends no key: see authorizedImage
  authorizedImage(img, img.src);
  box.appendChild(img);
  if (r.forgetting && r.forgetting.mean_kl !== undefined) box.appendChild(el("p", {}, `forgetting guard: mean KL ${Number(r.forgetting.mean_kl).toFixed(4)}`));
  const report = box.appendChild(el("button", { class: "report" }, "open report"));
  report.addEventListener("click", () => openAuthorized(`/api/runs/${encodeURIComponent(r.name)}/report`));
  const exp = box.appendChild(el("button", { class: "export" }, "export (merged HF)"));
  const note = box.appendChild(el("span", { class: "export-note" }));
  exp.addEventListener("click", async () => {
    note.textContent = "exporting...";
    try { const out = await call("POST", `/api/runs/${encodeURIComponent(r.name)}/export`, { format: "hf" }); note.textContent = "wrote " + out.out; }
    catch (err) { note.textContent = err.error; }
  });
  if (r.state === "interrupted" || r.state === "stopped") {
    const resume = box.appendChild(el("button", { class: "resume" }, "resume training"));
    resume.addEventListener("click", async () => { showTab("train"); watch(await call("POST", `/api/runs/${encodeURIComponent(r.name)}/resume`)); });
  }
}
async function authorizedImage(img, url) {
  const resp = await fetch(url, { headers: headers(false) });
  if (resp.ok) img.src = URL.createObjectURL(await resp.blob());
}
async function openAuthorized(url) {
  const resp = await fetch(url, { headers: headers(false) });
  const w = window.open("", "_blank");
  if (w) w.document.write(await resp.text());
}
$("compare").addEventListener("click", () => {
  const names = [...document.querySelectorAll(".pick:checked")].map((c) => c.value);
  if (names.length < 2) { status("pick two or more runs to compare"); return; }
  const img = $("compare-img");
  img.hidden = false;
  authorizedImage(img, "/api/compare.png?runs=" + encodeURIComponent(names.join(",")));
});

// ---- chat: any run or the built-in model, streamed
async function loadChatTargets(pick) {
  let runs = [];
  try { runs = (await call("GET", "/api/runs")).runs.filter((r) => r.state === "finished"); } catch (err) { status(err.error); }
  const select = $("chat-target");
  const keep = pick || select.value;
  select.replaceChildren();
  for (const name of [...runs.map((r) => r.name), ...(options ? options.models : [])]) select.appendChild(el("option", { value: name }, name));
  if (keep) select.value = keep;
}
$("chat-target").addEventListener("change", () => { chatHistory = []; $("chat-log").replaceChildren(); });
$("chat-reset").addEventListener("click", () => { chatHistory = []; $("chat-log").replaceChildren(); });
$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || $("chat-send").disabled) return;
  $("chat-input").value = "";
  chatHistory.push({ role: "user", content: text });
  $("chat-log").appendChild(el("div", { class: "msg user" }, text));
  const out = $("chat-log").appendChild(el("div", { class: "msg assistant", "data-chunks": "0" }, ""));
  $("chat-send").disabled = true;
  try {
    const resp = await fetch("/api/chat", { method: "POST", headers: headers(), body: JSON.stringify({
      target: $("chat-target").value, messages: chatHistory, max_new_tokens: Number($("chat-max").value) }) });
    if (!resp.ok) throw new Error((await errorOf(resp)).error);
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out.textContent += decoder.decode(value, { stream: true });
      out.dataset.chunks = String(Number(out.dataset.chunks) + 1);
    }
    chatHistory.push({ role: "assistant", content: out.textContent.trim() });
    out.dataset.done = "1";
  } catch (err) {
    chatHistory.pop();
    out.className = "msg error";
    out.textContent = String(err.message || err);
  } finally { $("chat-send").disabled = false; }
});
$("chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); } });

// ---- environment: the `chattune env` report, to paste into a bug report
async function loadEnv() {
  try { $("env-report").textContent = (await call("GET", "/api/env")).markdown; status(""); } catch (err) { status(err.error); }
}
$("env-copy").addEventListener("click", () => navigator.clipboard?.writeText($("env-report").textContent));
$("key").addEventListener("change", loadOptions);
loadOptions();

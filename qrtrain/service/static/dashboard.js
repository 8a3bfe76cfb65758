// qrtrain dashboard: jobs with live progress (Server-Sent Events), loss charts, the registry, reports.
// Plain JavaScript against the JSON API (/docs); charts with Chart.js.
"use strict";

const $ = (selector) => document.querySelector(selector);
const charts = {};   // job id -> {chart, steps: Set}
const streams = {};  // job id -> EventSource
const reports = {};  // report path -> drawn
const CHART_JOBS = 6;

async function api(path, options = {}) {
  const response = await fetch(path, {credentials: "same-origin", ...options});
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}

function cell(row, text, className) {
  const td = row.insertCell();
  if (text instanceof Node) td.append(text); else td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function button(label, onclick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", onclick);
  return b;
}

async function loadOptions() {
  const options = await api("/api/options");
  for (const group of ["model", "model_type", "method", "strategy", "quantization"]) {
    const select = $(`select[name=${group}]`);
    for (const value of options[group]) select.add(new Option(value, value));
  }
  for (const extension of options.extensions) {
    const label = document.createElement("label");
    label.innerHTML = `<span><input type="checkbox" name="extension" value="${extension}"> ${extension}</span>`;
    $("#extensions").append(label);
  }
  for (const tracker of options.tracking) {
    const label = document.createElement("label");
    label.innerHTML = `<span><input type="checkbox" name="tracker" value="${tracker}"${tracker === "tensorboard" ? " checked" : ""}> ${tracker}</span>`;
    $("#tracking").append(label);
  }
  for (const [name, values] of [["optim", options.optim], ["lora_init", options.lora_init]])
    for (const value of values) $(`select[name=${name}]`).add(new Option(value, value));
  $("select[name=model_type]").value = "dialogue";
  $("select[name=method]").value = "sft";
  $("select[name=strategy]").value = "standard";
  $("select[name=quantization]").value = "none";
}

// "training.batch_size=4 lora.r=8" -> {training: {batch_size: 4}, lora: {r: 8}}: the request is typed JSON,
// checked by the service's schema (unknown keys are refused), never Hydra text.
function settings(text) {
  const body = {};
  for (const pair of text.split(/\s+/).filter(Boolean)) {
    const [key, ...rest] = pair.split("=");
    const raw = rest.join("=");
    const value = raw === "true" ? true : raw === "false" ? false : raw === "null" ? null
      : raw !== "" && !Number.isNaN(Number(raw)) ? Number(raw) : raw;
    const path = key.split(".");
    let node = body;
    for (const part of path.slice(0, -1)) node = node[part] ??= {};
    node[path[path.length - 1]] = value;
  }
  return body;
}

async function startJob(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = settings(form.get("extra"));
  for (const group of ["model", "model_type", "strategy", "quantization"]) body[group] = form.get(group);
  const extensions = form.getAll("extension");
  if (extensions.length) body.extensions = Object.fromEntries(extensions.map((name) => [name, {}]));
  if (form.get("data")) (body.data ??= {}).train = form.get("data");
  if (form.get("steps")) (body.training ??= {}).max_steps = Number(form.get("steps"));
  if (form.get("method") !== "sft" || form.get("beta")) {
    body.method = {...(body.method || {}), name: form.get("method")};
    if (form.get("beta")) body.method.beta = Number(form.get("beta"));
  }
  if (form.get("init_adapter")) body.init_adapter = form.get("init_adapter");
  const trackers = form.getAll("tracker");
  if (!(trackers.length === 1 && trackers[0] === "tensorboard")) body.tracking = trackers;  // the default otherwise
  if (form.get("optim") !== "adamw_torch") (body.training ??= {}).optim = form.get("optim");
  if (form.get("lora_init") !== "default") (body.lora ??= {}).init = form.get("lora_init");
  if (form.get("use_dora")) (body.lora ??= {}).use_dora = true;
  if (form.get("use_rslora")) (body.lora ??= {}).use_rslora = true;
  $("#form-error").textContent = "";
  try {
    await api("/api/jobs", {method: "POST", headers: {"content-type": "application/json"},
                            body: JSON.stringify(body)});
    refreshJobs();
  } catch (error) {
    $("#form-error").textContent = error.message;
  }
}

function follow(job) {
  if (streams[job.id] || job.kind !== "train") return;
  const box = document.createElement("div");
  box.className = "chart";
  box.innerHTML = `<canvas id="loss-${job.id}" aria-label="loss of job ${job.id}"></canvas>`;
  $("#charts").prepend(box);
  const chart = new Chart(box.querySelector("canvas"), {
    type: "line",
    data: {datasets: [{label: `job ${job.id}: training loss`, data: [], borderColor: "#2f6fdb", pointRadius: 2}]},
    options: {animation: false, maintainAspectRatio: false, parsing: false,
              scales: {x: {type: "linear", title: {display: true, text: "step"}},
                       y: {title: {display: true, text: "loss"}}}},
  });
  charts[job.id] = {chart, steps: new Set()};
  const source = new EventSource(`/api/jobs/${job.id}/events`);
  streams[job.id] = source;
  source.addEventListener("training", (message) => {
    const event = JSON.parse(message.data);
    const entry = charts[job.id];
    // each loss once, at the step it was logged (events between logs repeat the latest one)
    if (event.loss == null || event.loss_step == null || entry.steps.has(event.loss_step)) return;
    entry.steps.add(event.loss_step);
    entry.chart.data.datasets[0].data.push({x: event.loss_step, y: event.loss});
    entry.chart.update();
    box.dataset.points = entry.steps.size;
  });
  source.addEventListener("end", () => { source.close(); refreshJobs(); refreshRegistry(); refreshHealth(); });
}

async function refreshJobs() {
  const jobs = await api("/api/jobs");
  const body = $("#jobs tbody");
  body.replaceChildren();
  for (const job of [...jobs].reverse()) {
    const row = body.insertRow();
    row.id = `job-${job.id}`;
    row.dataset.status = job.status;
    const p = job.progress || {};
    cell(row, `#${job.id}`);
    cell(row, job.kind);
    cell(row, job.status + (job.phase && job.status === "running" ? ` (${job.phase})` : ""), `status-${job.status}`);
    if (job.kind === "train") {
      const bar = document.createElement("progress");
      bar.max = p.total_steps || 1;
      bar.value = job.status === "done" ? bar.max : (p.step || 0);
      cell(row, bar).append(` ${p.step ?? 0}/${p.total_steps ?? "?"}`);
    } else {
      cell(row, job.phase || "");
    }
    cell(row, p.loss != null ? p.loss.toFixed(4) : "");
    cell(row, p.eta_s != null && job.status === "running" ? `${Math.round(p.eta_s)} s` : "");
    cell(row, job.version || job.report || job.error || "");
    const actions = cell(row, "");
    if (job.status === "queued" || job.status === "running")
      actions.append(button("cancel", () => api(`/api/jobs/${job.id}/cancel`, {method: "POST"}).then(refreshJobs)));
    if (["cancelled", "interrupted", "failed"].includes(job.status))
      actions.append(button("resume", () => api(`/api/jobs/${job.id}/resume`, {method: "POST"}).then(refreshJobs)));
  }
  jobs.filter((j) => j.kind === "train").slice(-CHART_JOBS).forEach(follow);
}

async function refreshRegistry() {
  const versions = await api("/api/models");
  const body = $("#registry tbody");
  body.replaceChildren();
  for (const v of versions) {
    const row = body.insertRow();
    row.dataset.version = `${v.artifact}/${v.version}`;
    cell(row, v.artifact); cell(row, v.version); cell(row, v.created); cell(row, v.base_model);
    cell(row, v.method || "sft"); cell(row, v.parent ? `${v.parent.name}/${v.parent.version}` : "");
    cell(row, v.model_type); cell(row, v.quantization);
    cell(row, (v.data || []).map((d) => `${d.role} ${d.source} (${d.rows} rows, ${(d.sha256 || "?").slice(0, 8)})`)
      .join(", "));
    cell(row, v.eval_loss != null ? v.eval_loss.toFixed(4) : "");
    cell(row, `${(v.size_bytes / 2 ** 20).toFixed(1)} MB`);
    cell(row, v.verified ? "verified" : "FAILED", v.verified ? "ok" : "bad");
    const signed = {valid: "valid", invalid: "INVALID", present: "signed (unchecked)"}[v.signature] || "unsigned";
    cell(row, v.signer ? `${signed} · ${v.signer}` : signed, {valid: "ok", invalid: "bad"}[v.signature] || "");
    const actions = cell(row, button("verify", async (e) => {
      const result = await api(`/api/models/${v.artifact}/${v.version}/verify`, {method: "POST"});
      e.target.textContent = result.verified ? "verified ✓"
        : `failed: ${result.problems.map((p) => `${p.file}: ${p.message}`).join("; ")}`;
    }));
    const link = document.createElement("a");
    link.href = `/api/models/${encodeURIComponent(v.artifact)}/${v.version}/provenance`;
    link.textContent = "provenance";
    actions.append(" ", link);
  }
  for (const select of document.querySelectorAll("#diff-form select")) {
    const chosen = select.value;
    select.replaceChildren(...versions.map((v) => new Option(`${v.artifact}/${v.version}`, `${v.artifact}/${v.version}`)));
    if (chosen) select.value = chosen;
    else if (select.name === "b" && versions.length > 1) select.selectedIndex = versions.length - 1;
  }
}

// Two versions side by side: what differs in config and data, and every metric both have, with its delta.
async function showDiff(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const result = await api(`/api/models/diff?a=${encodeURIComponent(form.get("a"))}&b=${encodeURIComponent(form.get("b"))}`);
  const body = $("#diff tbody");
  body.replaceChildren();
  const number = (x) => (Number.isInteger(x) ? String(x) : typeof x === "number" ? x.toPrecision(4) : x == null ? "-"
    : typeof x === "string" ? x : JSON.stringify(x));
  for (const key of ["method", "base_model", "verified", "size_bytes"])
    addRow(body, key, number(result.a[key]), number(result.b[key]), "");
  for (const c of result.config) addRow(body, `config ${c.key}`, number(c.a), number(c.b), "");
  for (const d of result.data) addRow(body, `data ${d.source}`, d.a ? `${d.a.rows} rows` : "-", d.b ? `${d.b.rows} rows` : "-", "");
  for (const m of result.metrics) addRow(body, m.metric, number(m.a), number(m.b), number(m.delta));
}

function addRow(body, ...texts) {
  const row = body.insertRow();
  for (const t of texts) cell(row, String(t));
}

// Every report under the root, made by a job here or by `qrtrain evaluate` / `qrtrain compare` on the command line.
async function refreshReports() {
  for (const entry of await api("/api/reports")) {
    if (reports[entry.path] || entry.problem) continue;
    reports[entry.path] = true;
    drawReport(await api(`/api/reports/${entry.path}`), entry.path);
  }
}

function drawReport(report, where) {
  const label = report.target ? report.target.split("/").slice(-2).join("/") : "";
  const systems = report.systems ? report.systems.map((s) => [s.system, s.metrics]) : [[label, report.metrics]];
  const names = Object.keys(systems[0][1]).filter((m) => !/latency|memory|loss|perplexity/.test(m)
      && systems.some(([, ms]) => ms[m] && ms[m].mean != null && ms[m].mean <= 1 && ms[m].mean >= 0));
  const box = document.createElement("div");
  box.className = "chart";
  box.innerHTML = `<canvas aria-label="report ${where}"></canvas>`;
  $("#reports").prepend(box);
  new Chart(box.querySelector("canvas"), {
    type: "bar",
    data: {labels: names, datasets: systems.map(([name, ms]) => ({label: name, data: names.map((m) => ms[m]?.mean)}))},
    options: {animation: false, maintainAspectRatio: false,
              plugins: {title: {display: true, text: `${report.systems ? "comparison" : "evaluation"} on ${report.suite}: ${where}`}}},
  });
}

// Endpoints and their deployments: the live version, a canary beside it (its share of requests), the standby a
// rollback returns to; health from the service's checks, usage from the /v1 route.
async function refreshEndpoints() {
  const {endpoints} = await api("/api/deployments");
  const body = $("#endpoints tbody");
  body.replaceChildren();
  const ms = (s) => (s == null ? "" : `${(s * 1000).toFixed(0)} ms`);
  for (const e of endpoints) {
    for (const role of ["live", "canary", "standby"]) {
      const d = e[role];
      if (!d) continue;
      const row = body.insertRow();
      row.dataset.endpoint = e.endpoint;
      row.dataset.role = role;
      cell(row, e.endpoint); cell(row, role); cell(row, d.version); cell(row, d.engine);
      cell(row, role === "canary" ? `${d.share}%` : role === "live" ? `${e.canary ? 100 - e.canary.share : 100}%` : "0%");
      const healthy = d.alive && !d.health_failures;
      cell(row, healthy ? "healthy" : d.alive ? `${d.health_failures} failed check(s)` : "down", healthy ? "ok" : "bad");
      cell(row, d.usage.requests); cell(row, d.usage.errors, d.usage.errors ? "bad" : "");
      cell(row, ms(d.usage.latency_p50_s)); cell(row, ms(d.usage.latency_p99_s)); cell(row, d.usage.completion_tokens);
    }
  }
  if (!endpoints.length) addRow(body, "no deployments yet", "", "", "", "", "", "", "", "", "", "");
}

async function refreshHealth() {
  const h = await api("/api/health");
  $("#health").textContent = `${h.device} · ${h.running} running, ${h.queued} queued · ${h.disk_free_gib} GiB free · v${h.version}`;
}

$("#job-form").addEventListener("submit", startJob);
$("#diff-form").addEventListener("submit", showDiff);
loadOptions().then(refreshJobs).then(refreshRegistry).then(refreshHealth).then(refreshEndpoints);
setInterval(refreshEndpoints, 3000);
setInterval(refreshJobs, 1000);
setInterval(refreshHealth, 2000);
setInterval(refreshRegistry, 10000);
setInterval(refreshReports, 3000);

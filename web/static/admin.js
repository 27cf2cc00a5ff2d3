// The admin page: plain JavaScript over /admin/api, authenticated by the session cookie.
"use strict";
const csrf = document.querySelector('meta[name="csrf"]').content;
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = Object.assign({ "X-CSRF-Token": csrf }, options.body ? { "Content-Type": "application/json" } : {});
  const response = await fetch("/admin/api" + path, Object.assign({ headers, credentials: "same-origin" }, options));
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text ?? ""; if (cls) td.className = cls; }

function renderStatus(status) {
  const dl = $("index-status");
  dl.innerHTML = "";
  const index = status.index;
  const rows = index ? [
    ["version", index.version], ["items", index.items], ["index", `${index.factory} ${JSON.stringify(index.params)}`],
    ["size", `${(index.size_bytes / 1048576).toFixed(1)} MiB`], ["built at", index.built_at],
    ["recall@10", index.recall_at_10], ["pending in delta", index.delta_items],
  ] : [["version", "none published: press Rebuild"]];
  for (const [k, v] of rows) { const dt = document.createElement("dt"); dt.textContent = k; const dd = document.createElement("dd"); dd.textContent = v; dd.id = "status-" + k.replace(/\W+/g, "-"); dl.append(dt, dd); }
  const models = $("models").tBodies[0]; models.innerHTML = "";
  for (const m of status.models) {
    const r = models.insertRow(); cell(r, m.version); cell(r, m.live ? "live" : ""); cell(r, m.report.source);
    cell(r, m.report.validation_auc); cell(r, m.report.validation_log_loss); cell(r, m.report.examples);
    if (!m.live) {
      const button = document.createElement("button"); button.textContent = "make live"; button.className = "promote";
      button.addEventListener("click", async () => {
        await api("/promote", { method: "POST", body: JSON.stringify({ version: m.version }) }); refresh();
      });
      r.insertCell().append(button);
    }
  }
  const jobs = $("jobs").tBodies[0]; jobs.innerHTML = "";
  for (const j of status.jobs) {
    const r = jobs.insertRow(); cell(r, j.id); cell(r, j.kind); cell(r, j.state, j.state); cell(r, j.phase);
    cell(r, j.percent == null ? "" : j.percent + "%"); cell(r, j.error || (j.result && (j.result.version || "")), j.error ? "failed" : "");
  }
  renderLatency(status.latency_ms);
}

function renderLatency(latency) {
  // From the /metrics histogram: say over which window and whose searches (all workers or one).
  const basis = `${latency.window}, ${latency.source}`;
  $("latency-text").textContent = latency.count
    ? `p50 ${latency.p50} ms · p95 ${latency.p95} ms · p99 ${latency.p99} ms over ${latency.count} search${latency.count === 1 ? "" : "es"} (${basis})`
    : `no searches (${basis})`;
  $("latency-text").title = latency.metric;
  const svg = $("latency-chart"); svg.innerHTML = "";
  const points = latency.per_minute || []; if (!points.length) return;
  const max = Math.max(...points.map((p) => p.p99), 1), w = 420 / Math.max(points.length, 1);
  points.forEach((p, i) => {
    for (const [value, color] of [[p.p99, "#9fb7e0"], [p.p50, "#3a7bd5"]]) {
      const h = (value / max) * 90, rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      rect.setAttribute("x", i * w + 2); rect.setAttribute("width", w - 4); rect.setAttribute("y", 95 - h); rect.setAttribute("height", h); rect.setAttribute("fill", color);
      svg.append(rect);
    }
  });
}

async function refresh() { try { renderStatus(await api("/status")); } catch (e) { console.error(e); } }

async function follow(job, textId, withBar) {
  for (;;) {
    job = await api("/jobs/" + job.id);
    const pct = job.percent ?? 0;
    if (withBar) $("progress-bar").style.width = (job.state === "succeeded" ? 100 : pct) + "%";
    const rate = job.rate ? ` · ${job.rate.toFixed(1)}/s` : "", eta = job.eta_s ? ` · ETA ${Math.ceil(job.eta_s)} s` : "";
    $(textId).textContent = `${job.state} · ${job.phase || "queued"} ${pct}%${rate}${eta}`;
    if (!["queued", "running"].includes(job.state)) break;
    await new Promise((r) => setTimeout(r, 400));
  }
  $(textId).textContent = job.state === "succeeded"
    ? `done: ${job.kind === "build" ? "published " : "model "}${job.result.version}`
    : `${job.state}${job.error ? ": " + job.error : ""}`;
  if (withBar && job.state === "succeeded") $("progress-bar").style.width = "100%";
  refresh();
}

$("rebuild").addEventListener("click", async () => {
  $("progress-bar").style.width = "0%";
  try { follow(await api("/rebuild", { method: "POST" }), "progress-text", true); }
  catch (e) { $("progress-text").textContent = e.message; }
});

$("train").addEventListener("click", async () => {
  const body = JSON.stringify({ source: $("train-source").value, promote: $("train-promote").checked });
  try { follow(await api("/train", { method: "POST", body }), "train-text", false); }
  catch (e) { $("train-text").textContent = e.message; }
});

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const params = new URLSearchParams({ k: $("k").value });
  if ($("q").value) params.set("q", $("q").value);
  if ($("user").value) params.set("user_id", $("user").value);
  const list = $("results"); list.innerHTML = "";
  try {
    const body = await api("/search?" + params);
    $("search-meta").textContent = `${body.mode} · index ${body.index_version} · ${body.took_ms} ms`;
    for (const hit of body.results) {
      const li = document.createElement("li"); li.className = "result";
      li.innerHTML = `<strong></strong> <span class="score"></span>`;
      li.querySelector("strong").textContent = `${hit.title} (${hit.category || "-"})`;
      li.querySelector(".score").textContent = `score ${hit.score.toFixed(3)} · logit ${hit.explanation.logit.toFixed(2)}`;
      const contributions = Object.entries(hit.explanation.contributions).filter(([, v]) => Math.abs(v) > 1e-9);
      const scale = Math.max(...contributions.map(([, v]) => Math.abs(v)), 1e-9);
      for (const [name, value] of contributions.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))) {
        const row = document.createElement("div"); row.className = "contrib";
        row.innerHTML = `<span class="name"></span><span class="track"><span class="${value >= 0 ? "pos" : "neg"}"></span></span><span class="value"></span>`;
        row.querySelector(".name").textContent = name;
        row.querySelector(".track span").style.width = (50 * Math.abs(value) / scale) + "%";
        row.querySelector(".value").textContent = value.toFixed(3);
        li.append(row);
      }
      list.append(li);
    }
  } catch (e) { $("search-meta").textContent = e.message; }
});

refresh();
setInterval(refresh, 5000);

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
        // expected: the live model this page shows; a promote from another tab first is a 409.
        const body = JSON.stringify({ version: m.version, expected: status.live_model });
        try { await api("/promote", { method: "POST", body }); } catch (e) { console.error(e.message); }
        refresh();
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

// One rendering of explained results: the playground, the user inspector, similar items.
function renderHits(list, body, onPick) {
  list.innerHTML = "";
  for (const hit of body.results) {
    const li = document.createElement("li"); li.className = "result"; li.dataset.id = hit.id;
    li.innerHTML = `<strong></strong> <span class="score"></span>`;
    li.querySelector("strong").textContent = `${hit.title} (${hit.category || "-"})`;
    const e = hit.explanation;
    li.querySelector(".score").textContent = `score ${hit.score.toFixed(3)}` + (e ? ` · logit ${e.logit.toFixed(2)}` : "");
    if (e && e.rules) {
      const note = document.createElement("div"); note.className = "rule-note";
      note.textContent = e.rules.map((r) => `rule ${r.rule_id}: ${r.action}`).join(", ");
      li.append(note);
    }
    const contributions = e ? Object.entries(e.contributions).filter(([, v]) => Math.abs(v) > 1e-9) : [];
    const scale = Math.max(...contributions.map(([, v]) => Math.abs(v)), 1e-9);
    for (const [name, value] of contributions.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 6)) {
      const row = document.createElement("div"); row.className = "contrib";
      row.innerHTML = `<span class="name"></span><span class="track"><span class="${value >= 0 ? "pos" : "neg"}"></span></span><span class="value"></span>`;
      row.querySelector(".name").textContent = name;
      row.querySelector(".track span").style.width = (50 * Math.abs(value) / scale) + "%";
      row.querySelector(".value").textContent = value.toFixed(3);
      li.append(row);
    }
    if (onPick) li.addEventListener("click", () => onPick(hit.id));
    list.append(li);
  }
}

function fillList(dl, pairs) {
  dl.innerHTML = "";
  for (const [k, v] of pairs) { const dt = document.createElement("dt"); dt.textContent = k; const dd = document.createElement("dd"); dd.textContent = v; dl.append(dt, dd); }
}

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const params = new URLSearchParams({ k: $("k").value });
  if ($("q").value) params.set("q", $("q").value);
  if ($("user").value) params.set("user_id", $("user").value);
  $("results").innerHTML = "";
  try {
    const body = await api("/search?" + params);
    $("search-meta").textContent = `${body.mode} · index ${body.index_version} · ${body.took_ms} ms`;
    renderHits($("results"), body);
  } catch (e) { $("search-meta").textContent = e.message; }
});

$("user-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = $("user-id").value.trim(); if (!id) return;
  try {
    const body = await api("/users/" + encodeURIComponent(id));
    const p = body.profile;
    $("user-meta").textContent = `${p.event_count} events · last active ${p.last_activity || "-"}`;
    fillList($("user-profile"), [
      ["events", Object.entries(p.counts).map(([k, v]) => `${k} ${v}`).join(", ")],
      ["categories", p.top_categories.map((a) => `${a.name} ${a.affinity.toFixed(2)}`).join(", ")],
      ["tags", p.top_tags.map((a) => `${a.name} ${a.affinity.toFixed(2)}`).join(", ")],
      ["purchased", p.purchased.join(", ") || "-"],
    ]);
    const rows = $("user-events").tBodies[0]; rows.innerHTML = "";
    for (const e of body.events) { const r = rows.insertRow(); cell(r, e.ts); cell(r, e.type); cell(r, e.item_id); cell(r, e.request_id ? e.request_id.slice(0, 8) : ""); }
    renderHits($("user-recs"), body.recommendations);
  } catch (e) { $("user-meta").textContent = e.message; $("user-recs").innerHTML = ""; }
});

async function showItem(id) {
  try {
    const body = await api("/items/" + encodeURIComponent(id));
    const item = body.item;
    $("item-title").textContent = `${item.title} (${item.category || "-"})`;
    fillList($("item-fields"), [["id", item.id], ["tags", item.tags.join(", ")],
      ...Object.entries(item.attributes).map(([k, v]) => [k, String(v)])]);
    $("similar-heading").textContent = "Similar items";
    renderHits($("item-similar"), body.similar, showItem);
  } catch (e) { $("item-title").textContent = e.message; }
}

$("catalog-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const params = new URLSearchParams({ k: "20" });
  if ($("catalog-q").value) params.set("q", $("catalog-q").value);
  if ($("catalog-filters").value.trim()) params.set("filters", $("catalog-filters").value.trim());
  try {
    const body = await api("/search?" + params);
    $("catalog-meta").textContent = `${body.results.length} items · ${body.mode}`;
    renderHits($("catalog-results"), body, showItem);
  } catch (e) { $("catalog-meta").textContent = e.message; $("catalog-results").innerHTML = ""; }
});

async function refreshRules() {
  const rules = (await api("/rules")).rules;  // fetched before clearing: no empty flash
  const rows = $("rules").tBodies[0]; rows.innerHTML = "";
  for (const r of rules) {
    const row = rows.insertRow(); cell(row, r.id); cell(row, r.action);
    cell(row, r.item_id || JSON.stringify(r.where)); cell(row, r.query || "every query");
    cell(row, r.position ?? r.weight ?? ""); cell(row, [r.starts_at, r.ends_at].filter(Boolean).join(" → "));
    const button = document.createElement("button"); button.textContent = "delete"; button.className = "rule-delete";
    button.addEventListener("click", async () => { await api("/rules/" + r.id, { method: "DELETE" }); refreshRules(); });
    row.insertCell().append(button);
  }
}

$("rule-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const rule = { action: $("rule-action").value };
  try {
    if ($("rule-item").value.trim()) rule.item_id = $("rule-item").value.trim();
    if ($("rule-where").value.trim()) rule.where = JSON.parse($("rule-where").value);
    if ($("rule-query").value.trim()) rule.query = $("rule-query").value;
    if ($("rule-position").value) rule.position = Number($("rule-position").value);
    if ($("rule-weight").value) rule.weight = Number($("rule-weight").value);
    await api("/rules", { method: "POST", body: JSON.stringify(rule) });
    $("rule-text").textContent = ""; $("rule-form").reset(); refreshRules();
  } catch (e) { $("rule-text").textContent = e.message; }
});

async function refreshExperiments() {
  const experiments = (await api("/experiments")).experiments;
  const rows = $("experiments").tBodies[0]; rows.innerHTML = "";
  for (const x of experiments) {
    const row = rows.insertRow(); row.dataset.id = x.id;
    for (const v of [x.id, x.candidate, x.live, x.state, x.traffic, x.requests, x.wins, x.losses, x.ties, x.p_value.toPrecision(3)]) cell(row, v);
    const actions = row.insertCell();
    for (const [label, path] of x.state === "running" ? [["stop", "stop"], ["promote", "promote"]] : x.state === "stopped" ? [["promote", "promote"]] : []) {
      const button = document.createElement("button"); button.textContent = label; button.className = "experiment-" + label;
      button.addEventListener("click", async () => { await api(`/experiments/${x.id}/${path}`, { method: "POST" }); refreshExperiments(); refresh(); });
      actions.append(button);
    }
  }
}

$("experiment-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = JSON.stringify({ candidate: $("experiment-candidate").value.trim(), traffic: Number($("experiment-traffic").value) });
  try { await api("/experiments", { method: "POST", body }); $("experiment-text").textContent = ""; refreshExperiments(); }
  catch (e) { $("experiment-text").textContent = e.message; }
});

refreshRules().catch(console.error);
refreshExperiments().catch(console.error);
refresh();
setInterval(refresh, 5000);

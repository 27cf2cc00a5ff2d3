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

// The index card: the ANN index's kind and the parameters it was built and searches with.
function indexRows(index) {
  const backend = (index.vector_store && index.vector_store.backend) || "faiss";
  const factory = index.factory || "";
  const hnsw = factory.match(/^HNSW(\d+)(?:,(\w+))?$/), ivf = factory.match(/^IVF(\d+),(\w+)$/);
  const params = Object.assign({}, index.params || {});
  let kind = factory;
  if (factory === "Flat" || index.is_exact) kind = "Flat (exact search)";
  else if (hnsw) { kind = "HNSW graph" + (hnsw[2] ? `, ${hnsw[2]} vectors` : ""); params.M = params.M ?? Number(hnsw[1]); }
  else if (ivf) { kind = `IVF lists, ${ivf[2]} codes`; params.nlist = params.nlist ?? Number(ivf[1]); }
  if (backend === "milvus") kind = `${index.index_type || factory} · Milvus` + (index.is_exact ? " (exact search)" : "");
  else kind += " · FAISS";
  const order = ["M", "efConstruction", "efSearch", "nlist", "nprobe"];
  const named = Object.keys(params).sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
  const facts = [];
  if (index.metric) facts.push(`metric ${index.metric.replace(/_/g, " ")}`);
  if (index.dim) facts.push(`dim ${index.dim}`);
  facts.push(`items ${index.items}`);
  for (const k of named) facts.push(`${k} ${params[k]}`);
  const store = backend === "milvus" ? `milvus ${index.vector_store.uri || ""} ${index.vector_store.collection || ""}` : "faiss (in process)";
  return [
    ["version", index.version], ["items", index.items], ["index", kind], ["parameters", facts.join(" · ")],
    ["encoder", index.model || "-"], ["vector store", store],
    ["size", `${(index.size_bytes / 1048576).toFixed(1)} MiB`], ["built at", index.built_at],
    ["recall@10", index.recall_at_10], ["pending in delta", index.delta_items],
  ];
}

function renderStatus(status) {
  const dl = $("index-status");
  dl.innerHTML = "";
  const index = status.index;
  const rows = index ? indexRows(index) : [["version", "none published: press Rebuild"]];
  for (const [k, v] of rows) { const dt = document.createElement("dt"); dt.textContent = k; const dd = document.createElement("dd"); dd.textContent = v ?? ""; dd.id = "status-" + k.replace(/\W+/g, "-"); dl.append(dt, dd); }
  const models = $("models").tBodies[0]; models.innerHTML = "";
  for (const m of status.models) {
    const report = m.report || {};
    const r = models.insertRow(); r.dataset.version = m.version; cell(r, m.version); cell(r, m.live ? "live" : "");
    if (report.source === "hand-set prior") {
      // Nothing trained or promoted: the hand-set weights rank, and say so.
      const weights = Object.entries(report.weights || {});
      cell(r, `hand-set prior (${weights.length} feature weights)`, "prior");
      r.cells[2].title = weights.map(([k, v]) => `${k} ${v}`).join("\n");
      cell(r, "-"); cell(r, "-"); cell(r, "-");
    } else {
      cell(r, report.source); cell(r, report.validation_auc); cell(r, report.validation_log_loss); cell(r, report.examples);
    }
    if (!m.live) {
      const button = document.createElement("button"); button.textContent = "make live"; button.className = "promote";
      button.addEventListener("click", async () => {
        // expected: the live model this page shows; a promote from another tab first is a 409.
        const body = JSON.stringify({ version: m.version, expected: status.live_model });
        try { await api("/promote", { method: "POST", body }); } catch (e) { console.error(e.message); }
        refresh();
      });
      r.insertCell().append(button);
    } else r.insertCell();
  }
  const jobs = $("jobs").tBodies[0]; jobs.innerHTML = "";
  for (const j of status.jobs) {
    const r = jobs.insertRow(); cell(r, j.id); cell(r, j.kind); cell(r, j.state, j.state); cell(r, j.phase);
    cell(r, j.percent == null ? "" : j.percent + "%"); cell(r, j.error || (j.result && (j.result.version || "")), j.error ? "failed" : "");
  }
  renderLatency(status.latency_ms);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(parent, name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text != null) el.textContent = text;
  parent.append(el);
  return el;
}
function niceStep(max, ticks) {
  const raw = max / ticks, magnitude = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
}
const hhmm = (t) => { const d = new Date(t * 1000); return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`; };
const SERIES = [["p50", "#1f5fbf"], ["p95", "#e08a00"], ["p99", "#c62828"]];

function renderLatency(latency) {
  // From the /metrics histogram, every worker's searches: p50/p95/p99 per 30 s over the last
  // minutes (lines, left axis) and the searches per second (bars, right axis).
  const chart = $("latency-chart"); chart.replaceChildren();
  const W = 640, H = 270, m = { l: 52, r: 52, t: 50, b: 42 }, pw = W - m.l - m.r, ph = H - m.t - m.b;
  svg(chart, "text", { x: W / 2, y: 18, class: "chart-title", id: "latency-chart-title", "text-anchor": "middle" }, latency.title);
  const points = latency.points || [], t0 = latency.since, t1 = latency.until, step = latency.step_s;
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * pw;
  const seen = points.filter((p) => p.count > 0);
  const top = (() => { const max = Math.max(1, ...seen.map((p) => p.p99 ?? 0)); const s = niceStep(max, 4); return { step: s, top: Math.ceil(max / s) * s }; })();
  const y = (v) => m.t + ph - (v / top.top) * ph;
  const rateMax = Math.max(0.1, ...points.map((p) => p.rate_per_s ?? 0)), rateTop = Math.ceil(rateMax / niceStep(rateMax, 2)) * niceStep(rateMax, 2);
  const rates = svg(chart, "g", { class: "rates" });
  for (const p of seen) {
    const h = ((p.rate_per_s ?? 0) / rateTop) * ph;
    svg(rates, "rect", { class: "rate", x: x(p.t) + 1, width: Math.max(1, x(p.t + step) - x(p.t) - 2), y: m.t + ph - h, height: h });
  }
  const yAxis = svg(chart, "g", { class: "axis axis-y" });
  for (let v = 0; v <= top.top + 1e-9; v += top.step) {
    const tick = svg(yAxis, "g", { class: "tick" });
    svg(tick, "line", { x1: m.l, x2: m.l + pw, y1: y(v), y2: y(v), class: v ? "grid" : "baseline" });
    svg(tick, "text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, +v.toFixed(2));
  }
  svg(chart, "text", { class: "axis-label", transform: `translate(14 ${m.t + ph / 2}) rotate(-90)`, "text-anchor": "middle" }, "latency (ms)");
  const rAxis = svg(chart, "g", { class: "axis axis-rate" });
  for (const v of [0, rateTop / 2, rateTop]) svg(rAxis, "text", { x: m.l + pw + 6, y: m.t + ph - (v / rateTop) * ph + 4 }, +v.toFixed(2));
  svg(chart, "text", { class: "axis-label", transform: `translate(${W - 10} ${m.t + ph / 2}) rotate(90)`, "text-anchor": "middle" }, "searches / s");
  const xAxis = svg(chart, "g", { class: "axis axis-x" });
  const every = (t1 - t0) > 1200 ? 600 : (t1 - t0) > 600 ? 180 : 60;
  for (let t = Math.ceil(t0 / 60) * 60; t <= t1; t += 60) {
    const tick = svg(xAxis, "g", { class: "tick" + (t % every ? " minor" : "") });
    svg(tick, "line", { x1: x(t), x2: x(t), y1: m.t + ph, y2: m.t + ph + (t % every ? 3 : 6) });
    if (t % every === 0) svg(tick, "text", { x: x(t), y: m.t + ph + 18, "text-anchor": "middle" }, hhmm(t));
  }
  svg(chart, "text", { class: "axis-label", x: m.l + pw / 2, y: H - 6, "text-anchor": "middle" }, "time (local, 30 s per point)");
  for (const [name, color] of SERIES) {
    let d = "", pen = "M";
    for (const p of points) {
      if (p[name] == null) { pen = "M"; continue; }
      d += `${pen}${x(p.t + step / 2).toFixed(1)},${y(p[name]).toFixed(1)} `; pen = "L";
    }
    svg(chart, "path", { class: `series series-${name}`, d: d.trim(), stroke: color });
    const dots = svg(chart, "g", { class: `points points-${name}`, fill: color });
    for (const p of seen) {
      const dot = svg(dots, "circle", { cx: x(p.t + step / 2), cy: y(p[name]), r: 2.5 });
      svg(dot, "title", {}, `${hhmm(p.t)}: ${Math.round(p.count)} searches, ${p.rate_per_s ?? 0}/s · p50 ${p.p50} ms · p95 ${p.p95} ms · p99 ${p.p99} ms`);
    }
  }
  const legend = svg(chart, "g", { class: "legend", transform: `translate(${m.l} 38)` });
  [...SERIES, ["searches / s", "#d9e2f0"]].forEach(([name, color], i) => {
    const item = svg(legend, "g", { class: "legend-item", transform: `translate(${i * 92} 0)` });
    svg(item, "rect", { x: 0, y: -9, width: 14, height: 10, fill: color });
    svg(item, "text", { x: 19, y: 0 }, name);
  });
  if (!seen.length) svg(chart, "text", { class: "empty-note", x: m.l + pw / 2, y: m.t + ph / 2, "text-anchor": "middle" }, `No searches in the ${latency.window || "window"}`);
  const text = $("latency-text");
  text.textContent = latency.count
    ? `p50 ${latency.p50} ms · p95 ${latency.p95} ms · p99 ${latency.p99} ms over ${latency.count} search${latency.count === 1 ? "" : "es"} (${latency.rate_per_s ?? 0}/s), ${latency.window}, ${latency.source}`
    : `no searches, ${latency.window}, ${latency.source}`;
  text.title = latency.metric;
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
    ? `done: ${{ build: "published ", train: "model ", "train-encoder": "encoder " }[job.kind] || ""}${job.result.version}`
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

$("tune-encoder").addEventListener("click", async () => {
  const body = JSON.stringify({ epochs: Number($("tune-epochs").value), promote: $("tune-promote").checked });
  try { follow(await api("/train-encoder", { method: "POST", body }), "tune-text", false); }
  catch (e) { $("tune-text").textContent = e.message; }
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

// The catalog browser: a search with facets. Facet values are filters to click: a category
// sets the request's `category`, a tag joins filters.tags.all, a string attribute sets
// filters[name]. Attribute names are learnt from the hits (the API has no list of them).
const attributeKinds = new Map();  // attribute name -> "string" | "number"
const FACET_LIMIT = 20;  // the API's most facets per request
const SHOWN_VALUES = 12;  // per facet, the most frequent

function catalogFilters() {
  const text = $("catalog-filters").value.trim();
  if (!text) return {};
  const parsed = JSON.parse(text);
  if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("filters must be a JSON object");
  return parsed;
}

function setCatalogFilters(filters) {
  $("catalog-filters").value = Object.keys(filters).length ? JSON.stringify(filters) : "";
}

function facetNames() {
  const names = ["category", "tags"];
  for (const kind of ["string", "number"]) for (const [name, k] of [...attributeKinds].sort()) if (k === kind) names.push(name);
  return names.slice(0, FACET_LIMIT);
}

function learnAttributes(results) {
  let learnt = false;
  for (const hit of results) for (const [name, value] of Object.entries(hit.attributes || {})) {
    const kind = typeof value === "string" ? "string" : typeof value === "number" ? "number" : null;
    if (kind && !attributeKinds.has(name)) { attributeKinds.set(name, kind); learnt = true; }
  }
  return learnt;
}

function isActive(field, value) {
  const filters = catalogFilters();
  if (field === "category") return $("catalog-category").value.trim() === value;
  if (field === "tags") return ((filters.tags && filters.tags.all) || []).includes(value);
  return filters[field] === value;
}

function toggleFacet(field, value) {
  const filters = catalogFilters();
  if (field === "category") {
    $("catalog-category").value = $("catalog-category").value.trim() === value ? "" : value;
  } else if (field === "tags") {
    const tags = filters.tags || {};
    const all = tags.all || (tags.any && tags.any.length === 1 ? tags.any : []);
    const next = all.includes(value) ? all.filter((t) => t !== value) : [...all, value];
    if (next.length) filters.tags = { all: next }; else delete filters.tags;
  } else if (filters[field] === value) delete filters[field];
  else filters[field] = value;
  setCatalogFilters(filters);
  browse();
}

function renderActive() {
  const box = $("catalog-active"); box.replaceChildren();
  const chips = [];
  if ($("catalog-category").value.trim()) chips.push(["category", $("catalog-category").value.trim()]);
  let filters = {};
  try { filters = catalogFilters(); } catch { /* shown by the search's error */ }
  for (const [k, v] of Object.entries(filters)) {
    if (k === "tags" && v && Array.isArray(v.all)) v.all.forEach((t) => chips.push(["tags", t]));
    else chips.push([k, typeof v === "string" ? v : JSON.stringify(v)]);
  }
  for (const [field, value] of chips) {
    const chip = document.createElement("button"); chip.type = "button"; chip.className = "chip";
    chip.textContent = `${field}: ${value} ×`; chip.title = "remove this filter";
    chip.addEventListener("click", () => {
      if (field === "category" || field === "tags" || typeof filters[field] === "string") toggleFacet(field, value);
      else { delete filters[field]; setCatalogFilters(filters); browse(); }
    });
    box.append(chip);
  }
}

function renderFacets(body) {
  const panel = $("facets"); panel.replaceChildren();
  const facets = body.facets && typeof body.facets === "object" ? body.facets : null;
  const stats = body.facet_stats && typeof body.facet_stats === "object" ? body.facet_stats : {};
  // An API without facets (or a search that asked for none): no panel.
  const shown = facets && (Object.keys(facets).length || Object.keys(stats).length);
  panel.hidden = !shown; $("catalog-columns").classList.toggle("with-facets", !!shown);
  if (!shown) return;
  for (const [field, counts] of Object.entries(facets)) {
    const values = Object.entries(counts || {}).sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(String(b[0])));
    if (!values.length) continue;
    const group = document.createElement("div"); group.className = "facet"; group.dataset.field = field;
    const h = document.createElement("h4"); h.textContent = field; group.append(h);
    const list = document.createElement("ul");
    for (const [value, n] of values.slice(0, SHOWN_VALUES)) {
      const li = document.createElement("li"), button = document.createElement("button");
      button.type = "button"; button.className = "facet-value" + (isActive(field, value) ? " active" : "");
      button.dataset.field = field; button.dataset.value = value;
      button.append(document.createTextNode(value + " "));
      const count = document.createElement("span"); count.className = "n"; count.textContent = n.toLocaleString("en-US");
      button.append(count);
      button.addEventListener("click", () => toggleFacet(field, value));
      li.append(button); list.append(li);
    }
    if (values.length > SHOWN_VALUES) { const more = document.createElement("li"); more.className = "meta"; more.textContent = `… ${values.length - SHOWN_VALUES} more`; list.append(more); }
    group.append(list); panel.append(group);
  }
  for (const [field, range] of Object.entries(stats)) {
    const p = document.createElement("p"); p.className = "facet-stat"; p.dataset.field = field;
    p.textContent = `${field}: ${range.min} – ${range.max}`;
    panel.append(p);
  }
}

function resultCount(body) {
  // "1,000+ results" when the API only knows a lower bound; the page's length without a total.
  const shown = body.results.length;
  if (typeof body.total !== "number" || (body.total === 0 && shown > 0)) return `${shown} items`;
  const n = body.total.toLocaleString("en-US") + (body.total_relation === "gte" ? "+" : "");
  return `${n} result${body.total === 1 && body.total_relation !== "gte" ? "" : "s"} · showing ${shown}`;
}

function catalogParams() {
  const params = new URLSearchParams({ k: "20" });
  if ($("catalog-q").value.trim()) params.set("q", $("catalog-q").value.trim());
  if ($("catalog-category").value.trim()) params.set("category", $("catalog-category").value.trim());
  const filters = catalogFilters();
  if (Object.keys(filters).length) params.set("filters", JSON.stringify(filters));
  params.set("facets", facetNames().join(","));
  return params;
}

let browsing = 0;  // the latest browse wins: an older answer arriving late is dropped
async function browse(again = true) {
  const mine = ++browsing;
  try {
    const params = catalogParams();
    renderActive();
    const body = await api("/search?" + params);
    if (mine !== browsing) return;
    // New attribute names in the hits: ask again, now with their facets (once per name).
    if (learnAttributes(body.results) && again && body.facets) return browse(false);
    $("catalog-meta").textContent = `${resultCount(body)} · ${body.mode}`;
    $("catalog-meta").dataset.request = "/admin/api/search?" + params;
    renderFacets(body);
    renderHits($("catalog-results"), body, showItem);
  } catch (e) {
    if (mine !== browsing) return;
    $("catalog-meta").textContent = e.message; $("catalog-results").innerHTML = ""; renderFacets({});
  }
}

$("catalog-form").addEventListener("submit", (event) => { event.preventDefault(); browse(); });
$("catalog-clear").addEventListener("click", () => { $("catalog-category").value = ""; setCatalogFilters({}); browse(); });

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

// The fusillade dashboard: a small single-page app over the public /v1 API.
// Every call carries the key the user typed (kept in sessionStorage only), so
// the server applies exactly the API's own authorization; nothing here is
// trusted. Pages poll every 2 s while something is live.
"use strict";

const POLL_MS = 2000;
const PAGE = 20;
const REQ_PAGE = 50;
const STATUSES = ["validating", "in_progress", "finalizing", "completed", "failed", "expired",
  "cancelling", "cancelled"];
const STATES = ["pending", "claimed", "processing", "completed", "failed", "canceled"];
const LIVE = new Set(["validating", "in_progress", "finalizing", "cancelling"]);

let authOn = true;
let me = null;
let timer = null;
// Bumped on every navigation, so a late answer for a page left behind is dropped.
let generation = 0;

const $ = (sel, root = document) => root.querySelector(sel);

/// An element with attributes and children; strings become text nodes.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/// Replaces an element's children, leaving out empty ones (replaceChildren
/// would print them as "null").
function put(el, ...kids) {
  el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false && k !== ""));
}

/// Marks the first time a page shows a kind of data, for load timing
/// (tests/browser/page_timing.py reads the marks).
function mark(name) {
  if (!performance.getEntriesByName(name).length) performance.mark(name);
}

function key() { return sessionStorage.getItem("fusillade-key") || ""; }

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (authOn) headers.Authorization = `Bearer ${key()}`;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const res = await fetch(path, { method: opts.method || "GET", headers, body: opts.body });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!res.ok) {
    if (res.status === 401) { signOut(); }
    throw new ApiError(res.status, body);
  }
  return body;
}

function fmtNum(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
function fmtTime(unix) { return unix ? new Date(unix * 1000).toLocaleString() : "–"; }
function fmtDur(secs) {
  if (secs === null || secs === undefined || !isFinite(secs)) return "–";
  secs = Math.max(0, Math.round(secs));
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${secs % 60}s`;
  const hrs = Math.floor(secs / 3600);
  return `${hrs}h ${Math.floor((secs % 3600) / 60)}m`;
}
function fmtRate(r) { return r > 0 ? `${r < 10 ? r.toFixed(1) : Math.round(r)}/s` : "–"; }

/// Progress of a batch from its counters: shares of completed, failed, the rest.
function progress(b) {
  const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
  const total = c.total || 0;
  const done = c.completed + c.failed;
  const pct = total ? Math.floor((100 * done) / total) : (LIVE.has(b.status) ? 0 : 100);
  const w = (n) => (total ? `${(100 * n) / total}%` : "0%");
  const bar = h("div", { class: "bar", title: `${fmtNum(c.completed)} completed, ${fmtNum(c.failed)} failed, ${fmtNum(total - done)} pending` },
    h("div", { class: "c", style: `width:${w(c.completed)}` }),
    h("div", { class: "f", style: `width:${w(c.failed)}` }));
  return { bar, pct, done, total };
}

/// Average rate since the batch started, and the time left at that rate.
function pace(b) {
  const c = b.request_counts;
  const started = b.in_progress_at || b.created_at;
  const end = LIVE.has(b.status) ? Date.now() / 1000 : (b.completed_at || b.cancelled_at || b.expired_at || b.failed_at || Date.now() / 1000);
  const secs = Math.max(1, end - started);
  const rate = (c.completed + c.failed) / secs;
  const left = c.total - c.completed - c.failed;
  const eta = LIVE.has(b.status) && rate > 0 ? left / rate : null;
  return { rate, eta };
}

function statusTag(s) { return h("span", { class: `status ${s}`, "data-status": s }, s); }

function confirmModal(text) {
  return new Promise((resolve) => {
    const modal = $("#modal");
    $("#modal-text").textContent = text;
    modal.hidden = false;
    const done = (v) => { modal.hidden = true; yes.onclick = no.onclick = null; resolve(v); };
    const yes = $("#modal-yes"), no = $("#modal-no");
    yes.onclick = () => done(true);
    no.onclick = () => done(false);
  });
}

function batchActions(b, after) {
  const out = [];
  if (LIVE.has(b.status) && b.status !== "cancelling") {
    out.push(h("button", { class: "danger", "data-action": "cancel", onclick: async (e) => {
      e.stopPropagation();
      if (!(await confirmModal(`Cancel batch ${b.id}? Finished results are kept.`))) return;
      try { await api(`/v1/batches/${b.id}/cancel`, { method: "POST", json: {} }); } catch (err) { flash(err.message); }
      after();
    } }, "Cancel"));
  }
  if ((b.status === "completed" || b.status === "expired") && b.request_counts.failed > 0) {
    out.push(h("button", { "data-action": "retry", onclick: async (e) => {
      e.stopPropagation();
      if (!(await confirmModal(`Run the ${fmtNum(b.request_counts.failed)} failed requests of ${b.id} again?`))) return;
      try { await api(`/v1/batches/${b.id}/retry`, { method: "POST", json: {} }); } catch (err) { flash(err.message); }
      after();
    } }, "Retry failed"));
  }
  return out;
}

function flash(msg) {
  const el = h("p", { class: "error", id: "flash" }, msg);
  const old = $("#flash");
  if (old) old.replaceWith(el); else $("#main").prepend(el);
}

function poll(fn) {
  clearTimeout(timer);
  const gen = generation;
  const tick = async () => {
    if (gen !== generation) return;
    let again = true;
    try { again = await fn(); } catch (e) { if (gen === generation) flash(e.message); }
    if (gen === generation && again !== false) timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

// ---- Pages ---------------------------------------------------------------

function pageLogin(main) {
  const input = h("input", { type: "password", id: "key", placeholder: "sk-…", autocomplete: "off" });
  const msg = h("p", { class: "error", id: "login-error" });
  const form = h("form", { class: "login panel", onsubmit: async (e) => {
    e.preventDefault();
    sessionStorage.setItem("fusillade-key", input.value.trim());
    try {
      me = await api("/v1/me");
      location.hash = "#/batches";
      route();
    } catch (err) {
      sessionStorage.removeItem("fusillade-key");
      msg.textContent = err.status === 401 ? "That key is not known." : err.message;
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Enter an API key. It stays in this browser tab only."),
  input, msg, h("button", { class: "primary", type: "submit", id: "login" }, "Open dashboard"));
  put(main, form);
  input.focus();
}

function pageBatches(main, params) {
  const status = params.get("status") || "";
  const after = params.get("after") || "";
  const select = h("select", { id: "status-filter", onchange: () => {
    location.hash = select.value ? `#/batches?status=${select.value}` : "#/batches";
  } }, h("option", { value: "" }, "All statuses"), STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const body = h("tbody");
  const pager = h("div", { class: "row" });
  put(main, 
    h("div", { class: "row" }, h("h1", {}, "Batches"), select,
      h("a", { href: "#/upload" }, h("button", { class: "primary", type: "button" }, "New batch"))),
    h("table", { id: "batches" }, h("thead", {}, h("tr", {},
      ["Batch", "Status", "Progress", "Rate", "ETA", "Window / left", "Created", ""].map((t) => h("th", {}, t)))), body),
    pager);
  const load = async () => {
    const q = new URLSearchParams({ limit: PAGE });
    if (status) q.set("status", status);
    if (after) q.set("after", after);
    const list = await api(`/v1/batches?${q}`);
    put(body, ...list.data.map((b) => {
      const p = progress(b);
      const { rate, eta } = pace(b);
      const left = LIVE.has(b.status) ? b.expires_at - Date.now() / 1000 : null;
      return h("tr", { class: "clickable", "data-id": b.id, onclick: () => { location.hash = `#/batch/${b.id}`; } },
        h("td", {}, h("a", { href: `#/batch/${b.id}` }, b.id), b.metadata && b.metadata.name ? h("div", { class: "muted" }, b.metadata.name) : null),
        h("td", {}, statusTag(b.status)),
        h("td", {}, h("div", { class: "row", style: "margin:0" }, p.bar, h("span", { class: "pct" }, `${p.pct}%`)),
          h("div", { class: "muted" }, `${fmtNum(p.done)} / ${fmtNum(p.total)}`)),
        h("td", {}, fmtRate(LIVE.has(b.status) ? rate : 0)),
        h("td", {}, eta === null ? "–" : fmtDur(eta)),
        h("td", {}, b.completion_window, left !== null ? h("div", { class: "muted" }, `${fmtDur(left)} left`) : null),
        h("td", {}, fmtTime(b.created_at)),
        h("td", {}, batchActions(b, load)));
    }));
    if (!list.data.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No batches.")));
    mark("data");
    const base = status ? `#/batches?status=${status}&` : "#/batches?";
    put(pager, 
      after ? h("a", { href: status ? `#/batches?status=${status}` : "#/batches" }, "« Newest") : "",
      list.has_more ? h("a", { href: `${base}after=${list.last_id}`, id: "next-page" }, "Older »") : "");
    return true;
  };
  poll(load);
}

/// Throughput bars: completed (green) above failed (red) per interval.
function chart(stats) {
  const bs = stats.throughput.buckets;
  const W = 600, H = 160, pad = 20;
  const max = Math.max(1, ...bs.map((b) => b.completed + b.failed));
  const bw = (W - pad) / Math.max(1, bs.length);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + pad}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", "throughput");
  const rect = (x, y, w, hh, color, title) => {
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", x); r.setAttribute("y", y); r.setAttribute("width", w); r.setAttribute("height", hh);
    r.setAttribute("fill", color);
    const t = document.createElementNS(ns, "title"); t.textContent = title; r.append(t);
    svg.append(r);
  };
  bs.forEach((b, i) => {
    const x = pad + i * bw;
    const hc = (H * b.completed) / max, hf = (H * b.failed) / max;
    const when = new Date(b.t * 1000).toLocaleTimeString();
    rect(x, H - hc - hf, Math.max(1, bw - 1), hc, "#2e8b57", `${when}: ${Math.round(b.completed)} completed`);
    rect(x, H - hf, Math.max(1, bw - 1), hf, "#c0392b", `${when}: ${Math.round(b.failed)} failed`);
  });
  const label = (x, y, text, anchor) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "11"); t.setAttribute("fill", "#6b7785");
    if (anchor) t.setAttribute("text-anchor", anchor);
    t.textContent = text; svg.append(t);
  };
  label(2, 12, fmtNum(Math.round(max)));
  if (bs.length) {
    label(pad, H + 14, new Date(bs[0].t * 1000).toLocaleTimeString());
    label(W - 2, H + 14, `per ${fmtDur(stats.throughput.interval_secs)}`, "end");
  }
  return svg;
}

function jsonBlock(v) {
  if (!v) return h("p", { class: "muted" }, "None.");
  if (v.json !== null && v.json !== undefined) return h("pre", {}, JSON.stringify(v.json, null, 2));
  if (v.text !== null && v.text !== undefined) return h("pre", {}, v.text + (v.truncated ? "\n… (truncated)" : ""));
  return h("p", { class: "muted" }, `${fmtNum(v.bytes)} bytes that are not text.`);
}

async function showRequest(panel, batchId, rid) {
  put(panel, h("p", { class: "muted" }, "Loading…"));
  const r = await api(`/v1/batches/${batchId}/requests/${rid}`);
  put(panel, 
    h("h2", {}, `Request ${r.custom_id || r.id}`),
    h("p", {}, statusTag(r.state), " ", `attempts ${r.attempt}`,
      r.status_code ? ` · HTTP ${r.status_code}` : "", r.latency_ms !== null ? ` · ${fmtNum(r.latency_ms)} ms` : "",
      ` · model ${r.model}`, r.routed_model ? ` · served by ${r.routed_model}` : ""),
    r.error ? h("div", { id: "request-error", class: "panel" },
      h("b", { class: "error" }, r.error.code), h("p", {}, r.error.message)) : null,
    h("div", { class: "split" },
      h("div", {}, h("h2", {}, "Input body"), jsonBlock(r.input)),
      h("div", {}, h("h2", {}, r.error ? "Upstream answer" : "Response"), jsonBlock(r.response))));
  panel.scrollIntoView({ block: "nearest" });
}

async function download(fileId, name) {
  const res = await fetch(`/v1/files/${fileId}/content`, { headers: authOn ? { Authorization: `Bearer ${key()}` } : {} });
  if (!res.ok) { flash(`Download failed: HTTP ${res.status}`); return; }
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function pageBatch(main, id, params) {
  const state = params.get("state") || "";
  const head = h("div", { id: "batch-head" }, h("h1", {}, `Batch ${id}`));
  const statsBox = h("div", { id: "stats" }, h("p", { class: "muted" }, "Loading statistics…"));
  const stateSel = h("select", { id: "state-filter", onchange: () => {
    location.hash = stateSel.value ? `#/batch/${id}?state=${stateSel.value}` : `#/batch/${id}`;
  } }, h("option", { value: "" }, "All states"), STATES.map((s) => h("option", { value: s, selected: s === state }, s)));
  const reqBody = h("tbody");
  const pager = h("div", { class: "row" });
  const detail = h("div", { id: "request-detail" });
  put(main, head, statsBox,
    h("div", { class: "row" }, h("h2", {}, "Requests"), stateSel),
    h("table", { id: "requests" }, h("thead", {}, h("tr", {},
      ["Line", "custom_id", "State", "Attempts", "Status", "Latency", "Model"].map((t) => h("th", {}, t)))), reqBody),
    pager, detail);

  let cursor = params.get("after") || "";
  let batch = null;
  const loadRequests = async () => {
    const q = new URLSearchParams({ limit: REQ_PAGE });
    if (state) q.set("state", state);
    if (cursor) q.set("after", cursor);
    const list = await api(`/v1/batches/${id}/requests?${q}`);
    put(reqBody, ...list.data.map((r) => h("tr", { class: "clickable", "data-id": r.id, "data-state": r.state,
      onclick: () => showRequest(detail, id, r.id).catch((e) => flash(e.message)) },
    h("td", {}, String(parseInt(r.id.slice(-12), 16))),
    h("td", {}, r.custom_id || "–"), h("td", {}, statusTag(r.state)), h("td", {}, r.attempt),
    h("td", {}, r.status_code || "–"), h("td", {}, r.latency_ms === null ? "–" : `${fmtNum(r.latency_ms)} ms`),
    h("td", {}, r.model))));
    if (!list.data.length) reqBody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No requests.")));
    mark("requests");
    put(pager, list.has_more ? h("button", { id: "next-requests", onclick: () => { cursor = list.last_id; loadRequests(); } }, "Next page »") : "",
      cursor ? h("button", { onclick: () => { cursor = ""; loadRequests(); } }, "« First page") : "");
  };

  const renderHead = (b) => {
    const p = progress(b);
    const { rate, eta } = pace(b);
    const left = LIVE.has(b.status) ? b.expires_at - Date.now() / 1000 : null;
    const links = [];
    if (b.output_file_id && b.request_counts.completed > 0) links.push(h("button", { id: "download-output", onclick: () => download(b.output_file_id, `${b.id}_output.jsonl`) }, "Download output"));
    if (b.error_file_id && (b.request_counts.failed > 0 || b.status === "cancelled")) links.push(h("button", { id: "download-errors", onclick: () => download(b.error_file_id, `${b.id}_errors.jsonl`) }, "Download errors"));
    put(head, 
      h("div", { class: "row" }, h("h1", {}, `Batch ${b.id}`), statusTag(b.status), batchActions(b, refresh), links),
      h("div", { class: "row" }, p.bar, h("span", { class: "pct", id: "progress-pct" }, `${p.pct}%`),
        h("span", { class: "muted" }, `${fmtNum(b.request_counts.completed)} completed · ${fmtNum(b.request_counts.failed)} failed · ${fmtNum(p.total - p.done)} left`),
        b.coalesced_lines ? h("span", { class: "muted", id: "coalesced", title: "completed lines answered without a call of their own" },
          `· ${fmtNum(b.coalesced_lines)} answered by a shared call (${fmtNum(b.coalesced_lines_details.identical)} identical, ${fmtNum(b.coalesced_lines_details.packed)} packed)`) : null),
      h("p", { class: "muted" }, `${b.endpoint} · window ${b.completion_window}`, left !== null ? ` (${fmtDur(left)} left)` : "",
        ` · average ${fmtRate(rate)}`, eta !== null ? ` · ETA ${fmtDur(eta)}` : "", ` · created ${fmtTime(b.created_at)}`),
      b.errors && b.errors.data && b.errors.data.length ? h("div", { class: "panel", id: "batch-errors" }, h("b", {}, "Validation errors"),
        h("ul", {}, b.errors.data.map((e) => h("li", {}, e.line ? `line ${e.line}: ` : "", `${e.code}: ${e.message}`)))) : null);
    mark("head");
  };

  const renderStats = (s) => {
    const c = s.counts;
    const lat = s.latency_ms;
    put(statsBox, 
      h("div", { class: "cards" },
        ["pending", "in_progress", "completed", "failed", "canceled"].map((k) => h("div", { class: "card", "data-count": k }, h("b", {}, fmtNum(c[k])), k.replace("_", " "))),
        h("div", { class: "card" }, h("b", {}, fmtRate(s.rate_per_sec)), "last minute"),
        h("div", { class: "card" }, h("b", {}, s.eta_secs === null ? "–" : fmtDur(s.eta_secs)), "ETA")),
      h("div", { class: "split" },
        h("div", {}, h("h2", {}, "Throughput"), chart(s),
          h("div", { class: "legend muted" }, h("span", {}, h("i", { style: "background:#2e8b57" }), "completed"), h("span", {}, h("i", { style: "background:#c0392b" }), "failed"),
            s.sample.exact ? "" : h("span", {}, `estimated from every ${fmtNum(s.sample.step)}th line`))),
        h("div", {},
          h("h2", {}, "Latency"),
          lat ? h("table", { id: "latency" }, h("tr", {}, ["p50", "p90", "p99", "max"].map((k) => h("th", {}, k))),
            h("tr", {}, ["p50", "p90", "p99", "max"].map((k) => h("td", {}, `${fmtNum(lat[k])} ms`)))) : h("p", { class: "muted" }, "No answers yet."),
          h("h2", {}, "Errors"),
          s.errors.groups.length ? h("table", { id: "error-breakdown" }, h("tr", {}, h("th", {}, "Code"), h("th", {}, "HTTP"), h("th", {}, "Count")),
            s.errors.groups.map((g) => h("tr", {}, h("td", {}, g.code), h("td", {}, g.status_code || "–"), h("td", {}, fmtNum(g.count))))) : h("p", { class: "muted" }, "No errors."))));
    mark("stats");
  };

  let statsGen = 0;
  // Whether statistics asked for after the batch was seen ended have been
  // shown: the statistics of the poll that first sees it ended may have been
  // read before its last results (or failed), so polling goes on until a
  // later read is on the page.
  let settled = false;
  async function refresh() {
    // All at once: the head paints as soon as the batch arrives, without
    // waiting for the statistics (the slowest call) or the requests.
    const mine = ++statsGen;
    const afterEnd = batch !== null && !LIVE.has(batch.status);
    const stats = api(`/v1/batches/${id}/stats`)
      .then((s) => { if (mine === statsGen) { renderStats(s); settled = settled || afterEnd; } })
      .catch((e) => flash(e.message));
    batch = await api(`/v1/batches/${id}`);
    renderHead(batch);
    if (LIVE.has(batch.status)) return true;
    await stats;
    return !settled;
  }
  let live = true;
  poll(async () => {
    const requests = live ? loadRequests() : null;
    live = await refresh();
    if (requests) await requests;
    return live;
  });
}

function pageUpload(main) {
  const fileInput = h("input", { type: "file", id: "file-input", accept: ".jsonl,.json,.txt,application/jsonl" });
  const drop = h("div", { id: "drop" }, h("p", {}, "Drop a JSONL file here, or "), fileInput);
  const status = h("div", { id: "upload-status" });
  const form = h("div", { id: "create-form" });
  put(main, h("h1", {}, "New batch"), drop, status, form);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); });
  fileInput.addEventListener("change", () => { if (fileInput.files[0]) upload(fileInput.files[0]); });

  async function upload(file) {
    put(form);
    put(status, h("p", { class: "muted" }, `Uploading ${file.name} (${fmtNum(file.size)} bytes)…`));
    const data = new FormData();
    data.append("purpose", "batch");
    data.append("file", file, file.name);
    let f, v;
    try {
      // The browser streams the file from disk; it is not read into the page.
      f = await api("/v1/files", { method: "POST", body: data });
      v = await api(`/v1/files/${f.id}/validation`);
    } catch (e) {
      put(status, h("p", { class: "error" }, `Upload failed: ${e.message}`));
      return;
    }
    put(status, 
      h("p", { class: v.error_count ? "error" : "ok", id: "upload-result" },
        `${f.filename}: ${fmtNum(v.valid_lines)} valid lines, ${fmtNum(v.error_count)} refused (${f.id})`),
      v.errors.length ? h("table", { id: "line-errors" }, h("tr", {}, h("th", {}, "Line"), h("th", {}, "Problem"), h("th", {}, "")),
        v.errors.map((e) => h("tr", {}, h("td", {}, e.line === null ? "file" : e.line), h("td", {}, e.code), h("td", {}, e.message)))) : null,
      v.error_count > v.errors.length ? h("p", { class: "muted" }, `…and ${fmtNum(v.error_count - v.errors.length)} more.`) : null);
    const endpoints = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations"];
    const endpoint = h("select", { id: "endpoint" }, endpoints.map((e) => h("option", { value: e, selected: e === (v.endpoints[0] || endpoints[0]) }, e)));
    const windowIn = h("input", { id: "window", value: "24h", size: 6 });
    const msg = h("p", { class: "error" });
    put(form, h("div", { class: "row panel" },
      h("label", {}, "Endpoint ", endpoint), h("label", {}, "Window ", windowIn),
      h("button", { class: "primary", id: "create-batch", onclick: async () => {
        try {
          const b = await api("/v1/batches", { method: "POST", json: { input_file_id: f.id, endpoint: endpoint.value, completion_window: windowIn.value.trim() } });
          location.hash = `#/batch/${b.id}`;
        } catch (e) { msg.textContent = e.message; }
      } }, "Create batch")), msg);
  }
}

function pageModels(main) {
  const body = h("tbody");
  put(main, h("h1", {}, "Models"),
    h("table", { id: "models" }, h("thead", {}, h("tr", {}, ["Model", "In flight / limit", "Slots held", "Pending", "Calls/s (this server)"].map((t) => h("th", {}, t)))), body));
  const last = new Map();
  poll(async () => {
    const list = await api("/v1/admin/models");
    const now = Date.now();
    put(body, ...list.data.map((m) => {
      const prev = last.get(m.model);
      const rate = prev ? (m.calls_total - prev.calls) / ((now - prev.at) / 1000) : null;
      last.set(m.model, { calls: m.calls_total, at: now });
      const pct = m.limit ? Math.min(100, (100 * m.in_flight) / m.limit) : 0;
      return h("tr", { "data-model": m.model }, h("td", {}, m.model),
        h("td", {}, h("div", { class: "row", style: "margin:0" }, h("div", { class: "bar" }, h("div", { class: "r", style: `width:${pct}%` })), `${fmtNum(m.in_flight)} / ${fmtNum(m.limit)}`,
          m.route_limit != null && m.route_limit < m.limit ? h("span", { class: "muted", "data-route-limit": m.route_limit }, ` · limit ${fmtNum(m.route_limit)}/${fmtNum(m.limit)} (this server)`) : null)),
        h("td", {}, fmtNum(m.slots_held)), h("td", {}, fmtNum(m.pending) + (m.pending_capped ? "+" : "")),
        h("td", {}, rate === null ? "…" : `${rate.toFixed(1)}/s`));
    }));
    if (!list.data.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No models yet.")));
    mark("data");
  });
}

function pageWorkers(main) {
  const body = h("tbody");
  put(main, h("h1", {}, "Workers"),
    h("table", { id: "workers" }, h("thead", {}, h("tr", {}, ["Worker", "Host / pid", "Status", "Heartbeat", "In flight", "Done", "Failed", "Started"].map((t) => h("th", {}, t)))), body));
  poll(async () => {
    const list = await api("/v1/admin/workers");
    put(body, ...list.data.map((w) => h("tr", { "data-worker": w.id },
      h("td", {}, w.id.slice(0, 8)), h("td", {}, `${w.hostname} / ${w.pid}`), h("td", {}, statusTag(w.status)),
      h("td", {}, `${(w.heartbeat_age_ms / 1000).toFixed(1)}s ago`), h("td", {}, fmtNum(w.in_flight)),
      h("td", {}, fmtNum(w.requests_done)), h("td", {}, fmtNum(w.requests_failed)), h("td", {}, fmtTime(w.started_at)))));
    if (!list.data.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No workers.")));
    mark("data");
  });
}

// ---- Routing ---------------------------------------------------------------

function signOut() {
  sessionStorage.removeItem("fusillade-key");
  me = null;
  if (authOn && location.hash !== "#/login") { location.hash = "#/login"; }
}

function header(page) {
  $("#who").textContent = me ? (me.owner ? `${me.owner}${me.admin ? " (admin)" : ""}` : (me.admin ? "local (admin)" : "")) : "";
  $("#logout").hidden = !(authOn && me);
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === page || (a.dataset.page === "batches" && page === "batch"));
    if (a.classList.contains("admin")) a.hidden = !(me && me.admin);
  }
}

async function route() {
  generation++;
  clearTimeout(timer);
  const main = $("#main");
  const [path, query] = (location.hash.slice(1) || "/batches").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (authOn && !key()) { parts[0] = "login"; }
  // Who the key is only changes the header: the page's own data is asked
  // for at the same time, not after it.
  if (parts[0] !== "login" && !me) {
    api("/v1/me").then((m) => { me = m; header(parts[0]); }).catch((e) => { if (!authOn) flash(e.message); });
  }
  header(parts[0]);
  document.title = `fusillade · ${parts[0] || "batches"}`;
  switch (parts[0]) {
    case "login": return pageLogin(main);
    case "batch": return pageBatch(main, parts[1], params);
    case "upload": return pageUpload(main);
    case "models": return pageModels(main);
    case "workers": return pageWorkers(main);
    default: return pageBatches(main, params);
  }
}

function start() {
  // The server writes whether keys are asked for into the page itself.
  authOn = document.body.dataset.auth !== "false";
  $("#logout").addEventListener("click", () => { signOut(); route(); });
  window.addEventListener("hashchange", route);
  route();
}

start();

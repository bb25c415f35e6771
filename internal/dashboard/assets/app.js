// Ferry's dashboard: one page, no build step, no third-party code. It reads
// the same API as the CLI with the browser's session (a cookie set by the
// one-time link of `ferry dashboard`), follows the event stream, and acts
// (migrate, drain, undrain) through the API with the user's role.
"use strict";

const HDR = { "X-Ferry-Dashboard": "1" };
let state = { nodes: [], vms: [], migrations: [], links: [] };
let who = { user: "", role: "" };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v; // CSSOM: the page's policy allows no style attributes
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") Object.assign(opts.headers, HDR);
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    showLoggedOut();
    throw new Error("not logged in");
  }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.error && data.error.message) || r.statusText);
  return data;
}

function toast(msg, error) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, error ? 8000 : 4000);
}

function showLoggedOut() {
  document.getElementById("summary").textContent = "not logged in: run `ferry dashboard` and open the link it prints";
}

const mib = (b) => (b / 1048576).toFixed(0) + " MiB";
const secs = (ms) => (ms / 1000).toFixed(1) + " s";
const clock = (t) => new Date(t).toLocaleTimeString();
const canOperate = () => who.role === "operator" || who.role === "admin";

async function act(what, method, path, body) {
  try {
    await api(method, path, body);
    toast(what);
    refresh();
  } catch (e) {
    toast(what + ": " + e.message, true);
  }
}

// confirmThen asks for a second click on the same button within five
// seconds before it acts (a drain moves every guest of a host).
const armed = {};
function confirmThen(button, ask, then) {
  if (armed[button.id] && Date.now() - armed[button.id] < 5000) {
    delete armed[button.id];
    then();
    return;
  }
  armed[button.id] = Date.now();
  button.textContent = ask;
}

function renderHosts() {
  const box = document.getElementById("hosts");
  box.replaceChildren();
  for (const n of state.nodes) {
    const guests = state.vms.filter((v) => v.node === n.name);
    const used = guests.reduce((s, v) => s + v.spec.memory_mib, 0);
    const cls = "host" + (n.state !== "ready" ? " down" : n.maintenance ? " maint" : "");
    const label = n.state !== "ready" ? n.state : n.maintenance ? "maintenance" : (n.degraded && n.degraded.length ? "degraded" : "ready");
    const btn = n.maintenance
      ? el("button", { id: "undrain-" + n.name, onclick: () => act("undrained " + n.name, "POST", `/v1/nodes/${n.name}/undrain`) }, "Undrain")
      : el("button", { id: "drain-" + n.name, onclick: (e) => confirmThen(e.target, "Confirm drain", () => act("draining " + n.name, "POST", `/v1/nodes/${n.name}/drain`)) }, "Drain");
    btn.disabled = !canOperate();
    if (!n.maintenance && armed[btn.id] && Date.now() - armed[btn.id] < 5000) btn.textContent = "Confirm drain";
    const list = el("ul", { class: "guests" });
    for (const v of guests) {
      const phase = (v.status && v.status.phase) || "pending";
      const row = el("li", { id: "guest-" + v.spec.name },
        el("span", { class: "name", text: v.spec.name }),
        el("span", { class: "badge " + phase, text: phase }),
        v.spec.ha ? el("span", { class: "badge", text: "HA" }) : null);
      if (phase === "running") {
        const sel = el("select", { id: "migrate-target-" + v.spec.name, title: "where to move it" }, el("option", { value: "auto", text: "auto" }));
        for (const o of state.nodes) if (o.name !== n.name) sel.append(el("option", { value: o.name, text: o.name }));
        const go = el("button", { id: "migrate-" + v.spec.name, onclick: () => act(`migrating ${v.spec.name}`, "POST", `/v1/vms/${v.spec.name}/migrate`, { to: sel.value }) }, "Migrate");
        go.disabled = !canOperate();
        row.append(sel, go);
      }
      list.append(row);
    }
    const mem = n.memory_mib || 1;
    box.append(el("div", { class: cls, id: "host-" + n.name },
      el("h3", {}, el("span", { text: n.name }), el("span", { class: "state", id: "host-state-" + n.name, text: label }), btn),
      el("div", { class: "bar" }, el("div", { style: `width:${Math.min(100, (100 * used) / mem).toFixed(0)}%` })),
      el("div", { class: "meta", text: `${used} of ${mem} MiB to guests · load ${(n.load1 || 0).toFixed(2)} · ${n.accel || ""} · QEMU ${n.qemu_version || "?"}` }),
      list));
  }
  const running = state.vms.filter((v) => v.status && v.status.phase === "running").length;
  const ready = state.nodes.filter((n) => n.state === "ready").length;
  document.getElementById("summary").textContent = `${ready} of ${state.nodes.length} hosts ready · ${running} of ${state.vms.length} guests running`;
}

function renderMigrations() {
  const body = document.querySelector("#migrations tbody");
  body.replaceChildren();
  for (const m of state.migrations.slice(0, 20)) {
    const p = m.progress || {};
    const done = m.phase === "completed";
    const frac = done ? 1 : p.total_bytes ? Math.min(1, p.transferred_bytes / p.total_bytes) : 0;
    const chosen = m.prediction && (m.prediction.strategies || []).find((s) => s.strategy === m.prediction.chosen);
    const strategy = m.options && m.options.compress ? "compress" : (m.options && m.options.strategy) || "";
    const elapsed = m.finished && !m.finished.startsWith("0001") ? Date.parse(m.finished) - Date.parse(m.started) : Date.now() - Date.parse(m.started);
    body.append(el("tr", { id: "mig-" + m.vm },
      el("td", { text: m.vm }),
      el("td", { text: `${m.source} → ${m.target}` }),
      el("td", { text: strategy }),
      el("td", {}, el("span", { class: "badge " + m.phase, id: "mig-phase-" + m.vm, text: m.phase })),
      el("td", {}, el("div", { class: "bar progress" }, el("div", { style: `width:${(100 * frac).toFixed(0)}%` })),
        el("span", { class: "meta", text: done ? mib(m.bytes_sent || p.transferred_bytes || 0) : `${mib(p.transferred_bytes || 0)} of ${mib(p.total_bytes || 0)}, round ${p.round || 0}` })),
      el("td", { text: p.rate_mbps && !done ? p.rate_mbps.toFixed(0) + " Mbit/s" : "" }),
      el("td", { text: chosen ? secs(chosen.total_ms) : "" }),
      el("td", { id: "mig-actual-" + m.vm, text: done ? secs(m.total_time_ms || elapsed) : m.phase === "failed" || m.phase === "cancelled" ? (m.error || m.phase) : secs(elapsed) + " so far" }),
      el("td", { text: m.downtime_ms ? m.downtime_ms + " ms" : "" })));
  }
  if (!state.migrations.length) body.append(el("tr", {}, el("td", { colspan: "9", class: "meta", text: "no migration yet" })));
}

function renderMatrix() {
  const t = document.getElementById("matrix");
  const names = state.nodes.map((n) => n.name).sort();
  const by = {};
  for (const l of state.links) by[l.from + "/" + l.to] = l;
  t.replaceChildren(el("tr", {}, el("th", { text: "from \\ to" }), ...names.map((n) => el("th", { text: n }))));
  for (const a of names) {
    const row = el("tr", {}, el("th", { text: a }));
    for (const b of names) {
      if (a === b) { row.append(el("td", { class: "self", text: "·" })); continue; }
      const l = by[a + "/" + b];
      const cell = el("td", { id: `link-${a}-${b}`, text: l ? `${l.rtt_ms.toFixed(1)} ms / ${(l.loss_pct || 0).toFixed(1)} %` : "–" });
      if (l && l.degraded) { cell.className = "bad"; cell.title = l.why; }
      row.append(cell);
    }
    t.append(row);
  }
}

// The charts draw the history the API server keeps (GET /v1/history: a
// sample every 5 s, the last hour), so a page opened now shows the hour
// before it; the page asks for what is new every 5 s.
let hist = { times: [], series: {} }; // series: "metric subject" -> values, one per time

async function loadHistory() {
  const last = hist.times.length ? hist.times[hist.times.length - 1] : 0;
  const h = await api("GET", "/v1/history" + (last ? "?since=" + last : ""));
  if (!h) return;
  const keep = h.step_ms ? Math.round(3600000 / h.step_ms) : 720;
  const had = hist.times.length;
  hist.times.push(...h.times);
  const got = new Set();
  for (const s of h.series) {
    const k = s.metric + " " + s.subject;
    got.add(k);
    const v = hist.series[k] || new Array(had).fill(null);
    v.push(...s.values);
    hist.series[k] = v;
  }
  for (const [k, v] of Object.entries(hist.series)) if (!got.has(k)) v.push(...new Array(h.times.length).fill(null));
  const cut = Math.max(0, hist.times.length - keep);
  if (cut) {
    hist.times.splice(0, cut);
    for (const v of Object.values(hist.series)) v.splice(0, cut);
  }
  for (const [k, v] of Object.entries(hist.series)) if (v.every((x) => x == null)) delete hist.series[k];
}

// chart draws lines (each {values, cls}) over the history's times; a
// missing value breaks a line.
function chart(box, id, title, lines, fmt) {
  const w = 200, ht = 48, n = hist.times.length;
  const max = Math.max(1e-9, ...lines.flatMap((l) => l.values.filter((v) => v != null)));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${ht}`);
  svg.setAttribute("preserveAspectRatio", "none");
  for (const l of lines) {
    let seg = [];
    const flush = () => {
      if (seg.length) {
        const p = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
        p.setAttribute("points", seg.join(" "));
        if (l.cls) p.setAttribute("class", l.cls);
        svg.append(p);
      }
      seg = [];
    };
    l.values.forEach((v, i) => {
      if (v == null) return flush();
      seg.push(`${((i / Math.max(1, n - 1)) * w).toFixed(1)},${(ht - (v / max) * (ht - 4) - 2).toFixed(1)}`);
    });
    flush();
  }
  const lastOf = (vs) => { for (let i = vs.length - 1; i >= 0; i--) if (vs[i] != null) return vs[i]; return null; };
  const span = n > 1 ? Math.round((hist.times[n - 1] - hist.times[0]) / 60000) : 0;
  const c = el("div", { class: "chart", id, "data-points": String(n) },
    el("div", { class: "label" }, el("span", { text: title }), el("span", { text: fmt(lines.map((l) => lastOf(l.values))) })), svg,
    el("div", { class: "meta", text: n ? `last ${span} min` : "no samples yet" }));
  box.append(c);
}

const mbit = (bps) => (bps * 8 / 1e6).toFixed(bps * 8 < 1e7 ? 2 : 0);
const sumSeries = (a, b) => (a || []).map((v, i) => (v == null && (b || [])[i] == null ? null : (v || 0) + ((b || [])[i] || 0)));

function renderCharts() {
  const lb = document.getElementById("loadcharts"), tb = document.getElementById("trafficcharts"), rb = document.getElementById("linkcharts");
  lb.replaceChildren();
  tb.replaceChildren();
  rb.replaceChildren();
  const subjects = (metric) => Object.keys(hist.series).filter((k) => k.startsWith(metric + " ")).map((k) => k.slice(metric.length + 1)).sort();
  for (const h of subjects("load1")) chart(lb, "chart-load-" + h, h, [{ values: hist.series["load1 " + h] }], ([v]) => (v == null ? "–" : v.toFixed(2)));
  for (const h of subjects("sent_control")) {
    const both = (c) => sumSeries(hist.series[`sent_${c} ${h}`], hist.series[`received_${c} ${h}`]);
    chart(tb, "chart-traffic-" + h, h, [
      { values: both("control"), cls: "control" }, { values: both("guest"), cls: "guest" }, { values: both("migration"), cls: "migration" }],
      (v) => v.map((x) => (x == null ? "–" : mbit(x))).join(" / ") + " Mbit/s");
  }
  for (const l of subjects("link_rtt_ms")) chart(rb, "chart-link-" + l.replace("/", "-"), l.replace("/", " → "), [{ values: hist.series["link_rtt_ms " + l] }], ([v]) => (v == null ? "–" : v.toFixed(2) + " ms"));
}

async function refreshCharts() {
  try {
    await loadHistory();
    renderCharts();
  } catch (e) {
    if (e.message !== "not logged in") toast("history: " + e.message, true);
  }
}

function renderTraffic() {
  const body = document.querySelector("#traffic tbody");
  body.replaceChildren();
  for (const n of state.nodes) {
    const t = n.traffic;
    const cell = (c) => el("td", { text: t ? `${mbit(t.sent[c])} / ${mbit(t.received[c])}` : "–" });
    body.append(el("tr", { id: "traffic-" + n.name }, el("th", { text: n.name }), cell("control"), cell("guest"), cell("migration"), cell("total")));
  }
}

const HA_KINDS = ["host-lost", "host-unreachable", "host-reachable", "ha-restart", "ha-waiting", "self-fenced", "host-drained", "host-at-risk", "drain-stuck", "link-degraded", "link-recovered", "leader-elected", "drain", "undrain"];

function addEvent(ev) {
  const item = (cls) => el("li", { class: cls || "" }, el("span", { class: "t", text: clock(ev.time) }), el("span", { class: "k", text: ev.kind }), el("span", { text: ev.message }));
  const list = document.getElementById("events");
  list.prepend(item());
  while (list.children.length > 200) list.lastChild.remove();
  if (HA_KINDS.some((k) => ev.kind.startsWith(k))) {
    const tl = document.getElementById("timeline");
    tl.prepend(item(ev.kind));
    while (tl.children.length > 100) tl.lastChild.remove();
  }
  if (ev.kind.startsWith("migration-") || ev.kind.startsWith("vm-") || ev.kind.startsWith("host-")) refresh();
}

function follow() {
  const live = document.getElementById("live");
  const es = new EventSource("/v1/events/stream?limit=50");
  es.onopen = () => live.classList.add("on");
  es.onmessage = (m) => { try { addEvent(JSON.parse(m.data)); } catch (e) { /* a line we do not know */ } };
  es.onerror = () => live.classList.remove("on"); // EventSource reconnects by itself, with Last-Event-ID
}

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const [nodes, vms, migrations, links] = await Promise.all([
      api("GET", "/v1/nodes"), api("GET", "/v1/vms"), api("GET", "/v1/migrations"), api("GET", "/v1/links")]);
    state = { nodes: nodes || [], vms: vms || [], migrations: migrations || [], links: links || [] };
    state.nodes.sort((a, b) => a.name.localeCompare(b.name));
    renderHosts();
    renderMigrations();
    renderMatrix();
    renderTraffic();
  } catch (e) {
    if (e.message !== "not logged in") toast("refresh: " + e.message, true);
  } finally {
    refreshing = false;
  }
}

async function start() {
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: HDR });
    showLoggedOut();
  });
  try {
    who = await api("GET", "/v1/whoami");
    document.getElementById("who").textContent = `${who.user} (${who.role})`;
  } catch (e) {
    return;
  }
  await refresh();
  await refreshCharts();
  follow();
  setInterval(refresh, 2000);
  setInterval(refreshCharts, 5000);
}

start();

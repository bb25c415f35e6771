// Ferry's dashboard: one page, no build step, no third-party code. It reads
// the same API as the CLI with the browser's session (a cookie set by the
// one-time link of `ferry dashboard`), follows the event stream, and acts
// (migrate, drain, undrain) through the API with the user's role.
"use strict";

const HDR = { "X-Ferry-Dashboard": "1" };
const samples = { load: {}, rtt: {} }; // per host, per link: recent samples
const HISTORY = 180;                    // points kept (2 s apart: 6 minutes)
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

function sample(kind, key, v) {
  const h = (samples[kind][key] = samples[kind][key] || []);
  h.push(v);
  if (h.length > HISTORY) h.shift();
}

function chart(box, key, points, unit) {
  const max = Math.max(...points, 1e-9);
  const w = 200, ht = 48;
  const pts = points.map((v, i) => `${((i / Math.max(1, HISTORY - 1)) * w).toFixed(1)},${(ht - (v / max) * (ht - 4) - 2).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${ht}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts);
  svg.append(line);
  const last = points[points.length - 1];
  box.append(el("div", { class: "chart" }, el("div", { class: "label" }, el("span", { text: key }), el("span", { text: last.toFixed(2) + unit })), svg));
}

function renderCharts() {
  for (const n of state.nodes) sample("load", n.name, n.load1 || 0);
  for (const l of state.links) sample("rtt", `${l.from} → ${l.to}`, l.rtt_ms || 0);
  const lb = document.getElementById("loadcharts"), rb = document.getElementById("linkcharts");
  lb.replaceChildren();
  rb.replaceChildren();
  for (const [k, v] of Object.entries(samples.load)) chart(lb, k, v, "");
  for (const [k, v] of Object.entries(samples.rtt)) chart(rb, k, v, " ms");
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
  renderCharts();
  follow();
  setInterval(refresh, 2000);
  setInterval(renderCharts, 2000);
}

start();

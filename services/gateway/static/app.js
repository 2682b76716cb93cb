// The fleet portal: plain JavaScript, no build step. Data comes from the public REST APIs and one live
// portal socket (/ws/portal, subprotocol fleet.portal.v1, token in the first frame, never in the URL).
// Everything from the server is inserted as text (textContent), never as HTML.
"use strict";

const state = {
  token: sessionStorage.getItem("fleet.token"),
  workspace: sessionStorage.getItem("fleet.workspace"),
  email: sessionStorage.getItem("fleet.email"),
  devices: new Map(), // device_id -> device (registry fields + status + metrics)
  commands: new Map(), // command_id -> command (of the device page)
  socket: null,
  live: false,
  retry: 0,
  view: null, // {name, deviceId?}
  tail: false,
};

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (state.workspace) headers["X-Workspace-ID"] = state.workspace;
  const resp = await fetch(path, { ...options, headers });
  if (resp.status === 401 && state.token) {
    logout();
    throw new Error("session expired");
  }
  const body = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) throw new Error((body && body.error && body.error.message) || `HTTP ${resp.status}`);
  return body;
}

// ---- formatting ------------------------------------------------------------------------------

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

function percent(value) {
  const cell = el("td");
  if (typeof value !== "number" || !isFinite(value)) return cell.append("–"), cell;
  const bar = el("span", { class: "bar" }, el("i"));
  bar.firstChild.style.width = `${Math.max(0, Math.min(100, value))}%`;
  cell.append(bar, `${value.toFixed(1)}%`);
  return cell;
}

const metric = (d, ...names) => {
  const m = d.metrics || {};
  for (const n of names) if (typeof m[n] === "number") return m[n];
  return undefined;
};

// ---- session ---------------------------------------------------------------------------------

function logout() {
  sessionStorage.clear();
  Object.assign(state, { token: null, workspace: null, email: null });
  if (state.socket) state.socket.close();
  state.devices.clear();
  location.hash = "#/login";
  render();
}

async function login(form) {
  const error = $("#login-error");
  error.textContent = "";
  try {
    const body = await api("/api/v1/auth/login", {
      method: "POST",
      body: JSON.stringify({ email: form.email.value, password: form.password.value }),
    });
    state.token = body.access_token;
    state.workspace = body.workspace_id;
    state.email = form.email.value;
    sessionStorage.setItem("fleet.token", state.token);
    sessionStorage.setItem("fleet.workspace", state.workspace);
    sessionStorage.setItem("fleet.email", state.email);
    location.hash = "#/";
    start();
  } catch (e) {
    error.textContent = e.message === "HTTP 429" ? "Too many attempts, wait a minute." : "Wrong email or password.";
  }
}

// ---- live socket -----------------------------------------------------------------------------

function setLive(on) {
  state.live = on;
  const badge = $("#live");
  badge.textContent = on ? "live" : "offline";
  badge.classList.toggle("on", on);
}

function connect() {
  if (!state.token || state.socket) return;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/portal`;
  const ws = new WebSocket(url, ["fleet.portal.v1"]);
  state.socket = ws;
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "hello", token: state.token, workspace_id: state.workspace, tail: state.tail }));
  };
  ws.onmessage = (msg) => {
    let frame;
    try { frame = JSON.parse(msg.data); } catch { return; }
    onFrame(frame);
  };
  ws.onclose = (ev) => {
    state.socket = null;
    setLive(false);
    if (ev.code === 1008 && state.token) return logout(); // the server refused our token
    if (!state.token) return;
    const delay = Math.min(30000, 500 * 2 ** state.retry++) * Math.random(); // full jitter
    setTimeout(connect, delay);
  };
}

function onFrame(f) {
  switch (f.type) {
    case "snapshot":
      state.retry = 0;
      setLive(true);
      state.devices = new Map(f.devices.map((d) => [d.device_id, d]));
      refresh();
      break;
    case "device":
      state.devices.set(f.device.device_id, { ...state.devices.get(f.device.device_id), ...f.device });
      refresh();
      break;
    case "device_removed":
      state.devices.delete(f.device_id);
      refresh();
      break;
    case "status": {
      const d = state.devices.get(f.device_id);
      if (d) Object.assign(d, { status: f.status, status_reason: f.reason, last_seen: f.status === "offline" ? d.last_seen : f.at });
      refresh();
      if (state.view && state.view.deviceId === f.device_id) prependTimeline(f);
      break;
    }
    case "metrics": {
      const d = state.devices.get(f.device_id);
      if (d) Object.assign(d, { metrics: f.metrics, last_seen: f.at || d.last_seen });
      refresh();
      break;
    }
    case "command":
      if (state.view && state.view.deviceId === f.command.device_id) {
        state.commands.set(f.command.command_id, { ...state.commands.get(f.command.command_id), ...f.command });
        renderCommands();
      }
      break;
    case "event":
      appendEvent(f);
      break;
    case "pipeline":
      showPipeline(f);
      break;
  }
}

// The pipeline's health in the header: consumer-group lag and heartbeat -> portal latency.
function showPipeline(f) {
  let strip = $("#pipeline");
  if (!strip) {
    strip = document.createElement("span");
    strip.id = "pipeline";
    strip.className = "pipeline";
    $("#live").before(strip);
  }
  const lag = f.groups.reduce((n, g) => n + (g.lag || 0), 0);
  const pending = f.groups.reduce((n, g) => n + g.pending, 0);
  const l = f.latency;
  strip.textContent = `lag ${lag} · pending ${pending}` + (l ? ` · heartbeat→portal p50 ${l.p50_ms} ms p95 ${l.p95_ms} ms` : "");
  strip.title = f.groups.map((g) => `${g.group} on ${g.stream}: lag ${g.lag ?? "?"}, pending ${g.pending}`).join("\n");
  strip.classList.toggle("warn", lag > 1000 || (l !== null && l.p95_ms > 5000));
}

// ---- views -----------------------------------------------------------------------------------

function mount(templateId) {
  const view = $("#view");
  view.replaceChildren($(templateId).content.cloneNode(true));
  return view;
}

function render() {
  const authed = Boolean(state.token);
  $("#nav").hidden = !authed;
  $("#logout").hidden = !authed;
  $("#who").textContent = authed ? state.email || "" : "";
  const hash = location.hash || "#/";
  if (!authed || hash === "#/login") {
    state.view = { name: "login" };
    mount("#login-tpl");
    $("#login-form").addEventListener("submit", (e) => { e.preventDefault(); login(e.target); });
    return;
  }
  const m = hash.match(/^#\/device\/([^/]+)$/);
  if (m) return showDevice(decodeURIComponent(m[1]));
  if (hash === "#/events") return showEvents();
  showFleet();
}

function refresh() {
  if (!state.view) return;
  if (state.view.name === "fleet") renderFleet();
  if (state.view.name === "device") renderDeviceHead();
}

function showFleet() {
  state.view = { name: "fleet" };
  mount("#fleet-tpl");
  $("#filter-text").addEventListener("input", renderFleet);
  $("#filter-status").addEventListener("change", renderFleet);
  renderFleet();
}

function renderFleet() {
  const body = $("#fleet-body");
  if (!body) return;
  const text = $("#filter-text").value.trim().toLowerCase();
  const status = $("#filter-status").value;
  const rows = [...state.devices.values()]
    .filter((d) => !status || d.status === status)
    .filter((d) => !text || (d.name || "").toLowerCase().includes(text) || d.device_id.toLowerCase().includes(text))
    .sort((a, b) => (a.name || "").localeCompare(b.name || "") || a.device_id.localeCompare(b.device_id));
  body.replaceChildren(
    ...rows.map((d) => {
      const tr = el(
        "tr",
        { "data-device": d.device_id, "data-status": d.status || "offline" },
        el("td", {}, el("span", { class: `dot ${d.status || "offline"}` }), d.status || "offline"),
        el("td", { text: d.name || d.device_id }),
        el("td", { text: d.device_type || "" }),
        el("td", { text: ago(d.last_seen), title: d.last_seen || "" }),
        percent(metric(d, "cpu", "cpu_percent")),
        percent(metric(d, "memory", "memory_percent")),
        el("td", { class: "muted", text: d.status_reason || "" }),
      );
      tr.addEventListener("click", () => { location.hash = `#/device/${encodeURIComponent(d.device_id)}`; });
      return tr;
    }),
  );
  $("#count").textContent = `${rows.length} of ${state.devices.size}`;
  $("#fleet-empty").hidden = rows.length > 0;
}

async function showDevice(id) {
  state.view = { name: "device", deviceId: id };
  state.commands = new Map();
  mount("#device-tpl");
  $("#command-form").addEventListener("submit", (e) => { e.preventDefault(); sendCommand(id, e.target); });
  try {
    const d = await api(`/api/v1/devices/${encodeURIComponent(id)}`);
    state.devices.set(id, { ...state.devices.get(id), ...d });
  } catch (e) {
    $("#dev-name").textContent = `Device not found (${e.message})`;
    return;
  }
  renderDeviceHead();
  loadCharts(id);
  loadTimeline(id);
  loadCommands(id);
}

function renderDeviceHead() {
  const d = state.devices.get(state.view.deviceId);
  if (!d || !$("#dev-name")) return;
  $("#dev-name").textContent = d.name || d.device_id;
  const pill = $("#dev-status");
  pill.textContent = d.status || "offline";
  pill.className = `pill ${d.status || "offline"}`;
  $("#dev-seen").textContent = `last seen ${ago(d.last_seen)}`;
  const facts = [
    ["Device id", d.device_id], ["Type", d.device_type], ["Site", d.site_id || "–"],
    ["Groups", (d.groups || []).join(", ") || "–"], ["Reason", d.status_reason || "–"],
    ["Created", d.created_at ? new Date(d.created_at).toLocaleString() : "–"],
  ];
  $("#dev-facts").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v ?? "–" }))));
}

async function loadCharts(id) {
  const from = new Date(Date.now() - 3600 * 1000).toISOString();
  const box = $("#charts");
  try {
    // raw points (an hour of heartbeats): only they say which readings were backfilled
    const body = await api(`/api/v1/devices/${encodeURIComponent(id)}/metrics?from=${encodeURIComponent(from)}&step=raw`);
    const names = Object.keys(body.series || {}).sort();
    if (!names.length) return box.replaceChildren(el("p", { class: "muted", text: "No metrics in the last hour." }));
    box.replaceChildren(...names.map((n) => chart(n, body.series[n], (body.backfilled || {})[n])));
  } catch (e) {
    box.replaceChildren(el("p", { class: "error", text: `Metrics unavailable: ${e.message}` }));
  }
}

function chart(name, points, backfilled = []) {
  const canvas = el("canvas", { width: "520", height: "220", "aria-label": `${name} chart` });
  const last = points.length ? points[points.length - 1][1] : null;
  const box = el("div", { class: "chart" }, el("h3", { text: `${name}${last == null ? "" : ` · ${num(last)}`}` }), canvas);
  if (backfilled.length) box.append(el("p", { class: "legend", text: `○ backfilled (${backfilled.length}) · ● live` }));
  requestAnimationFrame(() => draw(canvas, points, new Set(backfilled)));
  return box;
}

function draw(canvas, points, backfilled = new Set()) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  const xs = points.map((p) => Date.parse(p[0])), ys = points.map((p) => Number(p[1]));
  if (!xs.length) return;
  const x0 = Date.now() - 3600 * 1000, x1 = Date.now();
  let y0 = Math.min(0, ...ys), y1 = Math.max(...ys);
  if (y1 === y0) y1 = y0 + 1;
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (w - 2 * pad);
  const Y = (y) => h - pad - ((y - y0) / (y1 - y0)) * (h - 2 * pad);
  ctx.strokeStyle = "#e3e6eb"; ctx.fillStyle = "#6b7385"; ctx.font = "18px system-ui";
  ctx.beginPath(); ctx.moveTo(pad, Y(y0)); ctx.lineTo(w - pad, Y(y0)); ctx.stroke();
  ctx.fillText(num(y1), 2, pad); ctx.fillText(num(y0), 2, h - pad);
  ctx.strokeStyle = "#2b6cb0"; ctx.lineWidth = 3; ctx.beginPath();
  xs.forEach((x, i) => (i ? ctx.lineTo(X(x), Y(ys[i])) : ctx.moveTo(X(x), Y(ys[i]))));
  ctx.stroke();
  ctx.fillStyle = "#2b6cb0"; ctx.strokeStyle = "#c05621"; ctx.lineWidth = 2; // a dot per point: a single one still shows
  xs.forEach((x, i) => {
    ctx.beginPath(); ctx.arc(X(x), Y(ys[i]), 4, 0, 2 * Math.PI);
    if (backfilled.has(points[i][0])) ctx.stroke(); else ctx.fill(); // backfilled: a hollow orange ring
  });
}

async function loadTimeline(id) {
  const list = $("#timeline");
  try {
    const rows = await api(`/api/v1/devices/${encodeURIComponent(id)}/history?limit=100`);
    list.replaceChildren(...rows.map(timelineItem));
    if (!rows.length) list.append(el("li", { class: "muted", text: "No transitions yet." }));
  } catch (e) {
    list.replaceChildren(el("li", { class: "error", text: e.message }));
  }
}

function timelineItem(t) {
  return el(
    "li", {},
    el("time", { text: new Date(t.at).toLocaleString(), datetime: t.at }),
    el("span", { class: `pill ${t.status}`, text: t.status }),
    el("span", { class: "muted", text: t.reason }),
  );
}

function prependTimeline(t) {
  const list = $("#timeline");
  if (!list) return;
  const placeholder = list.querySelector(".muted:only-child");
  if (placeholder) placeholder.remove();
  list.prepend(timelineItem(t));
}

async function loadCommands(id) {
  try {
    const rows = await api(`/api/v1/devices/${encodeURIComponent(id)}/commands?limit=50`);
    for (const c of rows) state.commands.set(c.command_id || c.id, normalizeCommand(c));
    renderCommands();
  } catch (e) {
    $("#command-error").textContent = `Commands unavailable: ${e.message}`;
  }
}

function normalizeCommand(c) {
  return { ...c, command_id: c.command_id || c.id, state: c.state || c.status };
}

function renderCommands() {
  const body = $("#command-body");
  if (!body) return;
  const rows = [...state.commands.values()].sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
  body.replaceChildren(
    ...rows.map((c) => {
      const result = c.error || (c.result == null ? "" : JSON.stringify(c.result));
      return el(
        "tr", { "data-command": c.command_id, "data-state": c.state || "" },
        el("td", { text: c.created_at ? new Date(c.created_at).toLocaleTimeString() : "" }),
        el("td", { text: c.command_type || "" }),
        el("td", { class: `state ${c.state || ""}`, text: c.state || "" }),
        el("td", { class: "muted", text: result.length > 200 ? `${result.slice(0, 200)}…` : result }),
      );
    }),
  );
}

async function sendCommand(id, form) {
  const error = $("#command-error");
  error.textContent = "";
  let parameters;
  try { parameters = JSON.parse(form.parameters.value || "{}"); } catch { error.textContent = "Parameters must be JSON."; return; }
  try {
    const c = await api(`/api/v1/devices/${encodeURIComponent(id)}/commands`, {
      method: "POST",
      body: JSON.stringify({ command_type: form.command_type.value, parameters }),
    });
    const cmd = normalizeCommand(c);
    state.commands.set(cmd.command_id, { ...cmd, ...state.commands.get(cmd.command_id) });
    renderCommands();
  } catch (e) {
    error.textContent = e.message;
  }
}

function showEvents() {
  state.view = { name: "events" };
  mount("#events-tpl");
  setTail(true);
}

function setTail(on) {
  state.tail = on;
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify({ type: "tail", on }));
}

function appendEvent(f) {
  const list = $("#events");
  if (!list || $("#events-pause").checked) return;
  list.prepend(
    el("li", {}, el("span", { class: "type", text: f.event_type || f.type }), ` ${f.stream || ""} ${f.id || ""}\n`, JSON.stringify(f.data)),
  );
  while (list.childElementCount > 500) list.lastChild.remove();
}

// ---- start -----------------------------------------------------------------------------------

async function loadDevices() {
  // The socket's snapshot and deltas replace this; REST shows the table without a socket, and
  // keeps it fresh (every 5 s) while the socket is down.
  try {
    const page = await api("/api/v1/devices?limit=1000");
    const items = Array.isArray(page) ? page : page.items || page.devices || [];
    if (!state.live) state.devices = new Map(items.map((d) => [d.device_id, d]));
    refresh();
  } catch { /* shown as offline; retried */ }
}

async function start() {
  render();
  if (!state.token) return;
  await loadDevices();
  connect();
}

window.addEventListener("hashchange", () => {
  if (state.view && state.view.name === "events" && location.hash !== "#/events") setTail(false);
  render();
});
$("#logout").addEventListener("click", logout);
setInterval(() => {
  if (!state.token || !state.view) return;
  if (!state.live && (state.view.name === "fleet" || state.view.name === "device")) loadDevices();
  else if (state.view.name === "fleet") renderFleet(); // "x s ago"
}, 5000);
start();

// A reading for a label: one decimal below 10,000, then k/M/G/T (counters reach billions).
function num(value) {
  const v = Number(value), a = Math.abs(v);
  if (!Number.isFinite(v)) return String(value);
  if (a < 1e4) return String(+v.toFixed(1));
  const [d, unit] = a < 1e6 ? [1e3, "k"] : a < 1e9 ? [1e6, "M"] : a < 1e12 ? [1e9, "G"] : [1e12, "T"];
  return `${+(v / d).toFixed(2)}${unit}`;
}

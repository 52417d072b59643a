// DOM rendering. Every value from the API goes in through textContent (never innerHTML):
// a device id or an error message cannot inject markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en", { maximumFractionDigits: digits });
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function ago(ts, now = Date.now() / 1000) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round(now - ts));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function renderSummary(fleet) {
  const set = (id, v) => {
    document.getElementById(id).textContent = num(v);
  };
  set("n-devices", fleet.devices);
  set("n-online", fleet.online);
  set("n-offline", fleet.offline);
  set("n-never", fleet.never_reported);
  set("n-revoked", fleet.revoked);
  for (const [id, rows] of [["profiles", fleet.profiles], ["versions", fleet.versions]]) {
    const body = document.querySelector(`#${id} tbody`);
    body.replaceChildren(
      ...(rows.length ? rows : [{ key: "—", devices: 0, online: 0 }]).map((r) =>
        el("tr", {}, el("td", {}, r.key ?? "(not reported)"),
          el("td", { class: "num" }, num(r.devices)), el("td", { class: "num" }, num(r.online))),
      ),
    );
  }
}

function onlineCell(online) {
  const cls = online === true ? "dot on" : online === false ? "dot off" : "dot";
  const text = online === true ? "online" : online === false ? "offline" : "unknown";
  return el("td", {}, el("span", { class: cls, title: text }), " ", text);
}

/** One fleet-table row; ``data-device`` lets live updates find it. */
export function deviceRow(d) {
  const row = el("tr", { "data-device": d.device_id },
    el("td", {}, d.device_id), onlineCell(d.online), el("td", {}, d.state ?? "–"),
    el("td", {}, d.profile ?? "–"), el("td", {}, d.model_version ?? "–"),
    el("td", {}, (d.groups ?? []).join(", ")),
    el("td", { class: "seen", "data-ts": String(d.last_seen ?? "") }, ago(d.last_seen)));
  return row;
}

export function renderFleet(items) {
  const body = document.querySelector("#fleet tbody");
  if (!items.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "no devices")));
    return;
  }
  body.replaceChildren(...items.map(deviceRow));
}

/** Replace the rows of changed devices on the visible page; returns how many it found. */
export function patchFleet(items) {
  let found = 0;
  for (const d of items) {
    const old = document.querySelector(`#fleet tr[data-device="${CSS.escape(d.device_id)}"]`);
    if (!old) continue;
    const row = deviceRow(d);
    row.classList.add("flash");
    old.replaceWith(row);
    found += 1;
  }
  return found;
}

export function refreshAges() {
  const now = Date.now() / 1000;
  for (const cell of document.querySelectorAll("#fleet td.seen")) {
    const ts = Number(cell.dataset.ts);
    cell.textContent = ago(ts || null, now);
  }
}

export function renderRounds(run) {
  const body = document.querySelector("#rounds tbody");
  body.replaceChildren(...(run?.rounds ?? []).map((r) =>
    el("tr", {}, el("td", {}, r.round), el("td", { class: "num" }, num(r.accuracy, 4)),
      el("td", { class: "num" }, num(r.loss, 4)), el("td", { class: "num" }, r.participants),
      el("td", { class: "num" }, r.rejected), el("td", { class: "num" }, r.failed),
      el("td", { class: "num" }, bytes(r.bytes_up)), el("td", { class: "num" }, bytes(r.bytes_down)),
      el("td", { class: "num" }, num(r.seconds, 1)), el("td", {}, r.version ?? "–"))));
}

export function renderLatency(rows) {
  const body = document.querySelector("#latency tbody");
  if (!rows.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "7", class: "muted" },
      "no telemetry in the window")));
    return;
  }
  body.replaceChildren(...rows.map((r) =>
    el("tr", {}, el("td", {}, r.model_version ?? "(unknown)"), el("td", { class: "num" }, r.devices),
      el("td", { class: "num" }, num(r.requests)),
      el("td", { class: "num" }, r.requests ? `${((100 * r.errors) / r.requests).toFixed(2)} %` : "–"),
      el("td", { class: "num" }, num(r.latency_p50_ms, 2)),
      el("td", { class: "num" }, num(r.latency_p95_ms, 2)),
      el("td", { class: "num" }, num(r.latency_p99_ms, 2)))));
}

function gateValues(detail) {
  // a gate decision's evidence: its numbers, flattened one level (values and thresholds)
  const parts = [];
  for (const [k, v] of Object.entries(detail ?? {})) {
    if (typeof v === "number") parts.push(`${k}=${num(v, 4)}`);
    else if (typeof v === "string" && k !== "gate") parts.push(`${k}=${v}`);
    else if (v && typeof v === "object" && !Array.isArray(v)) {
      for (const [k2, v2] of Object.entries(v)) {
        if (typeof v2 === "number") parts.push(`${k}.${k2}=${num(v2, 4)}`);
      }
    }
  }
  return parts.join("  ");
}

function progress(done, size) {
  const bar = el("span", { class: "bar" });
  bar.style.width = `${size ? Math.round((160 * done) / size) : 0}px`; // CSSOM: CSP allows it
  return el("span", { class: "bar track" }, bar);
}

/** A rollout card: state, cohort progress bars, the event timeline with gate values. */
export function rolloutCard(r, events) {
  const counts = r.counts ?? {};
  const head = el("div", {}, el("strong", {}, r.rollout_id), "  ", r.version ?? "", "  ",
    el("span", { class: "pill" }, r.state ?? "?"),
    el("span", { class: "muted" }, `  phase ${r.phase ?? "–"}, cohort ${r.cohort ?? "–"}  `),
    el("span", { class: "muted" },
      Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(" · ")));
  const cohorts = el("table", { class: "compact" }, el("thead", {}, el("tr", {},
    el("th", {}, "cohort"), el("th", {}, "state"), el("th", {}, "progress"), el("th", {}, "devices"))));
  const tbody = el("tbody");
  // committed devices fill the cohorts in order: passed cohorts are whole, the running one
  // holds the rest (the list endpoint gives rollout-wide counts, not per-cohort ones)
  let committed = counts.committed ?? 0;
  for (const c of r.cohorts ?? []) {
    const done = c.state === "passed" ? c.size : Math.min(c.size, Math.max(0, committed));
    committed -= c.size;
    tbody.append(el("tr", {}, el("td", {}, c.index === 0 ? "0 (canary)" : c.index),
      el("td", {}, c.state), el("td", {}, progress(done, c.size)),
      el("td", { class: "num" }, `${done}/${c.size}`)));
  }
  cohorts.append(tbody);
  const list = el("ol", { class: "timeline" });
  for (const e of events) {
    const verdict = e.detail?.verdict;
    list.append(el("li", { class: verdict ? `verdict-${verdict}` : "" },
      new Date(e.at * 1000).toLocaleTimeString(), "  ", e.kind,
      e.detail?.gate ? ` ${e.detail.gate}` : "",
      e.cohort !== null && e.cohort !== undefined ? ` (cohort ${e.cohort})` : "", "  ",
      gateValues(e.detail)));
  }
  return el("div", { class: "rollout" }, head, cohorts, list);
}

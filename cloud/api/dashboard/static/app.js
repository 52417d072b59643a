// The dashboard's state and wiring: login, paged fleet table, runs, rollouts, latency, and
// live updates from the server-sent event stream.

import { api, ApiError, clearToken, getToken, liveEvents, setToken } from "./api.js";
import { latencyChart, roundsChart } from "./charts.js";
import {
  el, patchFleet, refreshAges, renderFleet, renderLatency, renderRounds, renderSummary,
  rolloutCard,
} from "./views.js";

const PAGE = 20;
const $ = (id) => document.getElementById(id);

const state = {
  cursors: [null], // cursor of each page seen so far (virtual paging over /v1/devices)
  page: 0,
  next: null,
  filter: "",
  runs: [],
  runId: null,
  hasRollouts: null,
  inflight: new Set(),
  stop: null,
};

async function loadFleet() {
  const q = new URLSearchParams({ limit: String(PAGE) });
  const cursor = state.cursors[state.page];
  if (cursor) q.set("cursor", cursor);
  if (state.filter) q.set("online", state.filter);
  // devices that change while the page is in flight are re-applied on top of it: the
  // answer may predate their event
  const changed = new Map();
  state.inflight.add(changed);
  let page;
  try {
    page = await api(`/v1/devices?${q}`);
  } finally {
    state.inflight.delete(changed);
  }
  state.next = page.next_cursor;
  renderFleet(page.items);
  patchFleet([...changed.values()]);
  $("fleet-page").textContent = `page ${state.page + 1}`;
  $("fleet-prev").disabled = state.page === 0;
  $("fleet-next").disabled = !state.next;
}

async function loadSummary() {
  const s = await api("/v1/dashboard/summary");
  renderSummary(s.fleet);
  renderLatency(s.latency);
  if (s.latency.length) latencyChart($("latency-plot"), s.bucket_edges_ms, s.latency);
  else $("latency-plot").replaceChildren();
}

function showRun() {
  const run = state.runs.find((r) => r.run_id === state.runId);
  renderRounds(run);
  if (!run) {
    $("run-info").textContent = "no federated runs yet";
    $("run-plot").replaceChildren();
    return;
  }
  const last = run.rounds.at(-1);
  $("run-info").textContent = `${run.state}, ${run.rounds.length} rounds` +
    (last?.accuracy != null ? `, accuracy ${last.accuracy.toFixed(4)}` : "") +
    (run.best_version ? `, best ${run.best_version}` : "");
  roundsChart($("run-plot"), run.rounds);
}

async function loadRuns() {
  const page = await api("/v1/federation/runs?limit=20");
  state.runs = page.items;
  if (!state.runs.some((r) => r.run_id === state.runId)) state.runId = state.runs[0]?.run_id ?? null;
  const select = $("run-select");
  select.replaceChildren(...state.runs.map((r) => {
    const option = el("option", { value: r.run_id }, `${r.name ?? r.run_id} (${r.state})`);
    option.selected = r.run_id === state.runId;
    return option;
  }));
  showRun();
}

async function rolloutsAvailable() {
  // Ask the API's own schema instead of probing /v1/rollouts (a 404 would be a console error)
  if (state.hasRollouts === null) {
    const schema = await fetch("/openapi.json", { cache: "no-store" }).then((r) => r.json());
    state.hasRollouts = Object.hasOwn(schema.paths ?? {}, "/v1/rollouts");
  }
  return state.hasRollouts;
}

async function loadRollouts() {
  const box = $("rollouts");
  if (!(await rolloutsAvailable())) {
    box.replaceChildren(el("p", { class: "muted" },
      "no rollouts (this coordinator has no staged-rollout service)"));
    return;
  }
  const page = await api("/v1/rollouts?limit=5");
  const items = page.items;
  if (!items.length) {
    box.replaceChildren(el("p", { class: "muted" }, "no rollouts"));
    return;
  }
  const cards = await Promise.all(items.map(async (r) => {
    const ev = await api(`/v1/rollouts/${encodeURIComponent(r.rollout_id)}/events`);
    return rolloutCard(r, ev.items);
  }));
  box.replaceChildren(...cards);
}

function report(err) {
  if (err instanceof ApiError && err.status === 401) {
    signOut("the token was refused (unknown, revoked or expired)");
    return;
  }
  console.warn("dashboard:", err.message);
}

function guarded(fn) {
  return () => fn().catch(report);
}

function setLive(on) {
  const pill = $("live");
  pill.textContent = on ? "live" : "offline";
  pill.className = `pill ${on ? "on" : "off"}`;
}

function startLive() {
  state.stop = liveEvents({
    hello: (m) => {
      // (re)connected: a change between the page's last load and the stream's watermark
      // is in neither, so the visible page is reloaded once (20 rows)
      renderSummary(m.summary);
      guarded(loadFleet)();
    },
    summary: (fleet) => renderSummary(fleet),
    devices: (m) => {
      for (const pending of state.inflight) for (const d of m.items) pending.set(d.device_id, d);
      const found = patchFleet(m.items);
      // a change off this page is counted in the summary; a burst reloads the page
      if (m.truncated || (found === 0 && state.filter)) guarded(loadFleet)();
    },
    runs: guarded(loadRuns),
    tick: () => {
      refreshAges();
      guarded(loadRollouts)();
      guarded(loadSummary)();
    },
    unauthorized: () => signOut("the token was revoked"),
  }, setLive);
}

async function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  await Promise.all([loadSummary(), loadFleet()]);
  performance.mark("fedge-fleet-rendered"); // read by the browser test (time to useful paint)
  startLive();
  await Promise.all([loadRuns(), loadRollouts()]);
  performance.mark("fedge-ready");
  document.body.dataset.ready = "1";
}

function signOut(message = "") {
  state.stop?.();
  state.stop = null;
  clearToken();
  setLive(false);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
}

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
    $("token").value = "";
    start().catch(report);
  });
  $("logout").addEventListener("click", () => signOut());
  $("fleet-filter").addEventListener("change", (e) => {
    state.filter = e.target.value;
    state.cursors = [null];
    state.page = 0;
    guarded(loadFleet)();
  });
  $("fleet-next").addEventListener("click", () => {
    if (!state.next) return;
    state.page += 1;
    state.cursors[state.page] = state.next;
    guarded(loadFleet)();
  });
  $("fleet-prev").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    guarded(loadFleet)();
  });
  $("run-select").addEventListener("change", (e) => {
    state.runId = e.target.value;
    showRun();
  });
}

wire();
if (getToken()) start().catch(report);
else $("login").hidden = false;

// keymeter console: plain JavaScript over the gateway's public API (what the page does, a script can do).
// The API key lives in sessionStorage and travels only in the Authorization header. Every value from the
// server is put in the page as text, never as markup.
"use strict";

const STORE = "keymeter.console.key";
const PAGES = ["overview", "keys", "providers", "models", "usage"];
const PROVIDERS = [
  ["openai", "OpenAI", "sk-…"],
  ["anthropic", "Anthropic", "sk-ant-…"],
  ["google", "Google (Gemini)", "AIza…"],
];
// The scopes offered when creating a key, if the signed-in key holds them.
const OFFERED = ["llm:chat", "reports", "billing", "write"];
const RESERVED = ["admin", "keys:write"];

let me = null; // the answer of GET /api/v1/key for the signed-in key

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : String(c));
  return el;
}

/** A decimal string shown as money, cut (not rounded through a float) to at most 4 decimals. */
function money(text) {
  if (text === null || text === undefined) return "—";
  const s = String(text);
  const [whole, frac = ""] = s.split(".");
  const kept = frac.slice(0, 4).replace(/0+$/, "");
  return "$" + whole + "." + (kept.length < 2 ? kept.padEnd(2, "0") : kept);
}

function day(d) {
  return d.toISOString().slice(0, 10);
}

/** Whether holding `held` grants `want`: equal, `*`, or `resource:*` for `resource:…`. */
function grants(held, want) {
  if (held === "*" || held === want) return true;
  return held.endsWith(":*") && want.startsWith(held.slice(0, -1));
}

function holds(scope) {
  return !!me && me.key.scopes.some((s) => grants(s, scope));
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `the gateway answered ${status}`);
    this.status = status;
    this.code = err.code || "";
  }
}

/** Calls the gateway with the signed-in key; a 401 signs out with the gateway's reason. */
async function api(method, path, body) {
  const key = sessionStorage.getItem(STORE);
  const init = { method, headers: { Authorization: "Bearer " + key }, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => null);
  if (res.status === 401 && me) {
    signOut(`Signed out: ${(data && data.error && data.error.message) || "the key is no longer valid"}.`);
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function show(id, text) {
  $(id).textContent = text || "";
}

function failure(id, e) {
  if (e && e.status === 401) return;
  show(id, e instanceof ApiError ? e.message : "Could not reach the gateway.");
}

/* ---------- signing in and out ---------- */

async function signIn(key) {
  sessionStorage.setItem(STORE, key);
  me = await api("GET", "/api/v1/key");
  $("nav").hidden = false;
  $("signout").hidden = false;
  $("who").hidden = false;
  $("who").textContent = `${me.key.name} · ${me.key.owner}${me.key.org ? " · " + me.key.org : ""}`;
  $("notice").hidden = true;
  route();
}

function signOut(message) {
  sessionStorage.removeItem(STORE);
  me = null;
  for (const id of ["nav", "signout", "who"]) $(id).hidden = true;
  $("notice").hidden = !message;
  $("notice").textContent = message || "";
  if (location.hash) history.replaceState(null, "", location.pathname);
  openPage("signin");
}

function openPage(page) {
  for (const id of ["signin", ...PAGES]) $(id).hidden = id !== page;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === "#" + page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const title = $(page + "-title");
  if (title) title.focus();
}

function route() {
  if (!me) return openPage("signin");
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "overview";
  openPage(page);
  ({ overview, keys, providers, models, usage })[page]();
}

/* ---------- overview ---------- */

async function overview() {
  show("overview-error", "");
  const today = new Date();
  const monthStart = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), 1));
  const from = new Date(today.getTime() - 29 * 86400e3);
  try {
    me = await api("GET", "/api/v1/key");
  } catch (e) {
    return failure("overview-error", e);
  }
  // Without reports, only this key's own day is known.
  $("today-spend").textContent = money(me.usage_today.cost);
  $("today-events").textContent = String(me.usage_today.events);
  $("today-whose").textContent = "this key";
  gauges(me.budgets || []);
  if (!holds("reports")) {
    $("month-spend").textContent = "—";
    chart([], from, today);
    $("by-model").tBodies[0].replaceChildren();
    return show("overview-error", "This key lacks the reports scope: the month's spend and the charts need it.");
  }
  try {
    const [daily, month, models] = await Promise.all([
      api("GET", `/api/v1/usage?by=day&since=${day(from)}`),
      api("GET", `/api/v1/usage?by=day&since=${day(monthStart)}`),
      api("GET", `/api/v1/usage?by=model&since=${day(monthStart)}`),
    ]);
    $("month-spend").textContent = money(month.total);
    const todays = chart(daily.groups, from, today) || { cost: "0", events: 0 };
    $("today-spend").textContent = money(todays.cost);
    $("today-events").textContent = String(todays.events);
    $("today-whose").textContent = "all your keys";
    $("by-model").tBodies[0].replaceChildren(
      ...models.groups.map((g) =>
        h("tr", {}, h("td", {}, g.key), h("td", { class: "num" }, money(g.cost)), h("td", { class: "num" }, g.events))),
    );
    if (!models.groups.length) {
      $("by-model").tBodies[0].append(h("tr", {}, h("td", { colspan: 3, class: "hint" }, "No requests this month.")));
    }
  } catch (e) {
    failure("overview-error", e);
  }
}

function gauges(budgets) {
  const list = $("budgets");
  if (!budgets.length) {
    list.replaceChildren(h("li", { class: "hint" }, "No budget applies to this key."));
    return;
  }
  list.replaceChildren(
    ...budgets.map((b) => {
      const limit = parseFloat(b.limit);
      const used = parseFloat(b.spent) + parseFloat(b.reserved || "0");
      return h(
        "li",
        {},
        h("div", { class: "head" }, h("strong", {}, `${b.scope} · ${b.period}`),
          h("span", {}, `${money(b.spent)} of ${money(b.limit)} · ${money(b.remaining)} left`)),
        h("meter", {
          min: 0, max: limit > 0 ? limit : 1, low: limit * 0.8, high: limit * 0.95, optimum: 0,
          value: Math.min(used, limit), "aria-label": `${b.scope} budget used`,
        }),
      );
    }),
  );
}

/** Bars for each of the 30 days up to today (days without spend at zero), with the values as attributes. */
function chart(groups, from, today) {
  const byDay = new Map(groups.map((g) => [g.key, g]));
  const days = [];
  for (let t = from.getTime(); days.length < 30; t += 86400e3) days.push(day(new Date(t)));
  const values = days.map((d) => parseFloat((byDay.get(d) || { cost: "0" }).cost));
  const max = Math.max(...values, 0);
  const W = 600, H = 160, step = W / days.length;
  const total = groups.reduce((s, g) => s + parseFloat(g.cost), 0);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `Spend per day for the last 30 days, ${money(total.toFixed(4))} in all` });
  root.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" }));
  days.forEach((d, i) => {
    const cost = (byDay.get(d) || { cost: "0" }).cost;
    const height = max > 0 ? (values[i] / max) * (H - 4) : 0;
    const rect = svg("rect", {
      x: i * step + 2, y: H - height, width: step - 4, height,
      class: "bar-rect" + (d === day(today) ? " today" : ""), "data-day": d, "data-cost": cost,
    });
    rect.append(svg("title", {}, `${d}: ${money(cost)}`));
    root.append(rect);
  });
  // Labels in HTML, so the stretched drawing does not stretch the text.
  $("chart").replaceChildren(
    h("p", { class: "chart-max" }, max > 0 ? `highest day: ${money(max.toFixed(4))}` : "no spend yet"),
    root,
    h("p", { class: "chart-days" }, h("span", {}, days[0]), h("span", {}, days[days.length - 1] + " (today)")),
  );
  return byDay.get(day(today));
}

/* ---------- API keys ---------- */

function keysBase() {
  if (holds("admin")) return "/api/v1/api-keys";
  if (holds("keys:write")) return "/api/v1/me/keys";
  return null;
}

async function keys() {
  show("keys-error", "");
  const base = keysBase();
  const admin = base === "/api/v1/api-keys";
  $("keys-scope").textContent = admin
    ? `An admin key: these are ${me.key.org ? "organisation " + me.key.org + "'s" : "every organisation's"} keys.`
    : base
      ? "Your keys. New keys get a subset of this key's permissions and are revoked with it."
      : "This key cannot manage keys (that needs keys:write): only the key itself is shown.";
  $("create-form").hidden = !base;
  const offered = OFFERED.concat(me.key.scopes.filter((s) => !s.includes("*") && !OFFERED.includes(s)))
    .filter((s) => holds(s) && (admin || !RESERVED.includes(s)));
  if (admin) for (const s of RESERVED) if (holds(s) && !offered.includes(s)) offered.push(s);
  $("create-scopes").replaceChildren(
    ...offered.map((s) =>
      h("label", {}, h("input", { type: "checkbox", name: "scope", value: s, checked: s === "llm:chat" }), s)),
  );
  let list = [me.key];
  if (base) {
    try {
      list = (await api("GET", base)).keys;
    } catch (e) {
      return failure("keys-error", e);
    }
  }
  const now = Date.now();
  $("key-table").tBodies[0].replaceChildren(
    ...list.map((k) => {
      const status = k.revoked_at ? "revoked" : k.disabled ? "disabled"
        : k.expires_at && Date.parse(k.expires_at) <= now ? "expired" : "active";
      const actions = h("div", { class: "actions" });
      if (base && status !== "revoked") {
        actions.append(
          h("button", { type: "button", class: "quiet small", "data-action": "rotate", "data-id": k.id,
            "aria-label": `Rotate ${k.name}`, onclick: () => rotateKey(base, k) }, "Rotate"),
          h("button", { type: "button", class: "danger small", "data-action": "revoke", "data-id": k.id,
            "aria-label": `Revoke ${k.name}`, onclick: () => revokeKey(base, k) }, "Revoke"),
        );
      }
      return h("tr", { "data-id": k.id },
        h("td", {}, k.name, k.id === me.key.id ? h("span", { class: "hint" }, " (this key)") : null),
        h("td", {}, h("code", {}, k.hint)),
        h("td", {}, k.scopes.join(", ")),
        h("td", {}, k.owner),
        h("td", {}, k.last_used_at ? k.last_used_at.slice(0, 16).replace("T", " ") : "never"),
        h("td", { class: "status-" + status }, status),
        h("td", {}, actions));
    }),
  );
}

async function createKey(event) {
  event.preventDefault();
  show("create-error", "");
  const permissions = [...document.querySelectorAll("#create-scopes input:checked")].map((i) => i.value);
  const body = { name: $("create-name").value.trim(), permissions };
  const expires = $("create-expiry").value;
  if (expires) body.expires_in = expires;
  if (keysBase() === "/api/v1/api-keys") body.owner = me.key.owner;
  try {
    const made = await api("POST", keysBase(), body);
    $("create-form").reset();
    reveal(made.secret);
    await keys();
  } catch (e) {
    failure("create-error", e);
  }
}

async function rotateKey(base, k) {
  if (!confirm(`Rotate "${k.name}"? Its current secret stops working now.`)) return;
  try {
    const rotated = await api("POST", `${base}/${encodeURIComponent(k.id)}/rotate`, {});
    reveal(rotated.secret);
    if (k.id === me.key.id) sessionStorage.setItem(STORE, rotated.secret);
    await keys();
  } catch (e) {
    failure("keys-error", e);
  }
}

async function revokeKey(base, k) {
  if (!confirm(`Revoke "${k.name}"? This cannot be undone, and the keys it created are revoked with it.`)) return;
  try {
    await api("DELETE", `${base}/${encodeURIComponent(k.id)}`);
    if (k.id === me.key.id) return signOut("Signed out: you revoked the key you signed in with.");
    await keys();
  } catch (e) {
    failure("keys-error", e);
  }
}

/** Shows a new secret once; Done (or leaving the page) removes it from the page. */
function reveal(secret) {
  $("secret-value").textContent = secret;
  $("secret-copied").textContent = "";
  $("secret-panel").hidden = false;
  $("secret-copy").focus();
}

function forgetSecret() {
  $("secret-value").textContent = "";
  $("secret-panel").hidden = true;
}

async function copySecret() {
  try {
    await navigator.clipboard.writeText($("secret-value").textContent);
    $("secret-copied").textContent = "Copied.";
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("secret-value"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    $("secret-copied").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
}

/* ---------- provider keys ---------- */

async function providers() {
  show("providers-error", "");
  try {
    me = await api("GET", "/api/v1/key");
  } catch (e) {
    return failure("providers-error", e);
  }
  const canWrite = holds("write");
  const status = new Map((me.providers || []).map((p) => [p.provider, p]));
  $("provider-list").replaceChildren(
    ...PROVIDERS.map(([id, name, placeholder]) => {
      const s = status.get(id) || { personal: false, system: false };
      const error = h("p", { class: "error", role: "alert", id: `provider-${id}-error` });
      const input = h("input", { type: "password", id: `provider-${id}-key`, autocomplete: "off",
        spellcheck: "false", placeholder, "aria-label": `${name} API key`, required: true });
      const form = h("form", { "data-provider": id, autocomplete: "off" },
        input,
        h("button", { type: "submit" }, s.personal ? "Replace" : "Save"),
        s.personal ? h("button", { type: "button", class: "danger", onclick: () => deleteProvider(id, error) },
          "Delete") : null);
      form.addEventListener("submit", (event) => saveProvider(event, id, input, error));
      return h("div", { class: "provider", id: `provider-${id}` },
        h("h2", {}, name),
        h("span", { class: "badge " + (s.personal ? "yes" : "no"), "data-status": "personal" },
          s.personal ? "Your key: saved" : "Your key: none"),
        h("span", { class: "badge " + (s.system ? "yes" : "no"), "data-status": "system" },
          s.system ? "System key: available" : "System key: none"),
        canWrite ? form : h("p", { class: "hint" }, "Saving keys needs the write scope."),
        error);
    }),
  );
}

async function saveProvider(event, id, input, error) {
  event.preventDefault();
  error.textContent = "";
  try {
    await api("PATCH", "/v2/users/me/api-key", { [`${id}_api_key`]: input.value.trim() });
    input.value = "";
    await providers();
  } catch (e) {
    if (e.status !== 401) error.textContent = e instanceof ApiError ? e.message : "Could not reach the gateway.";
  }
}

async function deleteProvider(id, error) {
  if (!confirm("Delete your key for this provider? Requests fall back to the system key, if there is one.")) return;
  try {
    await api("DELETE", `/v2/users/me/api-key?provider=${id}`);
    await providers();
  } catch (e) {
    if (e.status !== 401) error.textContent = e.message;
  }
}

/* ---------- models ---------- */

async function models() {
  show("models-error", "");
  const body = $("model-table").tBodies[0];
  body.replaceChildren();
  if (!holds("llm:chat")) return show("models-error", "This key lacks the llm:chat scope, so it may call no model.");
  try {
    const list = await api("GET", "/v1/models");
    body.replaceChildren(
      ...list.data.map((m) => {
        const p = m.pricing || {};
        return h("tr", {}, h("td", {}, h("code", {}, m.id)), h("td", {}, m.owned_by),
          h("td", { class: "num" }, money(p.input_per_1m)),
          h("td", { class: "num" }, money(p.cached_input_per_1m)),
          h("td", { class: "num" }, money(p.output_per_1m)));
      }),
    );
    if (!list.data.length) {
      body.append(h("tr", {}, h("td", { colspan: 5, class: "hint" }, "No model: add a provider key first.")));
    }
  } catch (e) {
    failure("models-error", e);
  }
}

/* ---------- usage ---------- */

let lastReport = null;

async function usage(event) {
  if (event) event.preventDefault();
  show("usage-error", "");
  if (!$("usage-since").value) {
    const now = new Date();
    $("usage-since").value = day(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)));
  }
  const by = $("usage-by").value;
  $("usage-group").textContent = by[0].toUpperCase() + by.slice(1);
  const q = new URLSearchParams({ by, since: $("usage-since").value });
  if ($("usage-until").value) q.set("until", $("usage-until").value);
  const body = $("usage-table").tBodies[0];
  if (!holds("reports")) {
    body.replaceChildren();
    return show("usage-error", "This key lacks the reports scope.");
  }
  try {
    lastReport = { by, report: await api("GET", "/api/v1/usage?" + q) };
  } catch (e) {
    return failure("usage-error", e);
  }
  const r = lastReport.report;
  body.replaceChildren(
    ...r.groups.map((g) => h("tr", {}, h("td", {}, g.key), h("td", { class: "num" }, money(g.cost)),
      h("td", { class: "num" }, g.events), h("td", { class: "num" }, g.input_tokens),
      h("td", { class: "num" }, g.output_tokens))),
  );
  $("usage-total").textContent = money(r.total);
}

/** A CSV cell: quoted when needed, and never read as a formula by a spreadsheet. */
function cell(v) {
  let s = String(v);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function downloadCsv() {
  if (!lastReport) return show("usage-error", "Show a report first.");
  const { by, report } = lastReport;
  const lines = [[by, "cost", "requests", "input_tokens", "output_tokens"]]
    .concat(report.groups.map((g) => [g.key, g.cost, g.events, g.input_tokens, g.output_tokens]))
    .concat([["total", report.total, "", "", ""]]);
  const blob = new Blob([lines.map((l) => l.map(cell).join(",")).join("\r\n") + "\r\n"], { type: "text/csv" });
  const link = h("a", { href: URL.createObjectURL(blob), download: `keymeter-usage-by-${by}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

/* ---------- start ---------- */

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    show("signin-error", "");
    const key = $("signin-key").value.trim();
    $("signin-key").value = "";
    try {
      await signIn(key);
    } catch (e) {
      sessionStorage.removeItem(STORE);
      if (e.status !== 401) failure("signin-error", e);
      else show("signin-error", e.message);
    }
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("create-form").addEventListener("submit", createKey);
  $("secret-copy").addEventListener("click", copySecret);
  $("secret-done").addEventListener("click", forgetSecret);
  $("usage-form").addEventListener("submit", usage);
  $("usage-csv").addEventListener("click", downloadCsv);
  window.addEventListener("hashchange", () => {
    forgetSecret();
    route();
  });
  const key = sessionStorage.getItem(STORE);
  if (key) signIn(key).catch(() => signOut("Sign in again."));
  else openPage("signin");
});

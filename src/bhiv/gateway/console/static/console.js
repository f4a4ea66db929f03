// BHIV Console: what every page shares. Plain JavaScript, no build step, no
// dependency: signing in, calling the gateway's API with the pasted credential,
// building DOM safely (text only, never HTML from data), polling, dialogs.
"use strict";

window.BhivConsole = (() => {
  const KEY = "bhiv.console.credential";
  // Every page lives at /console/<page>, so "../" is the gateway's root wherever
  // the gateway is mounted (127.0.0.1:8000 with bhiv up, or behind an Ingress).
  const ROOT = new URL("../", window.location.href);
  const pages = {};
  const timers = new Set();
  let identity = null;

  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && typeof body === "object" ? body.detail || body.title : body;
      super(`HTTP ${status}${detail ? ": " + detail : ""}`);
      this.status = status;
      this.body = body;
    }
  }

  function credential() {
    return window.sessionStorage.getItem(KEY);
  }

  function authHeaders() {
    const value = credential();
    if (!value) return {};
    // A JWT is three base64url parts; anything else is taken as an API key.
    return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(value)
      ? { Authorization: "Bearer " + value }
      : { "X-API-Key": value };
  }

  function url(path) {
    return new URL(path.replace(/^\/+/, ""), ROOT);
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json", ...authHeaders() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!response.ok) {
      if (response.status === 401 && path !== "auth/verify") signOut("Your credential was refused or has expired; sign in again.");
      throw new ApiError(response.status, data);
    }
    return data;
  }

  // el("td", {class: "x"}, "text", child...) -> an element; strings become text nodes.
  function el(tag, attrs = {}, ...children) {
    const svg = ["svg", "g", "rect", "path", "text", "line", "title", "defs", "marker", "polyline"].includes(tag);
    const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(tbody, rows, emptyText, columns) {
    if (typeof tbody === "string") tbody = document.querySelector(tbody + " tbody");
    tbody.replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns || tbody.parentElement.tHead.rows[0].cells.length, class: "muted" }, emptyText || "Nothing yet."))])
    );
  }

  // True when `data` differs from what `node` last showed: a poll that finds
  // nothing new leaves the DOM (and the keyboard focus in it) alone.
  function changed(node, data) {
    if (typeof node === "string") node = document.querySelector(node);
    const key = JSON.stringify(data);
    if (node.dataset.shown === key) return false;
    node.dataset.shown = key;
    return true;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function took(start, end) {
    if (!start) return "";
    const ms = (end ? new Date(end) : new Date()) - new Date(start);
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  }

  // Colour classes shared by tables and graphs (each state is also written as text).
  const STATE_CLASS = {
    up: "ok", healthy: "ok", succeeded: "ok", closed: "ok", active: "ok",
    degraded: "warn", pending: "warn", "half-opened": "warn", compensating: "warn", unknown: "warn",
    waiting: "warn",
    down: "bad", unhealthy: "bad", failed: "bad", dead: "bad", opened: "bad", compensation_failed: "bad", error: "bad",
    running: "run", queued: "run",
    skipped: "idle", cancelled: "idle", "not running": "idle", inactive: "idle",
    compensated: "comp",
  };

  function stateClass(state) {
    return "state-" + (STATE_CLASS[state] || "idle");
  }

  function chip(state) {
    return el("span", { class: "chip " + stateClass(state) }, state);
  }

  function say(text, isError = false) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  // When the page's data was last read: shown, not announced (it changes every poll).
  function stamp() {
    document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  }

  function report(error) {
    say(error instanceof ApiError ? error.message : `Could not reach the gateway (${error.message}).`, true);
  }

  // fn runs now, then every `ms` after it finishes; paused while the tab is hidden.
  function poll(fn, ms) {
    let stopped = false;
    let timer = null;
    let failing = false;
    const tick = async () => {
      timer = null;
      if (stopped) return;
      if (!document.hidden) {
        try {
          await fn();
          if (failing) say("The gateway answers again.");
          failing = false;
        } catch (error) {
          failing = true;
          report(error);
        }
      }
      if (!stopped) timer = window.setTimeout(tick, ms);
    };
    const handle = { stop() { stopped = true; if (timer) window.clearTimeout(timer); timers.delete(handle); } };
    timers.add(handle);
    tick();
    return handle;
  }

  // An accessible confirmation (the page's <dialog>), with a text field per name in
  // `fields` (path parameters such as a signal's name) and a JSON body when `body` is
  // given: resolves with {values, body}, or null when the user backs out.
  function confirmAction(title, text, { body, fields = [] } = {}) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    const inputs = fields.map((name, i) => el("input", { id: `confirm-field-${i}`, type: "text", required: true, spellcheck: "false" }));
    document.getElementById("confirm-fields").replaceChildren(...fields.map((name, i) =>
      el("div", {}, el("label", { for: `confirm-field-${i}` }, name.replace(/_/g, " ")), inputs[i])));
    const field = document.getElementById("confirm-body-field");
    const area = document.getElementById("confirm-body");
    field.hidden = body === undefined;
    area.value = body === undefined ? "" : body;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"
        ? { values: Object.fromEntries(fields.map((name, i) => [name, inputs[i].value.trim()])), body: area.value }
        : null), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      (inputs[0] || (body === undefined ? document.getElementById("confirm-yes") : area)).focus();
    });
  }

  // A button that asks first, then calls the API and reports the outcome. `path` is a
  // string, or a function of the dialog's field values (each already URL-encoded).
  function actionButton(label, { title, text, method = "POST", path, body, fields = [], done }) {
    return el("button", {
      type: "button",
      onclick: async () => {
        const answer = await confirmAction(title, text, { body, fields });
        if (answer === null) return;
        const missing = fields.filter((name) => !answer.values[name]);
        if (missing.length) {
          say(`${label}: ${missing.join(", ")} is required.`, true);
          return;
        }
        let payload;
        if (body !== undefined) {
          try {
            payload = answer.body.trim() ? JSON.parse(answer.body) : undefined;
          } catch (error) {
            say(`The request body is not JSON: ${error.message}`, true);
            return;
          }
        }
        const encoded = Object.fromEntries(Object.entries(answer.values).map(([k, v]) => [k, encodeURIComponent(v)]));
        try {
          const result = await api(typeof path === "function" ? path(encoded) : path, { method, body: payload });
          say(`${label}: done.`);
          if (done) await done(result);
        } catch (error) {
          report(error);
        }
      },
    }, label);
  }

  function page(name, module) {
    pages[name] = module;
  }

  function catalog() {
    return JSON.parse(document.getElementById("catalog").textContent);
  }

  function hasRole(role) {
    const rank = { viewer: 1, editor: 2, admin: 3 };
    return (identity?.roles || []).some((r) => (rank[r] || 0) >= rank[role]);
  }

  function showSignedIn() {
    document.getElementById("sign-in").hidden = true;
    document.getElementById("content").hidden = false;
    document.getElementById("who").hidden = false;
    document.getElementById("who-text").textContent = `${identity.subject} (${identity.roles.join(", ")})`;
    const module = pages[document.body.dataset.page];
    if (module) module.start();
  }

  function showSignIn(message) {
    for (const handle of [...timers]) handle.stop();
    document.getElementById("content").hidden = true;
    document.getElementById("who").hidden = true;
    document.getElementById("sign-in").hidden = false;
    document.getElementById("sign-in-error").textContent = message || "";
    document.getElementById("credential").focus();
  }

  function signOut(message) {
    window.sessionStorage.removeItem(KEY);
    identity = null;
    showSignIn(message);
  }

  async function verify() {
    try {
      identity = await api("auth/verify");
      showSignedIn();
    } catch (error) {
      window.sessionStorage.removeItem(KEY);
      showSignIn(error instanceof ApiError && error.status === 401
        ? "That token or API key was not accepted."
        : `Could not check the credential: ${error.message}`);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("credential");
      const value = input.value.trim();
      input.value = "";
      if (!value) return;
      window.sessionStorage.setItem(KEY, value);
      verify();
    });
    document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
    if (credential()) verify();
    else showSignIn();
  });

  return { api, el, fill, changed, when, took, chip, stateClass, say, stamp, report, poll, confirmAction, actionButton, page, catalog, hasRole, ApiError };
})();

// Integrations: webhook subscriptions, their delivery log and dead letters with
// replay; inbound sources with their last messages; sync jobs with their runs.
"use strict";

(() => {
  const C = window.BhivConsole;
  const { el } = C;
  const API = "api/integrations";
  let subscriptions = [];

  function chosenSubscription() {
    return document.getElementById("delivery-subscription").value;
  }

  function showDeliveries(id, status) {
    document.getElementById("delivery-subscription").value = String(id);
    if (status !== undefined) document.getElementById("delivery-status").value = status;
    refreshDeliveries().catch(C.report);
    document.getElementById("deliveries-title").scrollIntoView();
  }

  async function refreshSubscriptions() {
    subscriptions = (await C.api(`${API}/subscriptions?limit=200`)).items;
    const dead = await Promise.all(subscriptions.map((s) =>
      C.api(`${API}/subscriptions/${s.id}/deliveries?status=dead&limit=1`).then((p) => p.total)));
    if (!C.changed("#subscriptions-table", [subscriptions, dead])) return;
    C.fill("#subscriptions-table", subscriptions.map((s, i) => el("tr", { "data-subscription": s.id },
      el("th", { scope: "row" }, `#${s.id}`),
      el("td", {}, el("code", {}, s.url), s.description ? el("div", { class: "muted small" }, s.description) : ""),
      el("td", { class: "small" }, s.event_types.join(", ") || "every event"),
      el("td", {}, C.chip(s.active ? "active" : "inactive"), s.disabled_reason ? el("div", { class: "muted small" }, s.disabled_reason) : ""),
      el("td", {}, el("span", { class: "dead-count" }, `${dead[i]} dead`)),
      el("td", {},
        el("button", { type: "button", onclick: () => showDeliveries(s.id, "dead") }, "Dead letters"), " ",
        dead[i] ? C.actionButton("Replay all dead", {
          title: `Replay every dead delivery of subscription #${s.id}?`,
          text: `${dead[i]} deliveries to ${s.url} start a fresh round of attempts.`,
          path: `${API}/subscriptions/${s.id}/replay`,
          done: refreshAll,
        }) : ""),
    )), "No subscriptions.");
    const select = document.getElementById("delivery-subscription");
    const keep = select.value;
    select.replaceChildren(...subscriptions.map((s) => el("option", { value: s.id }, `#${s.id} ${s.url}`)));
    if (keep && subscriptions.some((s) => String(s.id) === keep)) select.value = keep;
  }

  async function refreshDeliveries() {
    const id = chosenSubscription();
    if (!id) {
      C.fill("#deliveries-table", [], "No subscription chosen.");
      return;
    }
    const status = document.getElementById("delivery-status").value;
    const query = new URLSearchParams({ limit: "100" });
    if (status) query.set("status", status);
    const page = await C.api(`${API}/subscriptions/${id}/deliveries?${query}`);
    if (!C.changed("#deliveries-table", [id, status, page.items])) return;
    C.fill("#deliveries-table", page.items.map((d) => el("tr", { "data-delivery": d.id, "data-state": d.status },
      el("th", { scope: "row" }, `#${d.id}`),
      el("td", {}, d.event_type, el("div", { class: "muted small" }, d.event_id)),
      el("td", {}, C.chip(d.status)),
      el("td", {}, String(d.attempts)),
      el("td", {}, String(d.replays)),
      el("td", { class: "small" }, d.last_status_code ? `HTTP ${d.last_status_code}` : "",
        d.last_error && d.last_error !== `HTTP ${d.last_status_code}` ? el("div", { class: "muted" }, d.last_error) : ""),
      el("td", {}, C.when(d.updated_at)),
      el("td", {}, d.status === "dead" ? C.actionButton("Replay", {
        title: `Replay delivery #${d.id}?`,
        text: `${d.event_type} (${d.event_id}) is sent again with the same webhook-id, as a fresh round of attempts.`,
        path: `${API}/deliveries/${d.id}/replay`,
        done: refreshAll,
      }) : ""),
    )), status === "dead" ? "No dead letters." : "No deliveries.");
  }

  // One sub-section per item (a source, a sync job), each with a small table of its latest records.
  function perItem(box, items, records, { empty, label, heading, note, caption, headers, cells, none }) {
    if (!C.changed(box, [items, records])) return;
    if (!items.length) {
      box.replaceChildren(el("p", { class: "muted" }, empty));
      return;
    }
    box.replaceChildren(...items.map((item, i) => el("section", { class: "sub", "aria-label": label(item) },
      el("h3", {}, item.name, " ", C.chip(heading(item))),
      el("p", { class: "muted small" }, note(item, records[i])),
      el("table", {},
        el("caption", { class: "sr-only" }, caption(item)),
        el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, records[i].items.length
          ? records[i].items.map((r) => el("tr", {}, ...cells(r).map((c) => el("td", {}, c))))
          : el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, none))),
      ),
    )));
  }

  async function refreshSources() {
    const sources = (await C.api(`${API}/webhook-sources?limit=100`)).items;
    const messages = await Promise.all(sources.map((s) => C.api(`${API}/webhook-sources/${s.id}/messages?limit=5`)));
    perItem(document.getElementById("sources"), sources, messages, {
      empty: "No inbound sources.",
      label: (s) => `Source ${s.name}`,
      heading: (s) => (s.active ? "active" : "inactive"),
      note: (s, page) => `Senders post to ${s.endpoint} · ${page.total} messages`,
      caption: (s) => `Last messages from ${s.name}`,
      headers: ["Received", "Event type", "webhook-id", "Duplicates", "Body"],
      cells: (m) => [C.when(m.received_at), m.event_type || "", el("code", {}, m.message_id), String(m.duplicates),
        el("code", { class: "small clip" }, m.body.slice(0, 160))],
      none: "No messages yet.",
    });
  }

  async function refreshSync() {
    const jobs = (await C.api(`${API}/sync-jobs?limit=100`)).items;
    const runs = await Promise.all(jobs.map((j) => C.api(`${API}/sync-jobs/${j.id}/runs?limit=5`)));
    perItem(document.getElementById("sync-jobs"), jobs, runs, {
      empty: "No sync jobs.",
      label: (j) => `Sync job ${j.name}`,
      heading: (j) => (j.enabled ? "active" : "inactive"),
      note: (j) => `${j.source_path} → ${j.target}` + (j.interval_seconds ? ` · every ${j.interval_seconds} s` : " · manual") +
        (j.next_run_at ? ` · next ${C.when(j.next_run_at)}` : ""),
      caption: (j) => `Last runs of ${j.name}`,
      headers: ["Run", "Trigger", "Status", "Started", "Took", "Created", "Updated", "Failed", "Conflicts"],
      cells: (r) => [`#${r.id}`, r.trigger, C.chip(r.status), C.when(r.started_at), C.took(r.started_at, r.finished_at),
        String(r.created), String(r.updated), String(r.failed), String(r.conflicts)],
      none: "No runs yet.",
    });
  }

  async function refreshAll() {
    await refreshSubscriptions();
    await refreshDeliveries();
    C.stamp();
  }

  C.page("integrations", {
    start() {
      for (const id of ["delivery-subscription", "delivery-status"]) {
        document.getElementById(id).addEventListener("change", () => refreshDeliveries().catch(C.report));
      }
      C.poll(refreshAll, 3000);
      C.poll(async () => { await refreshSources(); await refreshSync(); }, 10000);
    },
  });
})();

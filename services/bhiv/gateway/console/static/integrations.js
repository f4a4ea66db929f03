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

  async function refreshSources() {
    const sources = (await C.api(`${API}/webhook-sources?limit=100`)).items;
    const messages = await Promise.all(sources.map((s) => C.api(`${API}/webhook-sources/${s.id}/messages?limit=5`)));
    const box = document.getElementById("sources");
    if (!C.changed(box, [sources, messages])) return;
    if (!sources.length) {
      box.replaceChildren(el("p", { class: "muted" }, "No inbound sources."));
      return;
    }
    box.replaceChildren(...sources.map((s, i) => el("section", { class: "sub", "aria-label": `Source ${s.name}` },
      el("h3", {}, s.name, " ", C.chip(s.active ? "active" : "inactive")),
      el("p", { class: "muted small" }, `Senders post to ${s.endpoint} · ${messages[i].total} messages`),
      el("table", {},
        el("caption", { class: "sr-only" }, `Last messages from ${s.name}`),
        el("thead", {}, el("tr", {}, ...["Received", "Event type", "webhook-id", "Duplicates", "Body"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, messages[i].items.length ? messages[i].items.map((m) => el("tr", {},
          el("td", {}, C.when(m.received_at)), el("td", {}, m.event_type || ""), el("td", {}, el("code", {}, m.message_id)),
          el("td", {}, String(m.duplicates)), el("td", {}, el("code", { class: "small clip" }, m.body.slice(0, 160))),
        )) : el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No messages yet.")))),
    )));
  }

  async function refreshSync() {
    const jobs = (await C.api(`${API}/sync-jobs?limit=100`)).items;
    const runs = await Promise.all(jobs.map((j) => C.api(`${API}/sync-jobs/${j.id}/runs?limit=5`)));
    const box = document.getElementById("sync-jobs");
    if (!C.changed(box, [jobs, runs])) return;
    if (!jobs.length) {
      box.replaceChildren(el("p", { class: "muted" }, "No sync jobs."));
      return;
    }
    box.replaceChildren(...jobs.map((j, i) => el("section", { class: "sub", "aria-label": `Sync job ${j.name}` },
      el("h3", {}, j.name, " ", C.chip(j.enabled ? "active" : "inactive")),
      el("p", { class: "muted small" }, `${j.source_path} → ${j.target}`,
        j.interval_seconds ? ` · every ${j.interval_seconds} s` : " · manual", j.next_run_at ? ` · next ${C.when(j.next_run_at)}` : ""),
      el("table", {},
        el("caption", { class: "sr-only" }, `Last runs of ${j.name}`),
        el("thead", {}, el("tr", {}, ...["Run", "Trigger", "Status", "Started", "Took", "Created", "Updated", "Failed", "Conflicts"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, runs[i].items.length ? runs[i].items.map((r) => el("tr", {},
          el("td", {}, `#${r.id}`), el("td", {}, r.trigger), el("td", {}, C.chip(r.status)), el("td", {}, C.when(r.started_at)),
          el("td", {}, C.took(r.started_at, r.finished_at)), el("td", {}, String(r.created)), el("td", {}, String(r.updated)),
          el("td", {}, String(r.failed)), el("td", {}, String(r.conflicts)),
        )) : el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No runs yet.")))),
    )));
  }

  async function refreshAll() {
    await refreshSubscriptions();
    await refreshDeliveries();
    C.say(`Updated ${new Date().toLocaleTimeString()}.`);
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

// Logistics and CRM at a glance: low stock, shipments by status, leads by stage
// and overdue tickets, each with a link to the API answer it comes from (shown
// here as JSON, fetched with your credential, when followed).
"use strict";

(() => {
  const C = window.BhivConsole;
  const { el } = C;
  const SHIPMENT_STATUSES = ["created", "picked", "shipped", "in_transit", "delivered", "cancelled"];

  function jsonLink(path) {
    return el("a", { class: "json", "data-api": path, href: "../" + path }, "JSON");
  }

  async function showJson(path) {
    const view = document.getElementById("json-view");
    document.getElementById("json-title").textContent = "GET /" + path;
    document.getElementById("json-body").textContent = JSON.stringify(await C.api(path), null, 2);
    view.hidden = false;
    view.focus();
  }

  async function lowStock() {
    const alerts = await C.api("api/logistics/alerts/reorder?limit=20");
    C.fill("#low-stock-table", alerts.map((a) => el("tr", {},
      el("th", { scope: "row" }, a.item.sku), el("td", {}, a.item.name),
      el("td", {}, String(a.item.quantity - a.item.reserved)), el("td", {}, String(a.item.reorder_level)),
      el("td", {}, a.supplier ? a.supplier.name : "—"))), "No item is at or below its reorder level.");
  }

  async function shipments() {
    const counts = await Promise.all(SHIPMENT_STATUSES.map((s) => C.api(`api/logistics/shipments?status=${s}&limit=1`)));
    C.fill("#shipments-table", SHIPMENT_STATUSES.map((s, i) => el("tr", { "data-status": s },
      el("th", { scope: "row" }, s.replace("_", " ")), el("td", {}, String(counts[i].total)),
      el("td", {}, jsonLink(`api/logistics/shipments?status=${s}`)))));
  }

  async function crm() {
    const overview = await C.api("api/crm/analytics/overview");
    C.fill("#leads-table", overview.pipeline.by_stage.map((s) => el("tr", { "data-stage": s.stage },
      el("th", { scope: "row" }, s.stage), el("td", {}, String(s.leads)), el("td", {}, String(s.value)))));
    const tickets = await C.api("api/crm/tickets?overdue=true&sort=due_at&limit=20");
    C.fill("#tickets-table", tickets.items.map((t) => el("tr", {},
      el("th", { scope: "row" }, `#${t.id}`), el("td", {}, t.subject), el("td", {}, t.priority),
      el("td", {}, t.status), el("td", {}, C.when(t.due_at)))), "No overdue tickets.");
  }

  async function refresh() {
    const results = await Promise.allSettled([lowStock(), shipments(), crm()]);
    const failed = results.filter((r) => r.status === "rejected");
    if (failed.length) C.report(failed[0].reason);
    else C.stamp();
  }

  C.page("glance", {
    start() {
      document.getElementById("content").addEventListener("click", (event) => {
        const link = event.target.closest("a.json");
        if (!link) return;
        // The plain link would open without your credential (401): show it here instead.
        event.preventDefault();
        showJson(link.dataset.api).catch(C.report);
      });
      C.poll(refresh, 10000);
    },
  });
})();

// LLM: usage and cost over time per model or tenant (a stacked bar chart drawn
// as SVG from the usage records), totals per model, tenant, key or provider (the
// service's own analytics), and budgets (per-key policies; the caller's quota).
"use strict";

(() => {
  const C = window.BhivConsole;
  const { el } = C;
  const API = "api/llm";
  const MAX_PAGES = 10; // 5,000 records: the chart says so when a period holds more
  // Distinguishable on white and for the common colour-vision deficiencies (Okabe–Ito).
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

  function value(record, measure) {
    return measure === "requests" ? 1 : Number(record[measure]) || 0;
  }

  async function records(since) {
    const all = [];
    let total = 0;
    for (let page = 0; page < MAX_PAGES; page++) {
      const query = new URLSearchParams({ since: since.toISOString(), limit: "500", offset: String(page * 500) });
      const answer = await C.api(`${API}/usage?${query}`);
      total = answer.total;
      all.push(...answer.items);
      if (all.length >= total || !answer.items.length) break;
    }
    return { all, total };
  }

  function buckets(days, now) {
    const hourly = days <= 1;
    const step = hourly ? 3600e3 : 86400e3;
    const end = hourly ? Math.floor(now / step) * step : Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
    const count = hourly ? 24 : days;
    const starts = Array.from({ length: count }, (_, i) => end - (count - 1 - i) * step);
    return { starts, step, hourly };
  }

  function chart(container, { starts, hourly }, series, totals, measure) {
    const W = 760, H = 260, left = 64, bottom = 36, top = 12;
    const max = Math.max(0, ...totals);
    const barW = (W - left - 8) / starts.length;
    const svg = el("svg", {
      viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "chart-svg",
      "aria-label": `${measure.replace("_", " ")} per ${hourly ? "hour" : "day"}, stacked by ${series.by}; ` +
        `largest ${hourly ? "hour" : "day"}: ${max.toFixed(measure === "cost_usd" ? 4 : 0)}`,
    });
    const y = (v) => H - bottom - (max ? (v / max) * (H - bottom - top) : 0);
    for (const frac of [0, 0.5, 1]) {
      const v = max * frac;
      svg.append(el("line", { x1: left, x2: W, y1: y(v), y2: y(v), class: "grid" }),
        el("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, measure === "cost_usd" ? v.toFixed(4) : Math.round(v)));
    }
    starts.forEach((start, i) => {
      let base = 0;
      series.names.forEach((name, s) => {
        const v = series.values[s][i];
        if (!v) return;
        const x = left + i * barW + 2;
        svg.append(el("rect", { x, y: y(base + v), width: Math.max(1, barW - 4), height: y(base) - y(base + v), fill: PALETTE[s % PALETTE.length], class: "bar" },
          el("title", {}, `${new Date(start).toISOString().slice(0, hourly ? 13 : 10)} ${name}: ${v}`)));
        base += v;
      });
      const every = Math.ceil(starts.length / 8);
      if (i % every === 0) {
        const label = hourly ? new Date(start).toISOString().slice(11, 16) : new Date(start).toISOString().slice(5, 10);
        svg.append(el("text", { x: left + i * barW + barW / 2, y: H - bottom + 16, class: "axis", "text-anchor": "middle" }, label));
      }
    });
    const legend = el("ul", { class: "legend plain" }, series.names.map((name, s) =>
      el("li", {}, el("span", { class: "swatch", "data-colour": s % PALETTE.length }), name)));
    container.replaceChildren(svg, legend);
    // The swatches take their colour from the SVG palette via the DOM (no inline style in markup).
    legend.querySelectorAll(".swatch").forEach((sw) => { sw.style.background = PALETTE[Number(sw.dataset.colour)]; });
  }

  async function refreshChart() {
    const by = document.getElementById("usage-by").value;
    const measure = document.getElementById("usage-measure").value;
    const days = Number(document.getElementById("usage-days").value);
    const now = new Date();
    const grid = buckets(days, now);
    const { all, total } = await records(new Date(grid.starts[0]));
    const names = [...new Set(all.map((r) => (by === "model" ? r.model_alias : r.tenant) || "(none)"))].sort();
    const values = names.map(() => grid.starts.map(() => 0));
    for (const r of all) {
      const i = Math.floor((new Date(r.created_at) - grid.starts[0]) / grid.step);
      if (i < 0 || i >= grid.starts.length) continue;
      values[names.indexOf((by === "model" ? r.model_alias : r.tenant) || "(none)")][i] += value(r, measure);
    }
    const totals = grid.starts.map((_, i) => values.reduce((sum, row) => sum + row[i], 0));
    chart(document.getElementById("usage-chart"), grid, { by, names, values }, totals, measure);
    document.getElementById("usage-note").textContent = all.length < total
      ? `Drawn from the newest ${all.length} of ${total} records in the period.`
      : `${total} record${total === 1 ? "" : "s"} in the period.` + (C.hasRole("admin") ? "" : " Only your own usage is shown (admins see everyone's).");
  }

  async function refreshTotals() {
    const by = document.getElementById("totals-by").value;
    const analytics = await C.api(`${API}/analytics/usage?group_by=${by}`);
    document.getElementById("totals-key").textContent = by[0].toUpperCase() + by.slice(1);
    C.fill("#totals-table", analytics.rows.map((g) => el("tr", {},
      el("th", { scope: "row" }, g.key || "(none)"), el("td", {}, String(g.requests)), el("td", {}, String(g.total_tokens)),
      el("td", {}, String(g.cost_usd)), el("td", {}, String(g.errors)))), "No usage yet.");
  }

  async function refreshBudgets() {
    const quota = await C.api(`${API}/quota`);
    document.getElementById("quota").textContent =
      `You (${quota.subject}, policy ${quota.policy}): spent ${quota.spent_this_month_usd} USD this month` +
      (quota.monthly_budget_usd !== null ? ` of ${quota.monthly_budget_usd} (${quota.remaining_usd} left).` : "; no monthly budget.");
    try {
      const policies = await C.api(`${API}/policies?limit=200`);
      C.fill("#budgets-table", policies.items.map((p) => el("tr", {},
        el("th", { scope: "row" }, p.subject), el("td", {}, p.monthly_budget_usd ?? "none"),
        el("td", {}, p.requests_per_minute ?? "—"), el("td", {}, p.tokens_per_minute ?? "—"), el("td", {}, p.safety_action))),
      "No per-key policies: the settings' defaults apply.");
      document.getElementById("budgets-note").textContent = "";
    } catch (error) {
      if (!(error instanceof C.ApiError) || error.status !== 403) throw error;
      C.fill("#budgets-table", [], "Per-key policies are for admins.");
      document.getElementById("budgets-note").textContent = "The API answered 403: listing every key's policy needs the admin role.";
    }
  }

  async function refresh() {
    await refreshChart();
    await refreshTotals();
    await refreshBudgets();
    C.stamp();
  }

  C.page("llm", {
    start() {
      for (const id of ["usage-by", "usage-measure", "usage-days"]) {
        document.getElementById(id).addEventListener("change", () => refreshChart().catch(C.report));
      }
      document.getElementById("totals-by").addEventListener("change", () => refreshTotals().catch(C.report));
      C.poll(refresh, 30000);
    },
  });
})();

// Platform: every module with its health, instances, breaker and version; the
// dependency graph, polled every few seconds (GET /services) and redrawn in place.
"use strict";

(() => {
  const C = window.BhivConsole;
  const { el } = C;
  const POLL_MS = 2000;
  const VERSION_MS = 30000;
  const versions = {};
  let versionsAt = 0;

  // Local mode: the catalog's startup stages; a service waits for every service
  // of the stage before its own (what `bhiv up` does, and what the sample
  // BhivModules' dependsOn say).
  function catalogGraph(registry) {
    const entries = C.catalog().services;
    const stages = [...new Set(entries.map((e) => e.stage))].sort((a, b) => a - b);
    const routed = new Map(registry.services.map((s) => [s.name, s]));
    const nodes = entries.map((e) => {
      const svc = routed.get(e.name);
      let state = "not running", detail = "";
      if (e.name === "gateway") state = "up";
      else if (svc) {
        state = svc.status;
        detail = `${svc.instances.filter((i) => i.available).length}/${svc.instances.length} in rotation`;
      }
      return { id: e.name, label: e.name, layer: stages.indexOf(e.stage), state, detail };
    });
    const edges = [];
    for (const e of entries) {
      const before = stages.filter((s) => s < e.stage).pop();
      if (before === undefined) continue;
      for (const dep of entries.filter((d) => d.stage === before)) edges.push([dep.name, e.name]);
    }
    return { nodes, edges };
  }

  function moduleState(m) {
    const ready = (m.conditions || []).find((c) => c.type === "Ready");
    if (ready && ready.status === "True") return "up";
    if ((m.waitingFor || []).length) return "waiting";
    if ((m.readyReplicas || 0) > 0) return "degraded";
    return "down";
  }

  // Kubernetes mode: the BhivModules and their dependsOn.
  function moduleGraph(modules) {
    const names = new Set(modules.map((m) => m.name));
    const nodes = modules.map((m) => ({
      id: m.name, label: m.name, state: moduleState(m),
      detail: (m.waitingFor || []).length ? `for ${m.waitingFor.join(", ")}` : `${m.replicasReady || "0/0"} ready`,
    }));
    const edges = [];
    for (const m of modules) for (const dep of m.dependsOn || []) if (names.has(dep)) edges.push([dep, m.name]);
    return { nodes, edges };
  }

  async function refreshVersions(registry) {
    if (Date.now() - versionsAt < VERSION_MS) return;
    versionsAt = Date.now();
    const targets = [["gateway", "info"], ...registry.services.filter((s) => s.status !== "down").map((s) => [s.name, s.prefix.replace(/^\/+/, "") + "/info"])];
    await Promise.all(targets.map(async ([name, path]) => {
      try {
        versions[name] = (await C.api(path)).version;
      } catch {
        versions[name] = versions[name] || "";
      }
    }));
  }

  function instanceList(svc) {
    return el("ul", { class: "plain" }, svc.instances.map((i) => el("li", {},
      el("code", {}, i.url), " ", C.chip(i.health),
      i.ejected ? el("span", { class: "muted" }, ` ejected for ${i.ejected_for_seconds}s`) : "",
      i.platform_ready === false ? el("span", { class: "muted" }, " not Ready in Kubernetes") : "",
      i.last_error ? el("div", { class: "muted small" }, i.last_error) : "",
    )));
  }

  function kubernetesCell(module) {
    if (!module) return el("span", { class: "muted" }, "—");
    return el("div", {},
      el("div", {}, `replicas ${module.replicasReady || "0/0"}`),
      (module.waitingFor || []).length ? el("div", {}, "waiting for ", module.waitingFor.join(", ")) : "",
      el("ul", { class: "plain small" }, (module.conditions || []).map((c) => el("li", {},
        `${c.type}=${c.status}`, c.reason ? ` (${c.reason})` : "", c.message ? el("div", { class: "muted" }, c.message) : ""))));
  }

  async function refresh() {
    const registry = await C.api("services");
    const modules = registry.modules || null;
    document.getElementById("discovery").textContent =
      `Discovery: ${registry.discovery}; rate limits kept in ${registry.rate_limit_backend}.`;
    document.getElementById("graph-basis").textContent = modules
      ? "the BhivModules' dependsOn" : "the catalog's startup stages";
    BhivGraph.draw(document.getElementById("platform-graph"),
      modules ? moduleGraph(modules) : catalogGraph(registry),
      { label: "Dependency graph of the platform's modules, startup order left to right" });
    await refreshVersions(registry);
    const byService = new Map((modules || []).map((m) => [m.service, m]));
    C.fill("#services-table", registry.services.map((svc) => el("tr", { "data-service": svc.name },
      el("th", { scope: "row" }, svc.name, el("div", { class: "muted small" }, svc.prefix)),
      el("td", { class: "service-status" }, C.chip(svc.status)),
      // Kubernetes: the module's image when the service's /info does not answer.
      el("td", {}, versions[svc.name] || byService.get(svc.name)?.image || ""),
      el("td", {}, instanceList(svc)),
      el("td", {}, C.chip(svc.breaker.state), ` ${svc.breaker.failures} failures`),
      el("td", {}, kubernetesCell(byService.get(svc.name))),
    )), "No service is routed.");
    C.stamp();
  }

  C.page("platform", {
    start() {
      C.poll(refresh, POLL_MS);
    },
  });
})();

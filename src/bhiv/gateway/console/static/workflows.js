// Workflows: runs filtered by workflow and status; a run's steps drawn as its
// DAG with each step's state, timings, attempts, input, output and error; the
// run operations the agent-orchestration API offers, found in its OpenAPI
// (POST /runs/{run_id}/<operation>), as buttons that ask first.
"use strict";

(() => {
  const C = window.BhivConsole;
  const { el } = C;
  const AGENTS = "api/agents";
  const FINAL = new Set(["succeeded", "failed", "compensated", "cancelled"]);
  const definitions = new Map();
  let operations = null;
  let selectedStep = null;
  let current = null;
  let announced = null;

  const params = () => new URLSearchParams(window.location.search);

  async function definition(id) {
    if (!definitions.has(id)) definitions.set(id, await C.api(`${AGENTS}/workflows/${id}`));
    return definitions.get(id);
  }

  // The run operations the service's API has: every POST under /runs/{run_id}/.
  // One with {step_id} in its path acts on a step (a button in the step's panel);
  // any other path parameter (a signal's name) is asked for when it is pressed.
  function operationsFrom(doc) {
    const found = [];
    for (const [path, item] of Object.entries(doc.paths || {})) {
      if (!path.startsWith("/runs/{run_id}/") || !item.post) continue;
      const params = [...path.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g)].map((m) => m[1]).filter((p) => p !== "run_id");
      const op = item.post;
      const content = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
      const name = path.slice("/runs/{run_id}/".length).split("/").filter((part) => !part.startsWith("{")).join(" ");
      found.push({
        path,
        name,
        summary: op.summary || name,
        description: op.description || "",
        body: content ? exampleBody(content, doc) : undefined,
        step: params.includes("step_id"),
        fields: params.filter((p) => p !== "step_id"),
      });
    }
    return found.sort((a, b) => a.path.localeCompare(b.path));
  }

  async function runOperations() {
    if (!operations) operations = operationsFrom(await C.api(`${AGENTS}/openapi.json`));
    return operations;
  }

  // The API path of an operation, its parameters filled (values already URL-encoded).
  function operationPath(op, values) {
    return AGENTS + op.path.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name) => values[name]);
  }

  function exampleBody(content, doc) {
    if (content.example !== undefined) return JSON.stringify(content.example, null, 2);
    let schema = content.schema || {};
    if (schema.$ref) schema = doc.components.schemas[schema.$ref.split("/").pop()] || {};
    const example = {};
    for (const [name, prop] of Object.entries(schema.properties || {})) {
      if ((schema.required || []).includes(name)) example[name] = (prop.examples || [])[0] ?? (prop.type === "object" ? {} : "");
    }
    return JSON.stringify(example, null, 2);
  }

  // -- the list --------------------------------------------------------------

  async function loadWorkflowNames() {
    const page = await C.api(`${AGENTS}/workflows?latest=true&limit=500&sort=name`);
    const select = document.getElementById("filter-workflow");
    const chosen = params().get("workflow") || "";
    select.replaceChildren(el("option", { value: "" }, "all"),
      ...page.items.map((w) => el("option", { value: w.name, selected: w.name === chosen }, w.name)));
    document.getElementById("filter-status").value = params().get("status") || "";
  }

  function filtersChanged() {
    const query = new URLSearchParams();
    for (const [key, id] of [["workflow", "filter-workflow"], ["status", "filter-status"]]) {
      const value = document.getElementById(id).value;
      if (value) query.set(key, value);
    }
    window.history.replaceState(null, "", "workflows" + (query.size ? "?" + query : ""));
    refreshRuns();
  }

  async function refreshRuns() {
    const query = new URLSearchParams({ limit: "100" });
    const workflow = document.getElementById("filter-workflow").value;
    const status = document.getElementById("filter-status").value;
    if (workflow) query.set("workflow", workflow);
    if (status) query.set("status", status);
    const page = await C.api(`${AGENTS}/runs?${query}`);
    C.stamp();
    if (!C.changed("#runs-table", page)) return;
    C.fill("#runs-table", page.items.map((run) => el("tr", { "data-run": run.id },
      el("th", { scope: "row" }, el("a", { href: `workflows?run=${run.id}` }, `#${run.id}`)),
      el("td", {}, `${run.workflow} v${run.version}`),
      el("td", {}, C.chip(run.status)),
      el("td", {}, C.when(run.started_at)),
      el("td", {}, C.took(run.started_at, run.finished_at)),
      el("td", {}, run.started_by || ""),
      el("td", { class: "small" }, run.error || ""),
    )), "No runs match.");
    document.getElementById("runs-count").textContent = `${page.items.length} of ${page.total} runs shown.`;
  }

  // -- one run ---------------------------------------------------------------

  function fact(dl, name, value) {
    if (value === undefined || value === null || value === "") return;
    dl.append(el("dt", {}, name), el("dd", {}, value));
  }

  function json(value) {
    return value === undefined || value === null ? "—" : JSON.stringify(value, null, 2);
  }

  function showStep(stepId, focus) {
    selectedStep = stepId;
    const step = current.run.steps.find((s) => s.step_id === stepId);
    const spec = current.definition.spec.steps.find((s) => s.id === stepId) || {};
    if (!step) return;
    const panel = document.getElementById("step-detail");
    panel.hidden = false;
    document.getElementById("step-title").textContent = `Step ${step.step_id}`;
    const dl = document.getElementById("step-facts");
    dl.replaceChildren();
    fact(dl, "Type", step.type);
    fact(dl, "Status", C.chip(step.status));
    fact(dl, "Attempts", String(step.attempts));
    fact(dl, "Needs", (spec.needs || []).join(", "));
    fact(dl, "Started", C.when(step.started_at));
    fact(dl, "Finished", C.when(step.finished_at));
    fact(dl, "Took", C.took(step.started_at, step.finished_at));
    fact(dl, "Next attempt", C.when(step.due_at));
    fact(dl, "Task", step.task_id ? `#${step.task_id}` : "");
    fact(dl, "Compensated", C.when(step.compensated_at));
    fact(dl, "Error", step.error ? el("span", { class: "error" }, step.error) : "");
    const stepOps = document.getElementById("step-ops");
    if (C.changed(stepOps, [step.step_id, Boolean(operations)])) {
      stepOps.replaceChildren(...operationButtons(operations || [], step.step_id));
    }
    document.getElementById("step-input").textContent = json(spec);
    document.getElementById("step-output").textContent = json(step.output);
    if (focus) panel.focus();
  }

  function drawRun() {
    const { run, definition: def } = current;
    document.getElementById("run-title").textContent = `Run #${run.id}: ${run.workflow} v${run.version}`;
    const dl = document.getElementById("run-summary");
    dl.replaceChildren();
    fact(dl, "Status", C.chip(run.status));
    fact(dl, "Started", C.when(run.started_at));
    fact(dl, "Finished", C.when(run.finished_at));
    fact(dl, "Took", C.took(run.started_at, run.finished_at));
    fact(dl, "Started by", run.started_by);
    fact(dl, "Error", run.error ? el("span", { class: "error" }, run.error) : "");
    fact(dl, "Input", el("pre", {}, json(run.input)));
    const statusOf = new Map(run.steps.map((s) => [s.step_id, s]));
    const nodes = def.spec.steps.map((s) => {
      const step = statusOf.get(s.id) || { status: "pending", attempts: 0 };
      return { id: s.id, label: s.id, state: step.status, detail: `${s.type}${step.attempts > 1 ? `, ${step.attempts} attempts` : ""}` };
    });
    const edges = def.spec.steps.flatMap((s) => (s.needs || []).map((n) => [n, s.id]));
    BhivGraph.draw(document.getElementById("run-graph"), { nodes, edges },
      { label: `Steps of run ${run.id}, dependencies left to right; choose a step for its details`, onSelect: (id) => showStep(id, true) });
    C.fill("#steps-table", run.steps.map((s) => el("tr", { "data-step": s.step_id, "data-state": s.status },
      el("th", { scope: "row" }, el("button", { type: "button", class: "link", onclick: () => showStep(s.step_id, true) }, s.step_id)),
      el("td", {}, s.type),
      el("td", {}, C.chip(s.status)),
      el("td", {}, String(s.attempts)),
      el("td", {}, C.when(s.started_at)),
      el("td", {}, C.took(s.started_at, s.finished_at)),
      el("td", { class: "small" }, s.error || ""),
    )));
    if (selectedStep) showStep(selectedStep, false);
  }

  function operationButtons(ops, step) {
    const run = current.run;
    const buttons = ops.filter((op) => op.step === Boolean(step)).map((op) => {
      const button = C.actionButton(op.summary.replace(/ a running run$/i, ""), {
        title: `${op.summary}?`,
        text: `Run #${run.id} (${run.workflow})${step ? `, step ${step}` : ""}. ${op.description}`,
        path: (values) => operationPath(op, { ...values, run_id: run.id, step_id: encodeURIComponent(step || "") }),
        body: op.body,
        fields: op.fields,
        done: watchRun,
      });
      button.setAttribute("data-operation", op.name);
      return button;
    });
    return buttons;
  }

  function drawOperations(ops) {
    document.getElementById("run-ops").replaceChildren(...operationButtons(ops, null));
  }

  async function refreshRun() {
    const id = params().get("run");
    const run = await C.api(`${AGENTS}/runs/${encodeURIComponent(id)}`);
    current = { run, definition: await definition(run.definition_id) };
    drawRun();
    const history = await C.api(`${AGENTS}/runs/${run.id}/history?limit=200`);
    document.getElementById("run-history").replaceChildren(...history.items.map((e) => el("li", {},
      el("time", { datetime: e.at }, C.when(e.at)), " ", el("strong", {}, e.kind),
      e.step_id ? ` ${e.step_id}` : "", e.detail ? el("code", { class: "small" }, " " + JSON.stringify(e.detail)) : "")));
    // Announced (a live region) only when the status changes; the time stamp is silent.
    if (announced !== run.status) C.say(`Run #${run.id} is ${run.status}.`);
    announced = run.status;
    C.stamp();
    return run;
  }

  // Polls the run until it is final (again after an operation such as a retry).
  let poller = null;
  function watchRun() {
    if (poller) poller.stop();
    poller = C.poll(async () => {
      const run = await refreshRun();
      if (!document.getElementById("run-ops").childElementCount) drawOperations(await runOperations());
      if (FINAL.has(run.status)) poller.stop();
    }, 2000);
  }

  // For the browser tier: how operations are read from an OpenAPI document.
  window.BhivWorkflows = { operationsFrom, operationPath };

  C.page("workflows", {
    async start() {
      if (params().get("run")) {
        document.getElementById("runs-view").hidden = true;
        document.getElementById("run-view").hidden = false;
        watchRun();
        return;
      }
      try {
        await loadWorkflowNames();
      } catch (error) {
        C.report(error);
      }
      document.getElementById("filter-workflow").addEventListener("change", filtersChanged);
      document.getElementById("filter-status").addEventListener("change", filtersChanged);
      C.poll(refreshRuns, 5000);
    },
  });
})();

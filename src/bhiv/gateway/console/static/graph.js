// Layered ("Sugiyama-style") drawing of a directed acyclic graph as SVG, used for
// the platform's dependency graph and for a workflow run's steps.
//
// The algorithm, in three steps (docs/console.md):
//   1. Layers: a node's layer is given (the catalog's startup stage) or is the
//      length of the longest path to it from a node with no predecessors, so
//      every edge points from left to right.
//   2. Order within a layer: the first layer keeps the order given; each later
//      layer is sorted by the barycentre (mean position) of each node's
//      predecessors in earlier layers, ties kept in the given order; one sweep
//      is enough for graphs of this size (tens of nodes) to avoid most crossings.
//   3. Coordinates: layers are columns of equal width, nodes are rows, each
//      column centred vertically; edges are cubic curves from a node's right
//      side to its successor's left side.
// A redraw with the same nodes and edges only updates each node's state, so
// keyboard focus and the reader's place survive live updates.
"use strict";

window.BhivGraph = (() => {
  const { el, stateClass } = window.BhivConsole;
  const W = 176, H = 58, GAP_X = 64, GAP_Y = 18, PAD = 12;

  function layers(nodes, edges) {
    const preds = new Map(nodes.map((n) => [n.id, []]));
    for (const [from, to] of edges) if (preds.has(to) && preds.has(from)) preds.get(to).push(from);
    const layer = new Map();
    const visiting = new Set();
    const depth = (id) => {
      if (layer.has(id)) return layer.get(id);
      if (visiting.has(id)) return 0; // a cycle cannot happen in a valid DAG; never loop on one
      visiting.add(id);
      const node = nodes.find((n) => n.id === id);
      const value = node.layer !== undefined ? node.layer : Math.max(-1, ...preds.get(id).map(depth)) + 1;
      visiting.delete(id);
      layer.set(id, value);
      return value;
    };
    nodes.forEach((n) => depth(n.id));
    return { layer, preds };
  }

  function layout(nodes, edges) {
    const { layer, preds } = layers(nodes, edges);
    const columns = [...new Set(nodes.map((n) => layer.get(n.id)))].sort((a, b) => a - b);
    const position = new Map();
    const order = nodes.map((n) => n.id);
    const placed = [];
    columns.forEach((value, column) => {
      let ids = order.filter((id) => layer.get(id) === value);
      if (column > 0) {
        const centre = (id) => {
          const known = preds.get(id).filter((p) => position.has(p)).map((p) => position.get(p));
          return known.length ? known.reduce((a, b) => a + b, 0) / known.length : Infinity;
        };
        ids = ids.map((id, i) => [centre(id), i, id]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((x) => x[2]);
      }
      ids.forEach((id, row) => position.set(id, row));
      placed.push(ids);
    });
    const tallest = Math.max(...placed.map((c) => c.length));
    const xy = new Map();
    placed.forEach((ids, column) => {
      const offset = ((tallest - ids.length) * (H + GAP_Y)) / 2;
      ids.forEach((id, row) => xy.set(id, { x: PAD + column * (W + GAP_X), y: PAD + offset + row * (H + GAP_Y) }));
    });
    return {
      xy,
      width: PAD * 2 + placed.length * W + (placed.length - 1) * GAP_X,
      height: PAD * 2 + tallest * H + (tallest - 1) * GAP_Y,
    };
  }

  function edgePath(a, b) {
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 6, y2 = b.y + H / 2;
    const mid = (x1 + x2) / 2;
    return `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
  }

  function nodeLabel(node) {
    return `${node.label}: ${node.state}${node.detail ? ` (${node.detail})` : ""}`;
  }

  // SVG text does not wrap: a line longer than the box is cut, in full in the tooltip and label.
  const fit = (text, max) => (text.length > max ? text.slice(0, max - 1) + "…" : text);

  function paintNode(g, node) {
    g.setAttribute("class", `node ${stateClass(node.state)}${g.classList.contains("selected") ? " selected" : ""}`);
    g.setAttribute("data-state", node.state);
    g.setAttribute("aria-label", nodeLabel(node));
    g.querySelector(".node-state").textContent = fit(node.state + (node.detail ? " · " + node.detail : ""), 25);
    g.querySelector("title").textContent = nodeLabel(node);
  }

  // draw(container, {nodes: [{id, label, state, detail?, layer?}], edges: [[from, to]]}, {label, onSelect})
  function draw(container, graph, { label, onSelect } = {}) {
    const key = JSON.stringify([graph.nodes.map((n) => [n.id, n.label, n.layer]), graph.edges]);
    if (container.dataset.graphKey === key) {
      for (const node of graph.nodes) {
        const g = container.querySelector(`g.node[data-id="${CSS.escape(node.id)}"]`);
        if (g) paintNode(g, node);
      }
      return;
    }
    container.dataset.graphKey = key;
    if (!graph.nodes.length) {
      container.replaceChildren(el("p", { class: "muted" }, "Nothing to draw."));
      return;
    }
    const { xy, width, height } = layout(graph.nodes, graph.edges);
    const svg = el("svg", {
      viewBox: `0 0 ${width} ${height}`, width, height, role: "group", "aria-label": label || "Graph",
      class: "graph-svg",
    });
    const markerId = "arrow-" + Math.random().toString(36).slice(2);
    svg.append(el("defs", {}, el("marker", {
      id: markerId, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
    }, el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))));
    for (const [from, to] of graph.edges) {
      if (!xy.has(from) || !xy.has(to)) continue;
      svg.append(el("path", {
        d: edgePath(xy.get(from), xy.get(to)), class: "edge", "marker-end": `url(#${markerId})`,
        "data-from": from, "data-to": to,
      }));
    }
    for (const node of graph.nodes) {
      const { x, y } = xy.get(node.id);
      const g = el("g", {
        "data-id": node.id, transform: `translate(${x},${y})`,
        tabindex: onSelect ? 0 : undefined, role: onSelect ? "button" : "img",
      },
      el("title", {}, ""),
      el("rect", { width: W, height: H, rx: 8 }),
      el("text", { x: 10, y: 23, class: "node-name" }, fit(node.label, 22)),
      el("text", { x: 10, y: 44, class: "node-state" }, ""));
      if (onSelect) {
        const select = () => {
          container.querySelectorAll("g.node.selected").forEach((s) => s.classList.remove("selected"));
          g.classList.add("selected");
          onSelect(node.id);
        };
        g.addEventListener("click", select);
        g.addEventListener("keydown", (event) => {
          if (event.key === "Enter" || event.key === " ") {
            event.preventDefault();
            select();
          }
        });
      }
      svg.append(g);
      paintNode(g, node);
    }
    container.replaceChildren(svg);
  }

  return { draw, layout };
})();

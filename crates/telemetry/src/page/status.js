// The raftkv status page: polls /status.json every second and redraws. No dependencies.
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function show(v) { return v === null || v === undefined ? "–" : String(v); }

function setText(id, text) { document.getElementById(id).textContent = text; }

function rows(tableId, items, cells, attrs) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...items.map(item => {
    const tr = el("tr", attrs(item));
    for (const c of cells(item)) tr.appendChild(el("td", {}, show(c)));
    return tr;
  }));
}

function chart(id, series, colors) {
  const svg = document.getElementById(id);
  const w = svg.width.baseVal.value, h = svg.height.baseVal.value, pad = 28;
  svg.replaceChildren();
  const all = series.flat();
  const max = Math.max(1, ...all);
  const n = Math.max(2, ...series.map(s => s.length));
  const axis = document.createElementNS(SVG, "path");
  axis.setAttribute("d", `M${pad},4 V${h - pad / 2} H${w - 4}`);
  axis.setAttribute("stroke", "#999");
  axis.setAttribute("fill", "none");
  svg.appendChild(axis);
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", 2);
  label.setAttribute("y", 12);
  label.setAttribute("font-size", "10");
  label.textContent = max >= 100 ? max.toFixed(0) : max.toPrecision(2);
  svg.appendChild(label);
  series.forEach((s, k) => {
    if (s.length === 0) return;
    const pts = s.map((v, i) => {
      const x = pad + (w - pad - 4) * (i + n - s.length) / (n - 1);
      const y = (h - pad / 2) - (h - pad / 2 - 4) * v / max;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colors[k]);
    line.setAttribute("stroke-width", "1.5");
    svg.appendChild(line);
  });
}

function render(s) {
  setText("node", `node ${s.node}`);
  setText("leader", show(s.leader));
  setText("term", show(s.term));
  setText("state", s.state);
  const ready = document.getElementById("ready");
  ready.textContent = s.ready ? "yes" : `no (${s.ready_reason})`;
  ready.className = s.ready ? "ok" : "bad";
  setText("updated", new Date(s.now_ms).toLocaleTimeString());
  rows("members", s.members,
    m => [m.id, m.role, m.suffrage, m.raft_addr, m.grpc_addr, m.matched_index, m.applied_index, m.lag, m.gossip],
    m => ({ "data-member": m.id, "data-role": m.role, class: m.role === "leader" ? "leader" : "" }));
  if (s.gossip) {
    setText("gossip-off", "");
    rows("gossip", s.gossip.nodes,
      g => [g.id, g.liveness, g.role, g.leader, g.applied_index, g.raft_addr, g.grpc_addr],
      g => ({ "data-gossip": g.id, class: g.liveness === "live" ? "" : "bad" }));
    document.getElementById("disagreements").replaceChildren(
      ...s.gossip.disagreements.map(d => el("li", { class: "bad" }, d)));
  } else {
    setText("gossip-off", "gossip is off on this node");
  }
  document.getElementById("changes").replaceChildren(...s.leader_changes.map(c =>
    el("li", { "data-leader": c.leader }, `${new Date(c.at_ms).toLocaleTimeString()}: ${c.leader} leads term ${c.term}`)));
  chart("rate-chart", [s.history.map(x => x.applied_per_sec)], ["#2e7d32"]);
  chart("latency-chart", [s.history.map(x => x.p50_ms), s.history.map(x => x.p99_ms)], ["#1565c0", "#c62828"]);
}

async function poll() {
  try {
    const resp = await fetch("/status.json", { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    render(await resp.json());
    setText("error", "");
  } catch (e) {
    setText("error", `cannot reach this node: ${e.message}`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();

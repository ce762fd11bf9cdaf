// The saga explorer's pages, drawn in the browser from the JSON API that `sagactl ui`
// serves under /api/ (the triage pages, /stuck and /find, are in triage.js, the
// dead-letter page in dlq.js and the audit page in audit.js, all loaded first). Plain DOM calls and inline SVG: no framework and no build step, so
// the file ships inside the binary as it is. Everything shown comes from the broker or
// the services, so text goes into the page only as text nodes, never as markup.
"use strict";

const STATUSES = ["pending", "reserved", "confirmed", "rejected", "cancelled"];
const SERVICES = ["order-svc", "inventory-svc", "payment-svc"];
const LANE_COLOURS = { "order-svc": "#2f5fd0", "inventory-svc": "#1b7f3a", "payment-svc": "#b3661e" };
const QUEUE_POLL_MS = 2000;
const ORDERS_POLL_MS = 5000;

// ----------------------------------------------------------------------------- helpers

/** An HTML element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

/** An SVG element, likewise. */
function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttributes(node, attrs);
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

function setAttributes(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

/** Calls the explorer's API; an answer that is not 2xx throws its JSON message. */
async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
}

/** Money in minor units shown in major units with the currency's own decimals. */
function money(minor, currency) {
  if (minor === null || minor === undefined) return "-";
  try {
    const format = new Intl.NumberFormat("en", { style: "currency", currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(minor / 10 ** digits);
  } catch (_) {
    return `${minor} ${currency || ""}`.trim();
  }
}

function when(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function statusBadge(status) {
  return el("span", { class: `status ${status}` }, status || "?");
}

function short(id) {
  return id ? String(id).slice(-8) : "-";
}

function orderLink(id) {
  return el("a", { href: `/orders/${encodeURIComponent(id)}`, class: "mono" }, id);
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function failure(e) {
  return el("p", { class: "error", role: "alert" }, e.message || String(e));
}

function dl(pairs) {
  return el("dl", {}, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function card(title, body) {
  return el("div", { class: "card" }, el("h3", {}, title), body);
}

// ----------------------------------------------------------------------------- queue depths

/** The strip under the header: every queue's depth, refreshed while the page is open. */
async function refreshQueues() {
  const strip = document.getElementById("queues");
  try {
    const report = await api("/api/queues");
    const chips = (report.queues || []).map((q) => {
      const dead = q.name.endsWith(".dlq");
      const cls = ["queue", dead ? "dlq" : "", dead && q.ready > 0 ? "nonempty" : ""].join(" ");
      return el(
        "span",
        { class: cls, "data-queue": q.name, title: `${q.consumers} consumers, ${q.publish_rate.toFixed(1)}/s in` },
        `${q.name} `,
        el("span", { class: "ready" }, String(q.ready)),
        q.unacked ? ` (+${q.unacked} unacked)` : "",
      );
    });
    strip.replaceChildren(
      el("span", { class: "muted" }, `vhost ${report.vhost}: `),
      ...(chips.length ? chips : [el("span", { class: "muted" }, "no queues yet")]),
    );
  } catch (e) {
    strip.replaceChildren(el("span", { class: "error" }, `queues: ${e.message}`));
  }
}

// ----------------------------------------------------------------------------- orders page

async function ordersPage() {
  const params = new URLSearchParams(location.search);
  let status = params.get("status") || "";
  let q = params.get("q") || "";
  const filters = el("div", { class: "toolbar", id: "filters" });
  const search = el("input", {
    type: "search",
    id: "search",
    placeholder: "search order id or customer",
    value: q,
    "aria-label": "Search orders",
  });
  const results = el("div", { id: "orders" }, el("p", { class: "muted" }, "Loading…"));
  show(el("h1", {}, "Recent orders"), filters, el("div", { class: "toolbar" }, search), results);

  const load = async () => {
    const query = new URLSearchParams();
    if (status) query.set("status", status);
    if (q) query.set("q", q);
    history.replaceState(null, "", query.toString() ? `/?${query}` : "/");
    try {
      const listed = await api(`/api/orders?${query}`);
      drawFilters(listed.counts || {});
      drawOrders(listed.orders || []);
    } catch (e) {
      results.replaceChildren(failure(e));
    }
  };
  const drawFilters = (counts) => {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const button = (value, label) =>
      el(
        "button",
        {
          class: value === status ? "selected" : "",
          "data-status": value || "all",
          onclick: () => {
            status = value;
            load();
          },
        },
        label,
      );
    filters.replaceChildren(
      button("", `all (${total})`),
      ...STATUSES.map((s) => button(s, `${s} (${counts[s] || 0})`)),
    );
  };
  const drawOrders = (orders) => {
    if (!orders.length) {
      results.replaceChildren(el("p", { class: "muted" }, "No orders match."));
      return;
    }
    const rows = orders.map((o) =>
      el(
        "tr",
        { class: "order", "data-order-id": o.order_id, "data-status": o.status },
        el("td", {}, orderLink(o.order_id)),
        el("td", {}, statusBadge(o.status), o.reason ? el("span", { class: "muted" }, ` ${o.reason}`) : null),
        el("td", {}, o.customer_id),
        el("td", { class: "num" }, money(o.total, o.currency)),
        el("td", {}, when(o.created_at)),
      ),
    );
    results.replaceChildren(
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, ["order", "status", "customer", "total", "created"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows),
      ),
    );
  };

  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      q = search.value.trim();
      load();
    }, 250);
  });
  await load();
  setInterval(load, ORDERS_POLL_MS);
}

// ----------------------------------------------------------------------------- one saga

/**
 * The timeline: one column per producing service, one row per event in the order the
 * events occurred, an arrow from each event to the events it caused.
 */
function timelinePicture(events) {
  const lanes = [...SERVICES];
  for (const e of events) if (!lanes.includes(e.producer)) lanes.push(e.producer);
  const laneWidth = 170;
  const left = 20;
  const top = 36;
  const rowHeight = 46;
  const labelX = left + lanes.length * laneWidth + 10;
  const width = labelX + 420;
  const height = top + events.length * rowHeight + 10;
  const x = (producer) => left + lanes.indexOf(producer) * laneWidth + laneWidth / 2;
  const y = (i) => top + i * rowHeight + rowHeight / 2;
  const row = new Map(events.map((e, i) => [e.message_id, i]));

  const parts = [];
  lanes.forEach((lane) => {
    parts.push(svg("text", { class: "lane-label", x: x(lane), y: 20, "text-anchor": "middle" }, lane));
    parts.push(svg("line", { class: "lane", x1: x(lane), y1: top, x2: x(lane), y2: height - 6 }));
  });
  events.forEach((e, i) => {
    if (e.causation_id && row.has(e.causation_id)) {
      const j = row.get(e.causation_id);
      const [x1, y1, x2, y2] = [x(events[j].producer), y(j), x(e.producer), y(i)];
      const bend = x1 === x2 ? 40 : 0;
      parts.push(
        svg("path", {
          class: "cause",
          d: `M${x1},${y1} C${x1 + bend},${(y1 + y2) / 2} ${x2 + bend},${(y1 + y2) / 2} ${x2},${y2 - 8}`,
          "marker-end": "url(#arrow)",
        }),
      );
    }
  });
  events.forEach((e, i) => {
    const consumers = (e.consumed_by || []).map(([who, at]) => `${who} +${Date.parse(at) - Date.parse(e.occurred_at)} ms`);
    parts.push(
      svg(
        "g",
        { class: "event", "data-type": e.type, "data-message-id": e.message_id, "data-producer": e.producer },
        svg("title", {}, `${e.type} ${e.message_id}\nby ${e.producer} at ${e.occurred_at}`),
        svg("line", { class: "lane", x1: x(e.producer) + 8, y1: y(i), x2: labelX - 6, y2: y(i) }),
        svg("circle", { cx: x(e.producer), cy: y(i), r: 7, fill: LANE_COLOURS[e.producer] || "#777" }),
        svg("text", { class: "type", x: labelX, y: y(i) - 3 }, `${i + 1}. ${e.type}`),
        svg(
          "text",
          { class: "when", x: labelX, y: y(i) + 13 },
          `+${e.since_start_ms} ms · ${short(e.message_id)} · → ${consumers.length ? consumers.join(", ") : "not consumed"}`,
        ),
      ),
    );
  });
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Timeline of the saga's events" },
    svg(
      "defs",
      {},
      svg(
        "marker",
        { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9aa3b5" }),
      ),
    ),
    parts,
  );
}

/** The causation tree: each event to the right of the one that caused it. */
function treePicture(roots) {
  const boxWidth = 170;
  const boxHeight = 34;
  const columnGap = 40;
  const rowGap = 12;
  const placed = [];
  let nextRow = 0;
  // Leaves take the next free row; a parent sits level with its first child. Nodes are
  // listed parent first (document order reads like the tree).
  const place = (node, depth) => {
    const entry = { node, depth, row: 0, kids: [] };
    placed.push(entry);
    entry.kids = (node.caused || []).map((k) => place(k, depth + 1));
    entry.row = entry.kids.length ? entry.kids[0] : nextRow++;
    return entry.row;
  };
  roots.forEach((n) => place(n, 0));
  const maxDepth = Math.max(0, ...placed.map((p) => p.depth));
  const width = (maxDepth + 1) * (boxWidth + columnGap) + 20;
  const height = Math.max(1, nextRow) * (boxHeight + rowGap) + 20;
  const bx = (depth) => 10 + depth * (boxWidth + columnGap);
  const by = (row) => 10 + row * (boxHeight + rowGap);
  const parts = [];
  for (const p of placed) {
    for (const kidRow of p.kids) {
      const x1 = bx(p.depth) + boxWidth;
      const y1 = by(p.row) + boxHeight / 2;
      const x2 = bx(p.depth + 1);
      const y2 = by(kidRow) + boxHeight / 2;
      parts.push(svg("path", { class: "cause", d: `M${x1},${y1} C${x1 + 20},${y1} ${x2 - 20},${y2} ${x2},${y2}` }));
    }
  }
  for (const p of placed) {
    const { node } = p;
    parts.push(
      svg(
        "g",
        { class: "node", "data-type": node.type, "data-message-id": node.message_id, "data-depth": p.depth },
        svg("rect", { x: bx(p.depth), y: by(p.row), width: boxWidth, height: boxHeight, rx: 5 }),
        svg("text", { class: "type", x: bx(p.depth) + 8, y: by(p.row) + 14 }, node.type),
        svg("text", { class: "producer", x: bx(p.depth) + 8, y: by(p.row) + 28 }, `${node.producer} · ${short(node.message_id)}`),
      ),
    );
  }
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Causation tree of the saga" },
    parts,
  );
}

function stateCards(report) {
  const o = report.order || {};
  const r = report.reservation;
  const p = report.payment;
  const w = report.wallet;
  const cards = [
    card(
      "order",
      dl([
        ["status", statusBadge(o.status)],
        ["reason", o.reason || "-"],
        ["customer", o.customer_id || "-"],
        ["total", money(o.total, o.currency)],
        ["items", (o.items || []).map((i) => `${i.sku} × ${i.quantity}`).join(", ") || "-"],
        ["updated", when(o.updated_at)],
      ]),
    ),
    card(
      "stock held for it",
      r ? dl([["reservation", r.status || "-"], ["items", (r.items || []).map((i) => `${i.sku} × ${i.quantity}`).join(", ")]])
        : el("p", { class: "muted" }, "nothing held"),
    ),
    card(
      "payment",
      p ? dl([["status", p.status || "-"], ["amount", money(p.amount, p.currency || o.currency)], ["reason", p.reason || "-"]])
        : el("p", { class: "muted" }, "none"),
    ),
  ];
  for (const s of report.stock || []) {
    if (s) cards.push(card(`stock of ${s.sku} now`, dl([["available", s.available], ["reserved", s.reserved], ["sold", s.sold]])));
  }
  cards.push(
    card(
      `wallet of ${o.customer_id || "?"} now`,
      w ? dl([["balance", money(w.balance, w.currency)], ["captured", money(w.captured, w.currency)], ["refunded", money(w.refunded, w.currency)]])
        : el("p", { class: "muted" }, "no wallet"),
    ),
  );
  return el("div", { class: "cards", id: "state" }, cards);
}

async function sagaPage(orderId) {
  show(el("h1", {}, `Order ${orderId}`), el("p", { class: "muted" }, "Loading…"));
  let report;
  try {
    report = await api(`/api/orders/${encodeURIComponent(orderId)}`);
  } catch (e) {
    show(el("h1", {}, `Order ${orderId}`), failure(e));
    return;
  }
  const o = report.order || {};
  const events = report.events || [];
  show(
    el("h1", {}, "Order ", el("span", { class: "mono" }, o.order_id), " ", statusBadge(o.status)),
    el(
      "p",
      { class: "muted" },
      `${o.customer_id} · ${money(o.total, o.currency)} · created ${when(o.created_at)}${o.reason ? ` · reason ${o.reason}` : ""}`,
    ),
    el("h2", {}, `Timeline (${events.length} events)`),
    el("div", { class: "picture", id: "timeline" }, timelinePicture(events)),
    el("h2", {}, "Causation"),
    el("div", { class: "picture", id: "tree" }, treePicture(report.tree || [])),
    el("h2", {}, "State it left"),
    stateCards(report),
  );
}

// ----------------------------------------------------------------------------- routing

function route() {
  const path = location.pathname;
  const section = { "/dlq": "dlq", "/stuck": "stuck", "/find": "find", "/audit": "audit" }[path] || "orders";
  document.querySelectorAll("header nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === section);
  });
  const saga = path.match(/^\/orders\/([^/]+)$/);
  if (path === "/") return ordersPage();
  if (saga) return sagaPage(decodeURIComponent(saga[1]));
  if (path === "/dlq") return dlqPage();
  if (path === "/stuck") return stuckPage();
  if (path === "/find") return findPage();
  if (path === "/audit") return auditPage();
  show(el("p", { class: "error" }, `No page at ${path}.`));
  return null;
}

refreshQueues();
setInterval(refreshQueues, QUEUE_POLL_MS);
route();
showApiReference();

/** Links to each service's API reference page (its OpenAPI document, `/api-docs`). */
async function showApiReference() {
  const slot = document.getElementById("api-reference");
  try {
    const { services } = await api("/api/services");
    slot.replaceChildren(
      "API reference:",
      ...services.map((s) =>
        el("a", { href: s.api_docs, target: "_blank", rel: "noopener", "data-service": s.service }, s.service)),
    );
  } catch (_) {
    slot.replaceChildren();
  }
}

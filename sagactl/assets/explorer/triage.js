// The saga explorer's triage pages: /stuck (the open sagas, what each waits on, cancelling
// one or a filtered set with progress) and /find (everything that names an id). Loaded
// before app.js, whose helpers (el, api, post, show, …) and router these pages use once it
// has run; like app.js, text from the services goes into the page only as text nodes.
"use strict";

const OPEN_STATUSES = ["pending", "reserved"];
const STUCK_PAGE_SIZE = 25;
/** The most matches one listing answers: enough to cancel every match of a filter. */
const STUCK_ALL = 10000;

/** Seconds as the stuck list shows them: 42s, 7m05s, 3h12m, 2d04h (as `sagactl stuck`). */
function duration(secs) {
  const s = Math.max(0, Math.floor(secs || 0));
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}

function options(id, label, values, selected) {
  return el(
    "select",
    { id, "aria-label": label },
    el("option", { value: "" }, `any ${label.toLowerCase()}`),
    values.map((v) => el("option", { value: v, selected: v === selected }, v)),
  );
}

// ----------------------------------------------------------------------------- stuck page

async function stuckPage() {
  const params = new URLSearchParams(location.search);
  const filters = {
    older_than: params.get("older_than") || "",
    status: params.get("status") || "",
    waiting_on: params.get("waiting_on") || "",
  };
  let offset = Number(params.get("offset")) || 0;
  const age = el("input", {
    id: "older-than",
    placeholder: "e.g. 5m",
    value: filters.older_than,
    size: 8,
    "aria-label": "Older than (90s, 15m, 2h, 1d)",
  });
  const status = options("stuck-status", "Status", OPEN_STATUSES, filters.status);
  const waiting = options("waiting-on", "Participant", SERVICES, filters.waiting_on);
  const form = el(
    "form",
    {
      class: "toolbar",
      id: "stuck-filters",
      onsubmit: (event) => {
        event.preventDefault();
        filters.older_than = age.value.trim();
        filters.status = status.value;
        filters.waiting_on = waiting.value;
        offset = 0;
        load();
      },
    },
    el("label", {}, "older than ", age),
    status,
    waiting,
    el("button", { type: "submit", id: "apply-filters" }, "Apply"),
  );
  const progress = el("p", { id: "progress", class: "notice", role: "status", hidden: true });
  const results = el("div", { id: "stuck" }, el("p", { class: "muted" }, "Loading…"));
  show(
    el("h1", {}, "Stuck sagas"),
    el(
      "p",
      { class: "muted" },
      "Open orders (pending or reserved), oldest first, with the participant each waits on, read from its history.",
    ),
    form,
    progress,
    results,
  );

  const query = (extra) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries({ ...filters, ...extra })) if (v) q.set(k, v);
    return q;
  };
  const load = async () => {
    const shown = query({ offset: offset || "" });
    history.replaceState(null, "", shown.toString() ? `/stuck?${shown}` : "/stuck");
    try {
      draw(await api(`/api/stuck?${query({ limit: STUCK_PAGE_SIZE, offset })}`));
    } catch (e) {
      results.replaceChildren(failure(e));
    }
  };
  const cancel = async (ids, question) => {
    if (!ids.length || !window.confirm(question)) return;
    const tally = { cancelled: 0, already_closed: 0, failed: 0 };
    const say = (done, finished) => {
      progress.hidden = false;
      progress.dataset.done = String(done);
      progress.dataset.total = String(ids.length);
      progress.dataset.finished = String(finished);
      progress.textContent =
        `${finished ? "done" : "cancelling"}: ${done} of ${ids.length} orders ` +
        `(${tally.cancelled} cancelled, ${tally.already_closed} already closed, ${tally.failed} failed)`;
    };
    say(0, false);
    for (const [i, id] of ids.entries()) {
      try {
        const outcome = await post(`/api/orders/${encodeURIComponent(id)}/cancel`, {});
        tally[outcome.outcome === "cancelled" ? "cancelled" : "already_closed"] += 1;
      } catch (_) {
        tally.failed += 1;
      }
      say(i + 1, i + 1 === ids.length);
    }
    await load();
  };
  const cancelAll = async () => {
    try {
      const every = await api(`/api/stuck?${query({ limit: STUCK_ALL })}`);
      const ids = (every.sagas || []).map((s) => s.order_id);
      await cancel(ids, `Cancel all ${ids.length} open sagas matching these filters? Stock is released and payments refunded.`);
    } catch (e) {
      results.prepend(failure(e));
    }
  };
  const draw = (listed) => {
    const sagas = listed.sagas || [];
    const total = listed.total || 0;
    const rows = sagas.map((s) =>
      el(
        "tr",
        { class: "stuck", "data-order-id": s.order_id, "data-waiting-on": s.waiting_on, "data-status": s.status },
        el("td", {}, orderLink(s.order_id)),
        el("td", {}, statusBadge(s.status)),
        el("td", { class: "waiting-on" }, s.waiting_on),
        el("td", { class: "num", title: when(s.created_at) }, duration(s.age_secs)),
        el("td", { class: "num", title: when(s.last_event_at) }, duration(s.idle_secs)),
        el("td", {}, s.last_event || "-"),
        el("td", {}, s.customer_id),
        el(
          "td",
          {},
          el("button", { class: "cancel danger", onclick: () => cancel([s.order_id], `Cancel order ${s.order_id}?`) }, "Cancel"),
        ),
      ),
    );
    const pager = el(
      "div",
      { class: "toolbar", id: "pager", "data-total": total },
      el("span", {}, total ? `${offset + 1}–${offset + sagas.length} of ${total} open sagas` : "No open saga matches."),
      el("button", { id: "prev", disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - STUCK_PAGE_SIZE); load(); } }, "Newer ←"),
      el("button", { id: "next", disabled: offset + sagas.length >= total, onclick: () => { offset += STUCK_PAGE_SIZE; load(); } }, "→ Older"),
      el("button", { id: "cancel-all", class: "danger", disabled: total === 0, onclick: cancelAll }, `Cancel all ${total} matching`),
      listed.complete === false ? el("span", { class: "muted" }, `(read only the ${listed.scanned} oldest open orders)`) : null,
    );
    results.replaceChildren(
      pager,
      rows.length
        ? el(
            "table",
            {},
            el("thead", {}, el("tr", {}, ["order", "status", "waiting on", "age", "idle", "last event", "customer", ""].map((h) => el("th", {}, h)))),
            el("tbody", {}, rows),
          )
        : null,
    );
  };
  await load();
}

// ----------------------------------------------------------------------------- find page

function matchedBy(fields) {
  return (fields || []).join(", ");
}

async function findPage() {
  const q = (new URLSearchParams(location.search).get("q") || "").trim();
  const box = document.getElementById("find");
  if (box) box.value = q;
  if (!q) {
    show(el("h1", {}, "Find"), el("p", { class: "muted" }, "Type an order id, customer id, SKU, message id or payment id in the search box above."));
    return;
  }
  show(el("h1", {}, "Find ", el("span", { class: "mono" }, q)), el("p", { class: "muted" }, "Searching…"));
  let report;
  try {
    report = await api(`/api/find?q=${encodeURIComponent(q)}`);
  } catch (e) {
    show(el("h1", {}, "Find ", el("span", { class: "mono" }, q)), failure(e));
    return;
  }
  const sagas = report.sagas.matches || [];
  const letters = report.dead_letters.matches || [];
  const sagaRows = sagas.map((s) =>
    el(
      "tr",
      { class: "found-saga", "data-order-id": s.order_id, "data-matched": matchedBy(s.matched) },
      el("td", {}, orderLink(s.order_id)),
      el("td", {}, statusBadge(s.status)),
      el("td", {}, s.customer_id),
      el("td", {}, when(s.created_at)),
      el("td", {}, matchedBy(s.matched)),
    ),
  );
  const letterRows = letters.map((m) =>
    el(
      "tr",
      { class: "found-dead-letter", "data-message-id": m.message_id || "", "data-dlq": m.dlq, "data-matched": matchedBy(m.matched) },
      el("td", {}, el("a", { href: "/dlq" }, m.dlq)),
      el("td", {}, el("span", { class: "mono" }, m.message_id || "-")),
      el("td", {}, m.type || "-"),
      el("td", {}, matchedBy(m.matched)),
      el("td", { class: "reason" }, m.error || "-"),
    ),
  );
  const table = (heads, rows, none) =>
    rows.length
      ? el("table", {}, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))), el("tbody", {}, rows))
      : el("p", { class: "muted" }, none);
  const unread = (report.dead_letters.queues || [])
    .filter((qu) => !qu.complete)
    .map((qu) =>
      el("p", { class: "muted" }, qu.error ? `${qu.queue} not read: ${qu.error}` : `read ${qu.read} of the ${qu.messages} messages of ${qu.queue}`),
    );
  show(
    el("h1", {}, "Find ", el("span", { class: "mono" }, report.query)),
    el(
      "section",
      { id: "found-sagas", "data-count": sagas.length },
      el("h2", {}, `Sagas (${sagas.length})`),
      table(["order", "status", "customer", "created", "named by"], sagaRows, "No saga names it."),
      el("p", { class: "muted" }, `Searched ${(report.sagas.searched || []).join("; ")}.`),
    ),
    el(
      "section",
      { id: "found-dead-letters", "data-count": letters.length },
      el("h2", {}, `Dead letters (${letters.length})`),
      table(["queue", "message", "type", "named by", "reason"], letterRows, "No dead letter names it."),
      unread,
    ),
    el(
      "section",
      { id: "found-audit", "data-count": (report.audit.records || []).length },
      el("h2", {}, `Audit records (${(report.audit.records || []).length})`),
      auditTable(report.audit.records || [], "No audit record names it."),
      (report.audit.unavailable || []).map((u) => el("p", { class: "muted" }, `the audit log of ${u.service} not read: ${u.error}`)),
    ),
  );
}

// The saga explorer's audit page (/audit): the hands on the system (stock adjustments,
// deposits, cancellations, replays, edits, purges) from the three services' audit logs,
// newest first, filtered by operator, action, service and time, a page at a time with
// "Older". The find page shows the records naming an id with the same table. Loaded
// before app.js, whose helpers it uses; text goes into the page only as text nodes.
"use strict";

const AUDIT_ACTIONS = ["stock_adjustment", "deposit", "cancel", "replay", "edit", "purge"];
const AUDIT_PAGE_SIZE = 50;

/** The records as a table, or a line saying there are none. */
function auditTable(records, none) {
  if (!records.length) return el("p", { class: "muted" }, none);
  const rows = records.map((r) =>
    el(
      "tr",
      { class: "audit", "data-id": r.id, "data-service": r.service, "data-actor": r.actor, "data-action": r.action, "data-outcome": r.outcome || "" },
      el("td", {}, when(r.at)),
      el("td", {}, r.service),
      el("td", { class: "actor" }, r.actor, r.broker_user ? el("span", { class: "muted" }, ` (broker user ${r.broker_user})`) : null),
      el("td", {}, r.via || "-"),
      el("td", { class: "action" }, r.action),
      el("td", { class: "mono subjects" }, (r.subjects || []).join(", ") || "-"),
      el("td", { class: "outcome" }, r.outcome || "-"),
      el(
        "td",
        {},
        el("details", {}, el("summary", {}, "detail"), el("pre", { class: "body" }, JSON.stringify({ detail: r.detail, result: r.result, finished_at: r.finished_at }, null, 2))),
      ),
    ),
  );
  return el(
    "table",
    { class: "audit-table" },
    el("thead", {}, el("tr", {}, ["at", "service", "operator", "via", "action", "subjects", "outcome", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows),
  );
}

async function auditPage() {
  const params = new URLSearchParams(location.search);
  const filters = {
    actor: params.get("actor") || "",
    action: params.get("action") || "",
    service: params.get("service") || "",
    since: params.get("since") || "",
    until: params.get("until") || "",
  };
  // The cursors of the pages shown so far: "Newer" goes back one.
  const cursors = [""];
  const actor = el("input", { id: "audit-actor", placeholder: "operator", value: filters.actor, size: 12, "aria-label": "Operator" });
  const action = options("audit-action", "Action", AUDIT_ACTIONS, filters.action);
  const service = options("audit-service", "Service", SERVICES, filters.service);
  const since = el("input", { id: "audit-since", placeholder: "since: 1h or an instant", value: filters.since, size: 16, "aria-label": "Since" });
  const until = el("input", { id: "audit-until", placeholder: "until", value: filters.until, size: 16, "aria-label": "Until" });
  const results = el("div", { id: "audit" }, el("p", { class: "muted" }, "Loading…"));
  const form = el(
    "form",
    {
      class: "toolbar",
      id: "audit-filters",
      onsubmit: (event) => {
        event.preventDefault();
        Object.assign(filters, {
          actor: actor.value.trim(),
          action: action.value,
          service: service.value,
          since: since.value.trim(),
          until: until.value.trim(),
        });
        cursors.length = 1;
        load();
      },
    },
    actor,
    action,
    service,
    since,
    until,
    el("button", { type: "submit", id: "audit-apply" }, "Apply"),
  );
  show(
    el("h1", {}, "Audit log"),
    el("p", { class: "muted" }, "Every change made by hand, with who made it, from each service's audit log, newest first."),
    form,
    results,
  );

  const load = async () => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    history.replaceState(null, "", q.toString() ? `/audit?${q}` : "/audit");
    const before = cursors[cursors.length - 1];
    if (before) q.set("before", before);
    q.set("limit", AUDIT_PAGE_SIZE);
    try {
      const page = await api(`/api/audit?${q}`);
      const records = page.records || [];
      results.replaceChildren(
        el(
          "div",
          { class: "toolbar", id: "audit-pager", "data-count": records.length },
          el("span", {}, `${records.length} record${records.length === 1 ? "" : "s"}${cursors.length > 1 ? ` (page ${cursors.length})` : ""}`),
          el("button", { id: "audit-newer", disabled: cursors.length === 1, onclick: () => { cursors.pop(); load(); } }, "← Newer"),
          el("button", { id: "audit-older", disabled: !page.next, onclick: () => { cursors.push(page.next); load(); } }, "Older →"),
        ),
        auditTable(records, "No record matches."),
        ...(page.unavailable || []).map((u) => el("p", { class: "muted" }, `the audit log of ${u.service} not read: ${u.error}`)),
      );
    } catch (e) {
      results.replaceChildren(failure(e));
    }
  };
  await load();
}

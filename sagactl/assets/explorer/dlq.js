// The saga explorer's dead-letter triage (/dlq): per service, the dead letters grouped by
// cause and type, a filter, a page of the matching messages, and the actions the owning
// service carries out and records in its audit log: a dry run, a redrive followed to its
// outcome, a purge, and an edited replay of one message. Loaded before app.js, whose
// helpers (el, api, post, show, when, short, failure) it uses once app.js has run; text
// from the services goes into the page only as text nodes.
"use strict";

const DLQ_PAGE_SIZE = 20;
const JOB_POLL_MS = 400;

const FILTER_FIELDS = [
  ["type", "event type", "OrderCreated"],
  ["cause", "cause", "bad_payload"],
  ["since", "since", "15m or 2026-12-01T10:00:00Z"],
  ["until", "until", "an age or an instant"],
  ["order_id", "order id", "order id"],
  ["customer_id", "customer id", "customer id"],
];

/** The filter as people read it: `cause=bad_payload type=OrderCreated`, or `all`. */
function describeFilter(filter) {
  const parts = Object.entries(filter).filter(([, v]) => v).map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(" ") : "all";
}

/** A job's outcome in words, as `sagactl dlq` prints it. */
function jobSummary(job) {
  const o = job.outcome || {};
  const n = (v) => v || 0;
  const lines = [];
  if (job.kind === "purge") {
    lines.push(`purge ${job.status}: purged ${n(o.purged)} of ${n(job.matched)} matched`);
  } else {
    lines.push(
      `${job.kind} ${job.status}: ${n(job.matched)} matched, ${n(o.applied)} applied, ` +
        `${n(o.duplicate)} duplicate, ${n(o.dead_lettered)} back in the DLQ, ${n(o.pending)} still pending`,
    );
  }
  if (job.kind === "edit") {
    lines.push(`corrected message ${o.corrected_message_id || "-"}; the original was ${o.original || "-"}`);
  }
  for (const r of o.reasons || []) {
    lines.push(`back in the DLQ: ${r.count} × ${r.cause}: ${r.error || "-"} (${(r.message_ids || []).join(", ")})`);
  }
  return lines;
}

/** The changes an edit made, one line each. */
function diffLines(diff) {
  return (diff || []).map((c) =>
    c && c.path !== undefined ? `${c.path}: ${JSON.stringify(c.before)} → ${JSON.stringify(c.after)}` : JSON.stringify(c),
  );
}

/** Reads the job until it has ended, drawing its progress into `box`; returns it. */
async function followJob(base, job, box) {
  const bar = el("progress", { class: "job-progress", max: job.matched || 1, value: job.done || 0 });
  const text = el("span", { class: "job-text" });
  const outcome = el("div", { class: "job-outcome" });
  box.hidden = false;
  box.dataset.finished = "false";
  box.dataset.status = job.status;
  box.replaceChildren(bar, " ", text, outcome);
  for (;;) {
    bar.max = Math.max(1, job.matched || 0);
    bar.value = job.done || 0;
    text.textContent = `${job.kind} ${job.status}: ${job.done || 0} of ${job.matched || 0} done`;
    box.dataset.status = job.status;
    if (job.status !== "running") break;
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
    job = await api(`${base}/jobs/${encodeURIComponent(job.id)}`);
  }
  outcome.replaceChildren(
    ...jobSummary(job).map((line) => el("p", { class: "summary" }, line)),
    ...diffLines((job.outcome || {}).diff).map((line) => el("p", { class: "diff mono" }, line)),
  );
  box.dataset.finished = "true";
  return job;
}

function dlqPage() {
  show(
    el("h1", {}, "Dead letters"),
    el(
      "p",
      { class: "muted" },
      "Each service's dead-letter queue, grouped by cause and type. Redrive, edit and purge are carried out by the service, which records who asked (see the audit log).",
    ),
    ...SERVICES.map((s) => el("section", { class: "dlq", "data-service": s, "data-queue": `${s}.dlq` }, el("p", { class: "muted" }, "Loading…"))),
  );
  SERVICES.forEach((s) => dlqSection(document.querySelector(`.dlq[data-service="${s}"]`), s));
}

async function dlqSection(section, service) {
  const queue = `${service}.dlq`;
  const base = `/api/dlq/${encodeURIComponent(queue)}`;
  const filter = Object.fromEntries(FILTER_FIELDS.map(([k]) => [k, ""]));
  let offset = 0;
  const inputs = Object.fromEntries(
    FILTER_FIELDS.map(([k, label, hint]) => [k, el("input", { class: `filter-${k}`, name: k, placeholder: hint, "aria-label": label, size: 14 })]),
  );
  const groups = el("div", { class: "groups" });
  const notice = el("p", { class: "notice dlq-notice", role: "status", hidden: true });
  const job = el("div", { class: "job", role: "status", hidden: true });
  const editor = el("div", { class: "editor", hidden: true });
  const list = el("div", { class: "messages" });
  const heading = el("h2", {}, queue);
  const say = (text, isError) => {
    notice.hidden = false;
    notice.className = isError ? "error dlq-notice" : "notice dlq-notice";
    notice.textContent = text;
  };
  const read = () => {
    for (const [k, input] of Object.entries(inputs)) filter[k] = input.value.trim();
  };
  const setFilter = (values) => {
    for (const [k, input] of Object.entries(inputs)) input.value = values[k] || "";
    read();
    offset = 0;
    loadMessages();
  };

  const loadGroups = async () => {
    try {
      const all = await api("/api/dlq");
      const q = (all.queues || []).find((x) => x.service === service) || {};
      if (q.error) {
        groups.replaceChildren(failure(new Error(q.error)));
        return;
      }
      section.dataset.total = String(q.messages || 0);
      heading.textContent = `${queue}: ${q.messages || 0} message${q.messages === 1 ? "" : "s"}`;
      const rows = (q.groups || []).map((g) =>
        el(
          "tr",
          { class: "group", "data-cause": g.cause || "", "data-type": g.type || "", "data-count": g.count },
          el("td", {}, g.cause || "-"),
          el("td", {}, g.type || "-"),
          el("td", { class: "num" }, String(g.count)),
          el("td", {}, when(g.first_seen)),
          el("td", {}, when(g.last_seen)),
          el(
            "td",
            {},
            g.example
              ? el(
                  "details",
                  { class: "example" },
                  el("summary", { class: "mono" }, short(g.example.message_id)),
                  el("pre", { class: "body" }, JSON.stringify(g.example, null, 2)),
                )
              : "-",
          ),
          el("td", {}, el("button", { class: "pick", onclick: () => setFilter({ cause: g.cause || "", type: g.type || "" }) }, "Filter")),
        ),
      );
      const partial = q.scanned !== undefined && q.scanned < q.messages;
      groups.replaceChildren(
        rows.length
          ? el(
              "table",
              { class: "group-table" },
              el("thead", {}, el("tr", {}, ["cause", "type", "count", "first seen", "last seen", "example", ""].map((h) => el("th", {}, h)))),
              el("tbody", {}, rows),
            )
          : el("p", { class: "muted" }, "Empty."),
        ...(partial ? [el("p", { class: "muted" }, `grouped the first ${q.scanned}`)] : []),
      );
    } catch (e) {
      groups.replaceChildren(failure(e));
    }
  };

  const loadMessages = async () => {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(filter)) if (v) query.set(k, v);
    query.set("offset", offset);
    query.set("limit", DLQ_PAGE_SIZE);
    try {
      drawMessages(await api(`${base}/messages?${query}`));
    } catch (e) {
      list.replaceChildren(failure(e));
    }
  };

  const drawMessages = (listed) => {
    const letters = listed.dead_letters || [];
    const matched = listed.matched || 0;
    const rows = letters.map((m) =>
      el(
        "tr",
        { class: "message", "data-message-id": m.message_id || "", "data-cause": m.cause || "" },
        el("td", {}, el("span", { class: "mono", title: m.message_id || "" }, short(m.message_id))),
        el("td", {}, m.type || "-", m.version ? el("span", { class: "muted" }, ` v${m.version}`) : null),
        el("td", { class: "cause" }, m.cause || "-"),
        el("td", { class: "reason" }, m.error || "-"),
        el("td", {}, m.order_id ? orderLink(m.order_id) : "-", el("br"), m.customer_id || ""),
        el("td", {}, when(m.failed_at), el("br"), el("span", { class: "muted" }, `attempts ${m.attempts ?? "-"}`)),
        el("td", {}, el("code", { class: "body" }, m.body || "")),
        el("td", {}, m.message_id ? el("button", { class: "edit", onclick: () => openEditor(m) }, "Edit and replay") : null),
      ),
    );
    list.dataset.matched = String(matched);
    list.replaceChildren(
      el(
        "div",
        { class: "toolbar pager" },
        el("span", { class: "range" }, matched ? `${offset + 1}–${offset + letters.length} of ${matched} matching (${describeFilter(filter)})` : `No dead letter matches (${describeFilter(filter)}).`),
        el("button", { class: "prev", disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - DLQ_PAGE_SIZE); loadMessages(); } }, "← Previous"),
        el("button", { class: "next", disabled: offset + letters.length >= matched, onclick: () => { offset += DLQ_PAGE_SIZE; loadMessages(); } }, "Next →"),
      ),
      rows.length
        ? el(
            "table",
            {},
            el("thead", {}, el("tr", {}, ["message", "type", "cause", "reason", "order / customer", "failed at", "body", ""].map((h) => el("th", {}, h)))),
            el("tbody", {}, rows),
          )
        : "",
    );
  };

  const reload = async () => {
    await loadGroups();
    await loadMessages();
  };

  /** A dry run of `action` with the current filter: how many it would take. */
  const count = async (action) => {
    read();
    return post(`${base}/${action}`, { filter, dry_run: true });
  };

  const dryRun = async () => {
    try {
      const r = await count("redrive");
      notice.dataset.matched = String(r.matched);
      say(`${r.matched} would be redriven (of ${r.messages} messages in ${queue}, ${describeFilter(filter)}).`);
    } catch (e) {
      say(e.message, true);
    }
  };

  const bulk = async (action) => {
    try {
      const r = await count(action);
      if (!r.matched) {
        say(`No dead letter matches (${describeFilter(filter)}): nothing to ${action}.`);
        return;
      }
      const question =
        action === "purge"
          ? `Delete ${r.matched} dead letters of ${queue} (${describeFilter(filter)})? This cannot be undone.`
          : `Redrive ${r.matched} dead letters of ${queue} (${describeFilter(filter)}) to ${service}?`;
      if (!window.confirm(question)) return;
      const body = { filter, dry_run: false };
      if (action === "purge") body.confirm = true;
      notice.hidden = true;
      // The box still shows the last job until the new one is started.
      job.dataset.finished = "false";
      await followJob(base, await post(`${base}/${action}`, body), job);
    } catch (e) {
      say(e.message, true);
    }
    await reload();
  };

  const openEditor = (m) => {
    const text = el("textarea", { class: "payload", rows: 12, cols: 80, "aria-label": `Payload of ${m.message_id}` });
    text.value = m.payload === null || m.payload === undefined ? "{}" : JSON.stringify(m.payload, null, 2);
    const result = el("div", { class: "job edit-job", role: "status", hidden: true });
    const send = async () => {
      let payload;
      try {
        payload = JSON.parse(text.value);
      } catch (e) {
        result.hidden = false;
        result.replaceChildren(el("p", { class: "error" }, `not JSON: ${e.message}`));
        return;
      }
      try {
        result.dataset.finished = "false";
        const started = await post(`${base}/edit`, { message_id: m.message_id, payload });
        await followJob(base, started, result);
      } catch (e) {
        result.hidden = false;
        result.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
      }
      await reload();
    };
    editor.hidden = false;
    editor.dataset.messageId = m.message_id;
    editor.replaceChildren(
      el("h3", {}, `Edit and replay ${m.message_id}`),
      el("p", { class: "muted" }, "The corrected payload goes as a new message caused by this one; the original leaves the queue once the new one is applied."),
      text,
      el("div", { class: "toolbar" }, el("button", { class: "send-edit", onclick: send }, "Send corrected copy"), el("button", { onclick: () => { editor.hidden = true; } }, "Close")),
      result,
    );
    editor.scrollIntoView();
  };

  const form = el(
    "form",
    {
      class: "toolbar dlq-filter",
      onsubmit: (event) => {
        event.preventDefault();
        read();
        offset = 0;
        loadMessages();
      },
    },
    Object.values(inputs),
    el("button", { type: "submit", class: "apply" }, "Apply"),
    el("button", { type: "button", class: "clear", onclick: () => setFilter({}) }, "Clear"),
  );
  const actions = el(
    "div",
    { class: "toolbar actions" },
    el("button", { class: "dry-run", onclick: dryRun }, "Dry run"),
    el("button", { class: "redrive", onclick: () => bulk("redrive") }, "Redrive"),
    el("button", { class: "purge danger", onclick: () => bulk("purge") }, "Purge"),
  );
  section.replaceChildren(heading, groups, form, actions, notice, job, editor, list);
  await reload();
}

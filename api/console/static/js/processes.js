// Processes: the table follows the server without a reload. One long-poll at a time (`state?wait=25`
// with the version the page holds as If-None-Match): the server answers when a process, a run's
// status or a shown run's progress changed, else 304 after 25 s. Cells are set with textContent only.
// Elapsed ticks here, from the server's figure, between answers.

import { duration } from "./duration.js";
import { follow } from "./live.js";

const table = document.getElementById("processes");

function field(tr, name) {
  return tr.querySelector(`[data-field="${name}"]`);
}

function setElapsed(span, seconds, ticking) {
  span.dataset.seconds = seconds === null ? "" : String(seconds);
  span.dataset.at = String(performance.now());
  if (ticking) span.dataset.ticking = ""; else delete span.dataset.ticking;
  span.textContent = seconds === null ? "" : duration(seconds);
}

function tick() {
  const now = performance.now();
  for (const span of table.querySelectorAll("[data-ticking]")) {
    const base = Number(span.dataset.seconds);
    const at = Number(span.dataset.at || now);
    if (span.dataset.seconds !== "") span.textContent = duration(base + (now - at) / 1000);
  }
}

function apply(row) {
  const tr = document.getElementById(`process-${row.id}`);
  if (!tr) return false;
  const status = field(tr, "status");
  status.textContent = row.status_label;
  status.className = `status status-${row.status}`;
  field(tr, "stage").textContent = row.stage;
  field(tr, "note").textContent = row.note;
  const link = field(tr, "run");
  if (row.run_id) {
    link.href = `${table.dataset.runs}${row.run_id}/`;
    link.hidden = false;
  } else {
    link.hidden = true;
  }
  const bar = field(tr, "progress");
  bar.hidden = row.progress === null;
  bar.value = row.progress === null ? 0 : row.progress;
  bar.textContent = row.progress_text;
  field(tr, "progress_text").textContent = row.progress_text;
  setElapsed(field(tr, "elapsed"), row.elapsed_seconds, row.ticking);
  field(tr, "eta").textContent = row.eta ? `~${row.eta}` : "";
  for (const button of tr.querySelectorAll("button[data-action]")) {
    button.hidden = !row.actions.includes(button.dataset.action);
  }
  return true;
}

// Every row drawn from the answer, and the same rows as the table shows; else a process was made or
// deleted elsewhere: the table's rows changed, the page is drawn again.
function applyRows(body) {
  const shown = table.querySelectorAll("tbody tr").length;
  return body.rows.filter(apply).length === body.rows.length && shown === body.rows.length;
}

if (table) {
  for (const span of table.querySelectorAll('[data-field="elapsed"]')) {
    span.dataset.at = String(performance.now());
  }
  setInterval(tick, 1000); // local only: no request
  follow(table.dataset.state, table.dataset.version, applyRows, () => window.location.reload());
}

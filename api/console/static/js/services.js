// Services: the list's rows and a service's page follow the server without a reload. One long-poll
// at a time (`state?wait=25` with the version the page holds as If-None-Match): the server answers
// when a service moved, else 304 after 25 s. Cells are set with textContent only. The run time left
// counts down here, from the server's figure, between answers.

import { duration } from "./duration.js";
import { follow } from "./live.js";

// Set once a form is sent: its answer is the next page, which a reload here would cancel (a publish
// wakes the list's long-poll before its redirect is followed).
let leaving = false;
document.addEventListener("submit", (event) => {
  if (!event.defaultPrevented) leaving = true;
});

function reload() {
  if (!leaving) window.location.reload();
}

function setText(root, name, text) {
  const cell = root.querySelector(`[data-field="${name}"]`);
  if (cell) cell.textContent = text;
  return cell;
}

function setLeft(root, seconds) {
  const span = root.querySelector('[data-field="time_left"]');
  if (!span) return;
  span.dataset.seconds = seconds === null ? "" : String(seconds);
  span.dataset.at = String(performance.now());
  span.textContent = seconds === null ? "" : duration(seconds);
}

function countDown(root) {
  const now = performance.now();
  for (const span of root.querySelectorAll('[data-field="time_left"]')) {
    if (span.dataset.seconds === "") continue;
    const at = Number(span.dataset.at || now);
    span.textContent = duration(Math.max(0, Number(span.dataset.seconds) - (now - at) / 1000));
  }
}

function applyRow(root, row) {
  const status = setText(root, "status", row.status_label);
  status.className = `status status-${row.status}`;
  setText(root, "reason", row.reason);
  setText(root, "serving", row.serving);
  setText(root, "started", row.started);
  setText(root, "ended", row.ended);
  setLeft(root, row.time_left_seconds);
}

function applyList(table, body) {
  const rows = table.querySelectorAll("tbody tr");
  if (rows.length !== body.rows.length) return false;
  for (const [index, row] of body.rows.entries()) {
    const tr = rows[index];
    if (tr.dataset.name !== row.name) return false; // made or deleted elsewhere
    applyRow(tr, row);
  }
  return true;
}

function cells(values) {
  const tr = document.createElement("tr");
  for (const value of values) {
    const td = document.createElement("td");
    td.textContent = value;
    tr.append(td);
  }
  return tr;
}

function applyService(root, body) {
  const row = body.service;
  applyRow(root, row);
  root.querySelector('[data-field="delete_requested"]').hidden = !row.delete_requested;
  const tail = root.querySelector('[data-field="error_tail"]');
  tail.textContent = row.error_tail;
  tail.hidden = !row.error_tail;
  for (const button of root.querySelectorAll("button[data-action]")) {
    button.hidden = !row.actions.includes(button.dataset.action);
  }
  const addresses = root.querySelector('[data-field="addresses"]');
  addresses.replaceChildren(
    ...body.addresses.map((address) => {
      const li = document.createElement("li");
      const code = document.createElement("code");
      code.textContent = `${address}/predict`;
      li.append(code);
      return li;
    }),
  );
  addresses.hidden = body.addresses.length === 0;
  const note = root.querySelector('[data-field="not_serving"]');
  if (note) note.hidden = body.serving;
  const fields = document.getElementById("test-fields");
  if (fields) fields.disabled = !body.serving;
  const history = document.getElementById("history");
  history.replaceChildren(
    ...body.history.map((e) => cells([e.at, e.who, e.what, e.instance, e.move, e.reason, e.detail])),
  );
  return true;
}

const list = document.getElementById("services");
const page = document.getElementById("service");
const root = list || page;
if (root) {
  for (const span of root.querySelectorAll('[data-field="time_left"]')) {
    span.dataset.at = String(performance.now());
  }
  setInterval(() => countDown(root), 1000); // local only: no request
  const apply = list ? applyList : applyService;
  follow(root.dataset.state, root.dataset.version, (body) => apply(root, body), reload);
}

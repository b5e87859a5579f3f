// Uploads of the Packages and Datasets pages: drag and drop onto the form, and a byte progress bar
// (XMLHttpRequest's upload progress; fetch() has none). The form works without this script: it posts
// as multipart with its csrf_token field. Here the token goes in the X-CSRF-Token header instead, so
// the server checks it before it reads the body.
import { csrfToken } from "./console.js";

function fill(template, values) {
  return template.replace(/\{(\w+)\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
}

const numbers = new Intl.NumberFormat(document.documentElement.lang || undefined);

function say(form, text, isError) {
  const status = form.querySelector("[data-status]");
  const line = document.createElement("span");
  if (isError) line.className = "error";
  line.textContent = text;
  status.replaceChildren(line);
}

// Dropped files go to the form's file inputs: one zip to a `file` input, anything else to `files`.
function place(form, dropped) {
  const single = form.querySelector('input[type="file"][name="file"]');
  const many = form.querySelector('input[type="file"][name="files"]');
  const list = Array.from(dropped);
  const zip = list.length === 1 && /\.zip$/i.test(list[0].name);
  const target = (zip || !many) ? single : many;
  if (!target) return;
  const chosen = new DataTransfer();
  for (const file of target === single ? list.slice(0, 1) : list) chosen.items.add(file);
  target.files = chosen.files;
  if (target === single && many) many.value = "";
  if (target === many && single) single.value = "";
  target.dispatchEvent(new Event("change", { bubbles: true }));
}

function send(form) {
  const data = new FormData(form);
  data.delete("csrf_token");
  const bar = form.querySelector("[data-bar]");
  const button = form.querySelector('button[type="submit"]');
  const request = new XMLHttpRequest();
  request.open("POST", form.action);
  request.setRequestHeader("X-CSRF-Token", csrfToken());
  request.setRequestHeader("Accept", "application/json");
  request.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    bar.max = event.total;
    bar.value = event.loaded;
    say(form, fill(form.dataset.progress, { sent: numbers.format(event.loaded), total: numbers.format(event.total) }), false);
  });
  request.addEventListener("load", () => {
    button.disabled = false;
    let answer = {};
    try {
      answer = JSON.parse(request.responseText);
    } catch {
      answer = {};
    }
    if (request.status >= 200 && request.status < 300 && answer.url) {
      say(form, form.dataset.done, false);
      window.location.assign(answer.url);
      return;
    }
    bar.hidden = true;
    say(form, answer.detail || `${request.status} ${request.statusText}`, true);
  });
  request.addEventListener("error", () => {
    button.disabled = false;
    bar.hidden = true;
    say(form, form.dataset.failed, true);
  });
  bar.hidden = false;
  bar.value = 0;
  button.disabled = true;
  say(form, form.dataset.sending, false);
  request.send(data);
}

for (const form of document.querySelectorAll("form[data-upload]")) {
  const zone = form.querySelector("[data-drop]") || form;
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) place(form, event.dataTransfer.files);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    send(form);
  });
}

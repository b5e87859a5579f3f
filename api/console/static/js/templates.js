// The template form: a changed base package or version re-renders the version's own parameters from
// the console's JSON route. Without this script the form's "Show this version's parameters" button
// posts the form back to be drawn again. Every name is set as text, never as HTML.

const form = document.querySelector("form.template-form");
const box = document.getElementById("parameters");
const packageField = document.getElementById("f-base_package");
let versionField = document.getElementById("f-base_version");

function fill(template, values) {
  return template.replace(/\{(\w+)\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
}

function element(tag, attributes = {}, text = null) {
  const made = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) made.setAttribute(name, value);
  if (text !== null) made.textContent = text;
  return made;
}

function hintOf(item) {
  const parts = [];
  if (item.description) parts.push(item.description);
  parts.push(fill(box.dataset.typeHint, { type: item.type }));
  if (item.default !== null && item.default !== undefined) {
    parts.push(fill(box.dataset.defaultHint, { default: shown(item.default) }));
  }
  return parts.join(" · ");
}

function shown(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  return String(value);
}

function drawParameters(declared) {
  const holder = box.querySelector("[data-parameters]");
  holder.replaceChildren();
  if (declared === null) {
    const field = element("p", { class: "field" });
    field.append(
      element("label", { for: "f-parameters_json" }, box.dataset.freeLabel),
      element("textarea", { id: "f-parameters_json", name: "parameters_json", rows: "4", "aria-describedby": "f-parameters_json-hint" }),
      element("span", { class: "hint", id: "f-parameters_json-hint" }, box.dataset.free),
    );
    holder.append(field);
    return;
  }
  if (declared.length === 0) {
    holder.append(element("p", { class: "hint" }, box.dataset.none));
    return;
  }
  declared.forEach((item, index) => {
    const id = `p-${index + 1}`;
    const field = element("p", { class: item.type === "bool" ? "field check" : "field", "data-parameter": item.name });
    const label = element("label", { for: id }, item.name);
    const hint = element("span", { class: "hint", id: `${id}-hint` }, hintOf(item));
    if (item.type === "bool") {
      const input = element("input", { type: "checkbox", id, name: `param.${item.name}`, value: "true", "aria-describedby": hint.id });
      input.checked = item.default === true;
      field.append(input, label, hint);
    } else {
      const input = element("input", { type: "text", id, name: `param.${item.name}`, "aria-describedby": hint.id });
      if (item.type === "int") input.inputMode = "numeric";
      if (item.type === "float") input.inputMode = "decimal";
      input.value = item.default === null || item.default === undefined ? "" : String(item.default);
      field.append(label, input, hint);
    }
    holder.append(field);
  });
}

function drawVersions(versions, chosen) {
  if (versionField.tagName !== "SELECT") {
    const select = element("select", { id: versionField.id, name: versionField.name });
    versionField.replaceWith(select);
    versionField = select;
    versionField.addEventListener("change", () => refresh(false));
    const hint = document.getElementById("f-base_version-hint");
    if (hint) hint.remove();
  }
  const keep = versionField.value;
  versionField.replaceChildren(element("option", { value: "" }, box.dataset.latest));
  for (const version of versions) versionField.append(element("option", { value: version }, version));
  versionField.value = versions.includes(keep) && chosen !== null ? keep : "";
}

async function refresh(packageChanged) {
  const name = packageField.value;
  if (!name) {
    drawParameters(null);
    if (versionField.tagName === "SELECT") versionField.replaceChildren(element("option", { value: "" }, box.dataset.latest));
    return;
  }
  const query = new URLSearchParams({ package: name });
  if (!packageChanged && versionField.value) query.set("version", versionField.value);
  const answer = await fetch(`${box.dataset.url}?${query}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!answer.ok) {
    const holder = box.querySelector("[data-parameters]");
    holder.replaceChildren(element("p", { class: "error" }, box.dataset.failed));
    return;
  }
  const found = await answer.json();
  if (packageChanged) drawVersions(found.versions, null);
  drawParameters(found.parameters);
}

if (form && box && packageField && packageField.tagName === "SELECT" && !form.querySelector("fieldset[disabled]")) {
  // Removed, not hidden: as the form's first submit button it would take Enter's implicit submission.
  for (const button of form.querySelectorAll("[data-refresh]")) button.closest("p").remove();
  packageField.addEventListener("change", () => refresh(true));
  if (versionField) versionField.addEventListener("change", () => refresh(false));
}

// Monitoring and Compare: uPlot charts on a canvas (never a DOM node per point). The overview is the
// server's min/max downsampling; a drag reads the window again at full resolution; Monitoring follows
// the run with one long-poll at a time (`live?wait=25&since=N`, If-None-Match), appending the points
// stored since N. Every text from the server is set with textContent.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { duration } from "./duration.js";

const WAIT_SECONDS = 25;
const WINDOW_POINTS = 20000; // a zoom's window: every point up to this many a series (the route's limit)
const COLOURS = { learning_rate: "#1a7f37", loss: "#1d4ed8", accuracy: "#c62828" };
const SCALES = { learning_rate: "lr", loss: "loss", accuracy: "acc" };
const PALETTE = ["#7c3aed", "#b45309", "#0f766e", "#be185d", "#4b5563", "#0369a1", "#65a30d", "#9f1239"];

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
  const type = response.headers.get("content-type") || "";
  if (!response.ok || !type.includes("json")) throw new Error(`${response.status} ${url}`);
  return response.json();
}

function chartWidth(element) {
  return Math.max(320, element.clientWidth || 800);
}

function overviewPoints(element) {
  return Math.min(2000, Math.max(200, 2 * chartWidth(element)));
}

/** An axis's tick labels with enough digits to tell them apart (a learning rate of 0.0021 vs 0.0025). */
function ticks(u, splits) {
  return splits.map((v) => (v === null || v === undefined ? "" : String(Number(v.toPrecision(4)))));
}

/** [steps, values] of each named series, joined on one x axis (undefined where one has no point). */
function joined(curves) {
  if (curves.length === 0) return [[]];
  return uPlot.join(curves.map((c) => [Float64Array.from(c.step), Float64Array.from(c.value)]));
}

/** A chart that zooms by a drag (re-reading the window) and returns to the overview on a double click. */
class Chart {
  constructor(element, { xLabel, series, scales, axes, readWindow, readOverview, onZoom }) {
    this.element = element;
    this.readWindow = readWindow;
    this.readOverview = readOverview;
    this.onZoom = onZoom;
    this.zoomed = null;
    this.painted = false;
    const chart = this;
    this.plot = new uPlot(
      {
        width: chartWidth(element),
        height: 380,
        scales: { x: { time: false }, ...scales },
        series: [{ label: xLabel }, ...series],
        axes: [{ label: xLabel }, ...axes],
        cursor: {
          drag: { x: true, y: false, setScale: false },
          bind: { dblclick: () => () => { chart.reset(); return null; } },
        },
        hooks: {
          setSelect: [(u) => chart.selected(u)],
          draw: [(u) => chart.drawn(u)],
        },
      },
      [[]],
      element,
    );
    this.resized = () => this.plot.setSize({ width: chartWidth(element), height: 380 });
    window.addEventListener("resize", this.resized);
  }

  destroy() {
    window.removeEventListener("resize", this.resized);
    this.plot.destroy();
  }

  drawn(u) {
    if (!this.painted && u.data[0] && u.data[0].length > 0) {
      this.painted = true;
      performance.mark("chart-painted"); // bench/console.py reads it: the first paint with points
    }
  }

  async selected(u) {
    if (u.select.width < 2) return;
    const low = u.posToVal(u.select.left, "x");
    const high = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    this.zoomed = { low, high };
    const data = await this.readWindow(low, high);
    if (!this.zoomed || this.zoomed.low !== low) return; // another zoom or a reset came first
    this.plot.setData(data, false);
    this.plot.setScale("x", { min: low, max: high });
    this.element.dataset.points = String(data[0].length);
    this.onZoom(true);
  }

  async reset() {
    this.zoomed = null;
    const data = await this.readOverview();
    this.plot.setData(data, true);
    this.element.dataset.points = String(data[0].length);
    this.onZoom(false);
  }

  show(data) {
    if (this.zoomed) return; // a zoomed window stays put; the overview is redrawn on reset
    this.plot.setData(data, true);
    this.element.dataset.points = String(data[0].length); // the steps drawn: what a test can watch
  }
}

// Monitoring ----------------------------------------------------------------------------------------

function colourOf(name, index) {
  return COLOURS[name] || PALETTE[index % PALETTE.length];
}

function monitoring(root) {
  const base = root.dataset.base;
  const element = document.getElementById("chart");
  const list = document.getElementById("series-list");
  const reset = document.getElementById("reset-zoom");
  const empty = document.getElementById("chart-empty");
  const store = new Map(); // name -> {step: [], value: []}, the overview, grown by the live points
  let chart = null;

  const checked = () => [...list.querySelectorAll("input[name=series]:checked")].map((box) => box.value);
  const allNames = () => [...list.querySelectorAll("input[name=series]")].map((box) => box.value);

  function build() {
    const names = checked().filter((name) => store.has(name) && store.get(name).step.length > 0);
    const scales = {};
    const axes = [];
    const series = names.map((name, index) => {
      const scale = SCALES[name] || "other";
      if (!scales[scale]) {
        scales[scale] = { auto: true };
        const side = axes.length % 2 === 0 ? 3 : 1;
        axes.push({
          scale,
          side,
          values: ticks,
          size: 60,
          stroke: SCALES[name] ? colourOf(name, index) : "#4b5563",
          grid: { show: axes.length === 0 },
          label: SCALES[name] ? name : "",
        });
      }
      return { label: name, scale, stroke: colourOf(name, allNames().indexOf(name)), width: 1.5, spanGaps: true };
    });
    if (chart) chart.destroy();
    element.replaceChildren();
    chart = new Chart(element, {
      xLabel: element.dataset.x,
      series,
      scales,
      axes,
      readWindow: async (low, high) => {
        const url = new URL(`${base}metrics`, window.location.href);
        for (const name of names) url.searchParams.append("series", name);
        url.searchParams.set("low", String(low));
        url.searchParams.set("high", String(high));
        url.searchParams.set("max_points", String(WINDOW_POINTS));
        const body = await getJSON(url);
        const byName = new Map(body.series.map((s) => [s.name, s]));
        return joined(names.map((name) => byName.get(name) || { step: [], value: [] }));
      },
      readOverview: async () => {
        await loadOverview();
        return joined(names.map((name) => store.get(name)));
      },
      onZoom: (zoomed) => { reset.hidden = !zoomed; },
    });
    empty.hidden = names.length > 0;
    chart.show(joined(names.map((name) => store.get(name))));
  }

  async function loadOverview() {
    const url = new URL(`${base}metrics`, window.location.href);
    url.searchParams.set("max_points", String(overviewPoints(element)));
    const body = await getJSON(url);
    for (const s of body.series) store.set(s.name, { step: s.step, value: s.value });
    return body.next_since;
  }

  function addCheckbox(name) {
    if (allNames().includes(name)) return;
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = "series";
    box.value = name;
    box.checked = (list.dataset.primo || "").split(",").includes(name);
    label.append(box, ` ${name}`);
    list.append(label);
  }

  function setLatest(s) {
    const tbody = document.getElementById("latest");
    let tr = [...tbody.querySelectorAll("tr")].find((row) => row.dataset.series === s.name);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.series = s.name;
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = s.name;
      tr.append(th);
      for (const cell of ["step", "value", "count"]) {
        const td = document.createElement("td");
        td.className = "number";
        td.dataset.cell = cell;
        tr.append(td);
      }
      tbody.append(tr);
    }
    const number = new Intl.NumberFormat(document.documentElement.lang);
    if (s.latest) {
      tr.querySelector('[data-cell="step"]').textContent = number.format(s.latest.step);
      tr.querySelector('[data-cell="value"]').textContent = String(Number(s.latest.value.toPrecision(6)));
    }
    tr.querySelector('[data-cell="count"]').textContent = number.format(s.count);
  }

  function setFields(fields) {
    const field = (name) => root.querySelector(`[data-field="${name}"]`);
    const status = field("status");
    status.textContent = fields.status_label;
    status.className = `status status-${fields.status}`;
    field("stage").textContent = fields.stage;
    field("offline").textContent = fields.offline;
    const bar = field("progress");
    bar.hidden = fields.progress === null;
    bar.value = fields.progress === null ? 0 : fields.progress;
    bar.textContent = fields.progress_text;
    field("progress_text").textContent = fields.progress_text;
    const elapsed = field("elapsed");
    elapsed.dataset.seconds = fields.elapsed_seconds === null ? "" : String(fields.elapsed_seconds);
    elapsed.dataset.at = String(performance.now());
    if (fields.ticking) elapsed.dataset.ticking = ""; else delete elapsed.dataset.ticking;
    elapsed.textContent = fields.elapsed;
    field("eta").textContent = fields.eta;
    field("reason").textContent = fields.reason;
    const detail = field("detail");
    detail.textContent = fields.detail;
    detail.hidden = !fields.detail;
  }

  function setTrail(events) {
    const items = events.map((event) => {
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.dateTime = event.at;
      time.textContent = event.when;
      const parts = [time];
      for (const [cls, text] of [["who", event.who], ["what", event.change ? `${event.kind}: ${event.change}` : event.kind], ["why", event.reason], ["detail-text", event.detail]]) {
        if (!text) continue;
        const span = document.createElement("span");
        span.className = cls;
        span.textContent = text;
        parts.push(span);
      }
      li.append(...parts);
      return li;
    });
    document.getElementById("trail").replaceChildren(...items);
  }

  function append(series) {
    let grown = false;
    for (const s of series) {
      addCheckbox(s.name);
      setLatest(s);
      const held = store.get(s.name) || { step: [], value: [] };
      held.step = held.step.concat(s.step);
      held.value = held.value.concat(s.value);
      store.set(s.name, held);
      grown = grown || held.step.length > 4 * overviewPoints(element);
    }
    return grown;
  }

  function tick() {
    const span = root.querySelector('[data-field="elapsed"]');
    if (span.dataset.ticking === undefined || span.dataset.seconds === "") return;
    const at = Number(span.dataset.at || performance.now());
    span.textContent = duration(Number(span.dataset.seconds) + (performance.now() - at) / 1000);
  }

  async function follow(since) {
    let version = root.dataset.version;
    let failures = 0;
    for (;;) {
      const url = new URL(`${base}live`, window.location.href);
      url.searchParams.set("since", String(since));
      url.searchParams.set("wait", String(WAIT_SECONDS));
      let response;
      try {
        response = await fetch(url, { headers: { "If-None-Match": version, Accept: "application/json" }, cache: "no-store", credentials: "same-origin" });
      } catch {
        failures += 1;
        await sleep(Math.min(30000, 1000 * 2 ** Math.min(failures, 5)));
        continue;
      }
      if (response.status === 304) continue;
      const type = response.headers.get("content-type") || "";
      if (!response.ok || !type.includes("json")) {
        window.location.reload(); // the session ended, or the run went: the page says why
        return;
      }
      failures = 0;
      const body = await response.json();
      version = response.headers.get("ETag") || version;
      setFields(body.fields);
      setTrail(body.events);
      if (body.series && body.series.length > 0) {
        if (append(body.series)) await loadOverview(); // long enough: downsample again on the server
        if (!chart || !chart.painted || chart.plot.series.length - 1 !== checked().filter((n) => store.has(n)).length) build();
        else chart.show(joined(checked().filter((n) => store.has(n)).map((n) => store.get(n))));
      }
      since = body.next_since;
    }
  }

  reset.addEventListener("click", () => chart && chart.reset());
  list.addEventListener("change", () => build());
  root.querySelector('[data-field="elapsed"]').dataset.at = String(performance.now());
  setInterval(tick, 1000); // local only: no request
  loadOverview()
    .then((since) => {
      build();
      follow(Math.max(since, Number(root.dataset.since)));
    })
    .catch(() => { empty.hidden = false; });
}

// Compare -------------------------------------------------------------------------------------------

function compare(root) {
  const element = document.getElementById("chart");
  const reset = document.getElementById("reset-zoom");
  const empty = document.getElementById("chart-empty");
  const metric = root.dataset.metric;
  const runs = [...root.querySelectorAll("li[data-url]")].map((li) => ({ url: li.dataset.url, label: li.dataset.label }));

  async function read(low, high) {
    const curves = await Promise.all(
      runs.map(async (run) => {
        const url = new URL(run.url, window.location.href);
        url.searchParams.set("series", metric);
        url.searchParams.set("max_points", String(low === undefined ? overviewPoints(element) : WINDOW_POINTS));
        if (low !== undefined) {
          url.searchParams.set("low", String(low));
          url.searchParams.set("high", String(high));
        }
        const body = await getJSON(url);
        return body.series.find((s) => s.name === metric) || { step: [], value: [] };
      }),
    );
    return joined(curves);
  }

  read().then((data) => {
    const points = data.slice(1).some((ys) => ys.some((y) => y !== undefined && y !== null));
    empty.hidden = points;
    const chart = new Chart(element, {
      xLabel: root.dataset.x,
      series: runs.map((run, index) => ({ label: run.label, stroke: PALETTE[index % PALETTE.length], width: 1.5, spanGaps: true })),
      scales: { y: { auto: true } },
      axes: [{ label: metric, values: ticks, size: 60 }],
      readWindow: (low, high) => read(low, high),
      readOverview: () => read(),
      onZoom: (zoomed) => { reset.hidden = !zoomed; },
    });
    chart.show(data);
    reset.addEventListener("click", () => chart.reset());
  });
}

const monitoringRoot = document.getElementById("monitoring");
if (monitoringRoot) monitoring(monitoringRoot);
const compareRoot = document.getElementById("compare");
if (compareRoot) compare(compareRoot);

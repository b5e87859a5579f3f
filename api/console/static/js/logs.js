// The Training log: the whole log in a fixed-height viewport that holds only the rows in view (a
// million lines are a million offsets, never a million elements), read in blocks by offset from the
// console's JSON route, and followed while the run writes (the API's long-poll: a held request that
// answers when a line is stored, no timer that re-reads the page). A search or a stream filter reads
// the matching lines in order, block after block, as the viewport reaches the end of what it holds.

const BLOCK = 1000; // lines per read
const OVERSCAN = 8; // rows drawn beyond the viewport, each side
const MAX_BLOCKS = 40; // blocks kept (40,000 lines); the least recently drawn are dropped
const MAX_PX = 8_000_000; // browsers cap an element's height; past it the scrollbar is scaled
const FOLLOW_SECONDS = 25;
const RETRY_MS = 5000;
const ACTIVE = new Set(["starting", "running", "stopping"]);

const root = document.getElementById("log");
if (root) new LogView(root).start();

function LogView(root) {
  const d = root.dataset;
  const scroll = document.getElementById("log-scroll");
  const count = document.getElementById("log-count");
  const status = document.getElementById("log-status");
  const follow = document.getElementById("log-follow");
  const states = JSON.parse(d.states || "{}");
  const filtered = Boolean(d.q || d.stream);
  const numbers = new Intl.NumberFormat(d.locale || undefined);
  let total = Number(d.total) || 0;
  let rowHeight = 20;
  let stuck = false; // the viewport shows the end: new lines keep it there
  let drawQueued = false;
  let following = null; // the AbortController of the held read
  let failed = false;

  // "all": line i is at offset i; blocks of BLOCK lines, read on demand.
  const blocks = new Map(); // block number -> {lines: [], complete, pending, readAt}
  // filtered: the matching lines in order, read on from `cursor`.
  const found = [];
  let cursor = 0;
  let exhausted = false; // read up to the end of the log (more may come while the run writes)
  let reading = false;

  const spacer = document.createElement("div");
  spacer.className = "log-spacer";
  const rows = document.createElement("div");
  rows.className = "log-rows";
  rows.setAttribute("role", "list");
  const pool = [];

  function url(params) {
    const address = new URL(d.lines, window.location.href);
    for (const [key, value] of Object.entries(params)) address.searchParams.set(key, String(value));
    if (d.q) address.searchParams.set("q", d.q);
    if (d.stream) address.searchParams.set("stream", d.stream);
    return address;
  }

  async function read(params, signal) {
    const response = await fetch(url(params), { credentials: "same-origin", signal, headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`log read: ${response.status}`);
    const page = await response.json();
    failed = false;
    showStatus(page.status);
    return page;
  }

  function showStatus(value) {
    if (!status || !states[value]) return;
    status.textContent = states[value];
    status.className = `status status-${value}`;
  }

  function rowCount() {
    return filtered ? found.length : total;
  }

  // The line for row i, or null while its block is read.
  function lineAt(i) {
    if (filtered) return found[i] || null;
    const number = Math.floor(i / BLOCK);
    const block = blocks.get(number);
    if (block) {
      blocks.delete(number); // most recently drawn last: eviction takes the oldest
      blocks.set(number, block);
      const line = block.lines[i % BLOCK];
      if (line) return line;
      if (!block.pending && !block.complete && block.readAt < total) readBlock(number);
      return null;
    }
    readBlock(number);
    return null;
  }

  function store(line) {
    const number = Math.floor(line.offset / BLOCK);
    let block = blocks.get(number);
    if (!block) {
      block = { lines: [], complete: false, pending: false, readAt: -1 };
      blocks.set(number, block);
    }
    block.lines[line.offset % BLOCK] = line;
  }

  async function readBlock(number) {
    let block = blocks.get(number);
    if (!block) {
      block = { lines: [], complete: false, pending: false, readAt: -1 };
      blocks.set(number, block);
    }
    block.pending = true;
    block.readAt = total;
    try {
      const page = await read({ offset: number * BLOCK, limit: BLOCK });
      for (const line of page.lines) store(line);
      block.complete = page.lines.length === BLOCK;
      total = Math.max(total, page.total);
    } catch (error) {
      failed = true;
    } finally {
      block.pending = false;
    }
    while (blocks.size > MAX_BLOCKS) blocks.delete(blocks.keys().next().value);
    queueDraw();
  }

  async function readMatches() {
    if (reading || exhausted) return;
    reading = true;
    try {
      const page = await read({ offset: cursor, limit: BLOCK });
      found.push(...page.lines);
      cursor = page.next_offset;
      total = Math.max(total, page.total);
      exhausted = page.lines.length < BLOCK;
    } catch (error) {
      failed = true;
    } finally {
      reading = false;
    }
    queueDraw();
    if (exhausted && follow && follow.checked) startFollowing();
  }

  // The held read: answered when a line is stored, or empty after FOLLOW_SECONDS.
  async function startFollowing() {
    if (following || (filtered && !exhausted)) return;
    following = new AbortController();
    const signal = following.signal;
    while (!signal.aborted) {
      try {
        const offset = filtered ? cursor : total;
        const page = await read({ offset, limit: BLOCK, follow: FOLLOW_SECONDS }, signal);
        if (filtered) {
          found.push(...page.lines);
          cursor = page.next_offset;
        } else {
          for (const line of page.lines) store(line);
        }
        total = Math.max(total, page.total, page.next_offset);
        queueDraw();
        if (!ACTIVE.has(page.status) && page.lines.length === 0) break; // ended: nothing more comes
      } catch (error) {
        if (signal.aborted) return;
        failed = true;
        queueDraw();
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    }
    following = null;
    if (follow) follow.checked = false;
    queueDraw();
  }

  function stopFollowing() {
    if (following) following.abort();
    following = null;
  }

  function measure() {
    const probe = makeRow();
    probe.querySelector(".t").textContent = "0";
    rows.append(probe);
    rowHeight = probe.getBoundingClientRect().height || rowHeight;
    probe.remove();
  }

  function makeRow() {
    const row = document.createElement("div");
    row.className = "log-line";
    row.setAttribute("role", "listitem");
    for (const part of ["n", "s", "t"]) {
      const span = document.createElement("span");
      span.className = part;
      row.append(span);
    }
    return row;
  }

  function queueDraw() {
    if (drawQueued) return;
    drawQueued = true;
    window.requestAnimationFrame(draw);
  }

  function draw() {
    drawQueued = false;
    const n = rowCount();
    const height = Math.min(n * rowHeight, MAX_PX);
    spacer.style.height = `${height}px`;
    if (stuck) scroll.scrollTop = scroll.scrollHeight;
    const view = scroll.clientHeight;
    const visible = Math.ceil(view / rowHeight) + 1;
    const top = scroll.scrollTop;
    let first;
    let offsetPx;
    if (n * rowHeight <= MAX_PX) {
      first = Math.floor(top / rowHeight);
      offsetPx = first * rowHeight;
    } else {
      const range = Math.max(1, height - view);
      first = Math.round((Math.min(top, range) / range) * Math.max(0, n - visible + 1));
      offsetPx = top;
    }
    const start = Math.max(0, first - OVERSCAN);
    const end = Math.min(n, first + visible + OVERSCAN);
    rows.style.transform = `translateY(${offsetPx - (first - start) * rowHeight}px)`;
    while (pool.length < end - start) {
      const row = makeRow();
      pool.push(row);
      rows.append(row);
    }
    pool.forEach((row, k) => {
      const i = start + k;
      if (i >= end) {
        row.hidden = true;
        return;
      }
      row.hidden = false;
      const line = lineAt(i);
      const [number, stream, text] = row.children;
      if (line) {
        number.textContent = String(line.offset + 1);
        stream.textContent = line.stream;
        text.textContent = line.text;
        row.className = `log-line ${line.stream}`;
      } else {
        number.textContent = filtered ? "" : String(i + 1);
        stream.textContent = "";
        text.textContent = d.textLoading;
        row.className = "log-line pending";
      }
    });
    if (filtered && !exhausted && end >= found.length - visible) readMatches();
    showCount();
  }

  function showCount() {
    let text;
    if (failed) text = d.textFailed;
    else if (!filtered) text = d.textTotal.replace("{total}", numbers.format(total));
    else if (exhausted && !following) text = d.textFilteredEnd.replace("{shown}", numbers.format(found.length));
    else text = d.textFiltered.replace("{shown}", numbers.format(found.length));
    if (rowCount() === 0 && !failed && (!filtered || exhausted)) text = d.textEmpty;
    if (count.textContent !== text) count.textContent = text;
  }

  this.start = () => {
    scroll.replaceChildren(spacer, rows);
    scroll.classList.add("live");
    const pages = document.getElementById("log-pages");
    if (pages) pages.hidden = true;
    const tools = document.getElementById("log-tools");
    if (tools) tools.hidden = false;
    measure();
    scroll.addEventListener("scroll", () => {
      stuck = scroll.scrollTop + scroll.clientHeight >= scroll.scrollHeight - rowHeight;
      queueDraw();
    }, { passive: true });
    window.addEventListener("resize", queueDraw);
    document.getElementById("log-top")?.addEventListener("click", () => {
      stuck = false;
      scroll.scrollTop = 0;
      queueDraw();
    });
    document.getElementById("log-end")?.addEventListener("click", () => {
      stuck = true;
      queueDraw();
    });
    follow?.addEventListener("change", () => {
      if (follow.checked) {
        stuck = true;
        startFollowing();
      } else {
        stopFollowing();
      }
      queueDraw();
    });
    if (filtered) readMatches();
    if (follow && follow.checked) {
      stuck = true;
      if (!filtered) startFollowing();
    }
    queueDraw();
  };
}

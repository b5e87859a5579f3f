// A page that follows the server without a reload: one long-poll at a time (`state?wait=25` with the
// version the page holds as If-None-Match). The server answers when something shown moved, else 304
// after 25 s. A network failure backs off and asks again; an answer that is not the state (the session
// ended, what the page shows was deleted) or one `apply` cannot draw hands over to `gone`.

const WAIT_SECONDS = 25;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function follow(stateUrl, version, apply, gone) {
  const url = new URL(stateUrl, window.location.href);
  url.searchParams.set("wait", String(WAIT_SECONDS));
  let failures = 0;
  document.getElementById("live-note").hidden = false;
  for (;;) {
    let response;
    try {
      response = await fetch(url, {
        headers: { "If-None-Match": version, Accept: "application/json" },
        cache: "no-store",
        credentials: "same-origin",
      });
    } catch {
      failures += 1; // the server restarts, the network drops: back off, then ask again
      await sleep(Math.min(30000, 1000 * 2 ** Math.min(failures, 5)));
      continue;
    }
    if (response.status === 304) {
      failures = 0;
      continue;
    }
    const type = response.headers.get("content-type") || "";
    if (!response.ok || !type.includes("json")) {
      gone();
      return;
    }
    failures = 0;
    const body = await response.json();
    version = response.headers.get("ETag") || version;
    if (!apply(body)) {
      gone();
      return;
    }
  }
}

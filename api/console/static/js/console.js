// The console's shared script: pages work without it; it only makes them nicer to use.

/** The page's CSRF token, for a script's own state-changing fetch (header `X-CSRF-Token`). */
export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/** fetch() with the CSRF header on every request that changes something. */
export function send(url, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("X-CSRF-Token", csrfToken());
  return fetch(url, { ...options, headers, credentials: "same-origin" });
}

// A form refused by the server comes back with its fields marked: put the keyboard on the first.
const invalid = document.querySelector('[aria-invalid="true"]');
if (invalid) invalid.focus();

// Buttons that need a second thought (deletions, to come) say so in `data-confirm`.
document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const question = button && button.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// A secret shown once (an agent token, an API token): a button copies it with the Clipboard API. The
// button stays hidden without script, where the text can still be selected and copied by hand.

for (const button of document.querySelectorAll("button[data-copy]")) {
  const source = document.getElementById(button.dataset.copy);
  const status = button.parentElement.querySelector("[role=status]");
  if (!source || !navigator.clipboard) continue;
  button.hidden = false;
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(source.textContent.trim());
      if (status) status.textContent = button.dataset.copied;
    } catch {
      if (status) status.textContent = button.dataset.copyFailed;
      window.getSelection().selectAllChildren(source); // so that Ctrl+C copies it by hand
    }
  });
}

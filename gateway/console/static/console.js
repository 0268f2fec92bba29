// The console's only script (README "Web console"): confirm dialogs and Copy. Everything else
// is plain HTML forms, so the pages work without it, except these two conveniences.
"use strict";

function copy(button) {
  const source = document.getElementById(button.dataset.copy);
  const status = button.parentElement.querySelector(".copied");
  const text = source.textContent.trim();
  const said = (message) => { if (status) status.textContent = message; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(() => said("Copied"), () => select(source, said));
  } else {
    select(source, said);
  }
}

function select(element, said) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  said("Selected: press Ctrl+C (⌘C) to copy");
}

document.addEventListener("click", (event) => {
  const target = event.target.closest("[data-open], [data-close], [data-copy]");
  if (!target) return;
  if (target.dataset.open) document.getElementById(target.dataset.open).showModal();
  if (target.dataset.close) document.getElementById(target.dataset.close).close();
  if (target.dataset.copy) copy(target);
});

// Vigil console: adds alerts to the inbox as the agent raises them (server-sent events). The
// rows arrive rendered (and escaped) by the server. Written for this project.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("inbox");
  if (!table || !window.EventSource) return;
  const body = table.querySelector("tbody");
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("alert", (event) => {
    body.insertAdjacentHTML("afterbegin", event.data);
    const row = body.firstElementChild;
    if (row) row.classList.add("fresh");
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
    const shown = document.getElementById("shown");
    if (shown) shown.textContent = String(Number(shown.textContent) + 1);
  });
});

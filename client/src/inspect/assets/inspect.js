// tunnelc inspector: live list updates (server-sent events), filtering, revealing masked
// values. The pages work without it.
"use strict";
(function () {
  const rows = document.getElementById("rows");
  const filter = document.getElementById("filter");
  const stats = document.getElementById("stats");
  // A request page whose response has not come yet.
  const status = document.querySelector("#status[data-request]");
  const pending = status && status.querySelector(".status.pending") ? status.dataset.request : null;

  function applyFilter() {
    if (!rows || !filter) return;
    const q = filter.value.trim().toLowerCase();
    for (const tr of rows.querySelectorAll("tr[data-search]")) {
      tr.hidden = q !== "" && !tr.dataset.search.includes(q);
    }
  }
  if (filter) {
    filter.addEventListener("input", applyFilter);
  }

  async function refresh() {
    if (rows) {
      const r = await fetch(rows.dataset.fragment, { cache: "no-store" });
      if (r.ok) {
        rows.innerHTML = await r.text();
        applyFilter();
        const n = rows.querySelectorAll("tr[data-search]").length;
        if (stats) stats.textContent = n + " requests kept";
      }
    } else if (pending) {
      // Reload once this request has its answer (not at every other request's change).
      const r = await fetch("/api/requests/" + pending, { cache: "no-store" });
      if (r.ok && (await r.json()).outcome !== "pending") location.reload();
    }
  }

  if (window.EventSource && (rows || pending)) {
    const events = new EventSource("/events");
    let first = true;
    events.onmessage = function () {
      // The first event says where the store is; a pending request may have ended since
      // the page was made, so look once.
      if (first && rows) { first = false; return; }
      first = false;
      refresh().catch(function () {});
    };
  }

  document.addEventListener("click", function (ev) {
    const b = ev.target.closest("button.reveal");
    if (!b) return;
    const masked = b.previousElementSibling;
    if (b.dataset.shown === "1") {
      masked.textContent = b.dataset.masked;
      b.dataset.shown = "0";
      b.textContent = "Show";
    } else {
      b.dataset.masked = masked.textContent;
      masked.textContent = b.dataset.value;
      b.dataset.shown = "1";
      b.textContent = "Hide";
    }
  });
})();

// tunneld dashboard: live counters and sparklines from server-sent events (/ui/events);
// the tables are fetched again (/ui/fragment/tables) when sessions, routes or refusals change.
"use strict";
(function () {
  var tables = document.getElementById("tables");
  if (!tables || !window.EventSource) { return; }
  var POINTS = 120;
  var series = { "spark-bytes": [], "spark-streams": [] };
  var seen = tables.getAttribute("data-seen");
  var pending = false;

  function human(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(1)) + " " + units[i];
  }
  function set(id, text, value) {
    var el = document.getElementById(id);
    if (!el) { return; }
    el.textContent = text;
    if (value !== undefined) { el.setAttribute("data-value", String(value)); }
  }
  function draw(id, v, label) {
    var pts = series[id];
    pts.push(v);
    if (pts.length > POINTS) { pts.shift(); }
    var max = Math.max.apply(null, pts.concat([1]));
    var line = document.querySelector("#" + id + " polyline");
    if (line) {
      line.setAttribute("points", pts.map(function (p, i) {
        var x = (POINTS - pts.length + i) * (120 / (POINTS - 1));
        return x.toFixed(1) + "," + (29 - (p / max) * 28).toFixed(1);
      }).join(" "));
    }
    set(id + "-now", label);
  }
  function swap() {
    if (tables.contains(document.activeElement)) { pending = true; return; }
    pending = false;
    fetch("/ui/fragment/tables", { credentials: "same-origin", redirect: "manual" })
      .then(function (r) {
        if (r.type === "opaqueredirect" || r.status === 401) { window.location.assign("/ui/login"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null && html !== undefined) { tables.innerHTML = html; } })
      .catch(function () { pending = true; });
  }
  tables.addEventListener("focusout", function (e) {
    if (pending && !tables.contains(e.relatedTarget)) { swap(); }
  });

  var es = new EventSource("/ui/events");
  es.addEventListener("totals", function (e) {
    var t;
    try { t = JSON.parse(e.data); } catch (err) { return; }
    set("live-state", "live");
    set("clients-total", String(t.clients), t.clients);
    set("sessions-total", String(t.sessions), t.sessions);
    set("tunnels-total", String(t.tunnels), t.tunnels);
    set("streams-active", String(t.streams_active), t.streams_active);
    set("streams-total", String(t.streams_total), t.streams_total);
    set("bytes-total", human(t.bytes_in + t.bytes_out), t.bytes_in + t.bytes_out);
    draw("spark-bytes", t.bytes_in_per_s + t.bytes_out_per_s, human(t.bytes_in_per_s + t.bytes_out_per_s) + "/s");
    draw("spark-streams", t.streams_per_s, t.streams_per_s.toFixed(1) + "/s");
    var now = t.generation + ":" + t.refusals;
    if (seen !== null && seen !== now) { swap(); }
    seen = now;
  });
  es.addEventListener("error", function () {
    set("live-state", "reconnecting…");
    if (es.readyState === EventSource.CLOSED) { swap(); }
  });
})();

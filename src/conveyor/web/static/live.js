// Conveyor dashboard: live updates. Pages work without this file; with it, the server's
// "changed" events (Server-Sent Events) make the page re-fetch its own <main> fragment.
// One fetch at a time: a change arriving during a fetch schedules exactly one more.
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-live");
  var main = document.getElementById("main");
  var status = document.getElementById("live-status");
  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });
  if (!url || !main || !window.EventSource) return;
  var busy = false, again = false;
  function busyField() {
    var el = document.activeElement;
    return el && main.contains(el) && (el.tagName === "INPUT" || el.tagName === "SELECT");
  }
  function refresh() {
    if (busy) { again = true; return; }
    if (busyField()) return;
    busy = true;
    fetch(window.location.href, { headers: { "X-Conveyor-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        main.innerHTML = html;
        main.setAttribute("data-updated", String(Date.now()));
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }
  var source = new EventSource(url);
  source.addEventListener("open", function () { if (status) status.className = "live on"; });
  source.addEventListener("error", function () { if (status) status.className = "live"; });
  source.addEventListener("changed", refresh);
})();

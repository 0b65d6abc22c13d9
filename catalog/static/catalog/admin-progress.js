/* Live progress bars of the admin (training, image processing): no library, no CDN.
 *
 * The server renders every panel in its current state, so without JavaScript a page is complete
 * (only static). This script polls the staff-only JSON of recommender/views.py and redraws; the
 * wording comes from the server (``display``), so the two never disagree.
 * Markup: <section class="lk-progress" data-kind="training|ingestion|import" data-url="..."> with
 * [data-field] children and a .lk-bar[role=progressbar] whose first child is the filled part.
 */
(function () {
  "use strict";

  var FAST = 1500, SLOW = 6000;

  function setField(panel, name, text) {
    panel.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) {
      if (text === undefined || text === null) text = "";
      if (el.textContent !== String(text)) el.textContent = text;
    });
  }

  function setBar(panel, percent, state) {
    var bar = panel.querySelector(".lk-bar");
    if (!bar) return;
    var known = percent !== null && percent !== undefined;
    var value = known ? Math.max(0, Math.min(100, percent)) : 0;
    bar.setAttribute("aria-valuenow", String(value));
    bar.setAttribute("data-state", state || "");
    bar.firstElementChild.style.width = value + "%";
    setField(panel, "percent", known ? Math.round(value) + "%" : "");
  }

  function render(panel, data) {
    var display = data.display;
    ["title", "phase", "detail", "summary"].forEach(function (name) { setField(panel, name, display[name]); });
    setBar(panel, display.percent, display.state);
    panel.setAttribute("data-state", display.state || "");
    if (panel.dataset.kind === "ingestion") {
      ["pending", "processing", "ready", "failed"].forEach(function (name) {
        setField(panel, name, Number(data[name]).toLocaleString("en-US"));
      });
      panel.classList.toggle("has-failed", data.failed > 0);
      return data.backlog ? FAST : SLOW;
    }
    if (panel.dataset.kind === "import") {
      // An import's rows finished while the page was open: reload once for its counts and report.
      var before = panel.dataset.importState;  // as the page was rendered, then as last polled
      panel.dataset.importState = data.state;
      if (before === "importing" && data.state !== "importing" && panel.hasAttribute("data-reload-on-finish")) {
        window.setTimeout(function () { window.location.reload(); }, 1000);
        return null;
      }
      return display.state === "running" ? FAST : null;
    }
    var was = panel.dataset.runningId || "", now = data.training ? String(data.training.id) : "";
    panel.dataset.runningId = now;
    // A training that finished while the page was open: reload once, so that the list and the
    // metrics show the new version (pages opt in with data-reload-on-finish).
    if (was && !now && panel.hasAttribute("data-reload-on-finish")) {
      setField(panel, "detail", "Finished. Reloading…");
      window.setTimeout(function () { window.location.reload(); }, 1000);
      return null;
    }
    return now ? FAST : SLOW;
  }

  function poll(panel) {
    function tick() {
      if (document.hidden) { window.setTimeout(tick, SLOW); return; }
      fetch(panel.dataset.url, { credentials: "same-origin", cache: "no-store",
                                 headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (response.status === 403) throw new Error("signed out");
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          panel.classList.remove("is-stale");
          var next = render(panel, data);
          if (next) window.setTimeout(tick, next);
        })
        .catch(function (error) {
          panel.classList.add("is-stale");
          // Signed out: stop. Anything else (a server restart): keep trying, slowly.
          if (error.message !== "signed out") window.setTimeout(tick, SLOW);
        });
    }
    tick();
  }

  function start() {
    if (!window.fetch) return;
    document.querySelectorAll(".lk-progress[data-url]").forEach(poll);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

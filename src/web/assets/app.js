// scuttlefs status page: keeps ages current and swaps in what the server
// sends live. The page is complete without it. Everything the server
// sends is already escaped HTML it rendered; nothing here builds markup
// from data.
"use strict";
(function () {
  var serverNow = Number(document.body.dataset.now) || Date.now();
  var skew = serverNow - Date.now();

  function ago(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return "just now";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }
  function refreshTimes() {
    var now = Date.now() + skew;
    var times = document.querySelectorAll("time[data-ms]");
    for (var i = 0; i < times.length; i++) {
      var text = ago(now - Number(times[i].dataset.ms));
      if (times[i].textContent !== text) times[i].textContent = text;
    }
  }
  setInterval(refreshTimes, 1000);

  var connection = document.getElementById("connection");
  function say(text) {
    if (!connection) return;
    connection.textContent = text;
    connection.hidden = !text;
  }

  var live = document.getElementById("live");
  if (live && live.dataset.events && window.EventSource) {
    var jobs = new EventSource(live.dataset.events);
    jobs.addEventListener("jobs", function (e) {
      live.innerHTML = e.data;
      var summary = document.getElementById("summary");
      if (summary) document.title = summary.textContent.replace(/^\S+\s/, "") + " — scuttlefs";
      refreshTimes();
      say("");
    });
    jobs.onerror = function () { say("Lost the daemon; reconnecting…"); };
  }

  var lines = document.getElementById("lines");
  if (lines && lines.dataset.events && window.EventSource) {
    var follow = new EventSource(lines.dataset.events + "?from=" + encodeURIComponent(lines.dataset.from));
    follow.addEventListener("lines", function (e) {
      var atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 4;
      lines.insertAdjacentHTML("beforeend", e.data);
      while (lines.children.length > 2000) lines.removeChild(lines.firstElementChild);
      if (atBottom) window.scrollTo(0, document.body.scrollHeight);
    });
  }
})();

"use strict";
(function () {
  // Ask before a revoke; without JavaScript the server asks with a page instead.
  document.querySelectorAll("form.revoke").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (window.confirm(form.getAttribute("data-confirm") || "Revoke this session?")) {
        form.elements.namedItem("confirm").value = "1";
      } else {
        event.preventDefault();
      }
    });
  });
  // Keep "4 HOURS AGO" current on a page left open (the same rules as timefmt.py).
  var units = [[31536000, "YEAR"], [2592000, "MONTH"], [604800, "WEEK"], [86400, "DAY"],
               [3600, "HOUR"], [60, "MINUTE"]];
  function relative(iso) {
    var delta = Math.floor((Date.now() - Date.parse(iso)) / 1000);
    var ahead = delta < 0, seconds = Math.abs(delta);
    for (var i = 0; i < units.length; i++) {
      if (seconds >= units[i][0]) {
        var n = Math.floor(seconds / units[i][0]);
        var text = n + " " + units[i][1] + (n === 1 ? "" : "S");
        return ahead ? "IN " + text : text + " AGO";
      }
    }
    return "JUST NOW";
  }
  function refresh() {
    document.querySelectorAll("time.rel").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      if (iso && !isNaN(Date.parse(iso))) { el.textContent = relative(iso); }
    });
  }
  window.setInterval(refresh, 30000);
})();

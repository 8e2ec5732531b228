// Cordon security page: the only script. It shows timestamps in the
// viewer's local time (the server renders UTC) and nothing else; the page
// works without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var d = new Date(el.getAttribute("datetime"));
    if (!isNaN(d)) {
      el.title = el.textContent;
      el.textContent = d.toLocaleString();
    }
  });
});

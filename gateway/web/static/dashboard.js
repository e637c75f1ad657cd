// Swaps in server-rendered fragments every few seconds, so status changes show without a reload.
"use strict";
(function () {
  const PERIOD_MS = 3000;
  function poll(element) {
    const url = element.dataset.poll;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then((response) => {
        if (response.redirected || response.status === 401) {
          window.location.href = "/login";
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then((html) => { if (html !== null) { element.innerHTML = html; } })
      .catch(() => { /* the next poll tries again */ });
  }
  document.querySelectorAll("[data-poll]").forEach((element) => {
    window.setInterval(() => poll(element), PERIOD_MS);
  });
})();

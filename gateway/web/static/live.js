// The live chart: check-ins per hour per site, polled from /api/live and drawn by Chart.js.
"use strict";
(function () {
  const PERIOD_MS = 5000;
  const canvas = document.getElementById("live-chart");
  const colors = ["#0b4f6c", "#e07a1f", "#1e9e4a", "#b00020", "#6a4c93", "#2a9d8f", "#8d6e63"];
  const chart = new Chart(canvas, {
    type: "bar",
    data: { labels: [], datasets: [] },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
    },
  });
  window.qrgateLiveChart = chart;
  function refresh() {
    fetch(canvas.dataset.source, { credentials: "same-origin" })
      .then((response) => (response.ok ? response.json() : null))
      .then((data) => {
        if (data === null) { return; }
        chart.data.labels = data.hours.map((h) => h.slice(5));
        chart.data.datasets = data.sites.map((s, i) => ({
          label: s.name, data: s.counts, backgroundColor: colors[i % colors.length],
        }));
        chart.update();
        document.getElementById("live-total").textContent = String(data.total);
        document.getElementById("live-updated").textContent = new Date().toLocaleTimeString();
      })
      .catch(() => { /* the next poll tries again */ });
  }
  refresh();
  window.setInterval(refresh, PERIOD_MS);
})();

// Operations: every 5 seconds, a new snapshot of the metrics; the difference from the last
// one gives per-minute rates and the p99 latency of the interval.
"use strict";
(() => {
  const root = document.getElementById("ops");
  const status = document.getElementById("ops-status");
  const COUNTERS = ["accepted", "rejected", "unavailable", "rate_limited"];
  let last = null;

  const set = (id, text) => { const node = document.getElementById(id); if (node) node.textContent = text; };

  function p99(buckets, previous) {
    // Bucket counts are cumulative; over the interval, each is this snapshot's less the last's.
    const counts = buckets.map(([le, count], i) => [le, count - (previous ? previous[i][1] : 0)]);
    if (!counts.length) return null;
    const total = counts[counts.length - 1][1];
    if (total <= 0) return null;
    const finite = counts.filter(([le]) => le !== "+Inf");
    for (const [le, count] of counts) {
      if (count >= 0.99 * total) return le === "+Inf" ? (finite.length ? finite[finite.length - 1][0] : null) : le;
    }
    return null;
  }

  async function refresh() {
    try {
      const response = await fetch(root.dataset.feed, { credentials: "same-origin" });
      if (response.status === 401) { window.location.assign("/console/sign-in?expired=1"); return; }
      const snap = await response.json();
      for (const id of ["queue_events", "forward_queue"]) set(id, String(snap[id]));
      set("geoip_build", snap.geoip_build || "—");
      if (last && last.latency_buckets.length === snap.latency_buckets.length) {
        const minutes = Math.max((snap.taken_at - last.taken_at) / 60, 1 / 60);
        for (const id of COUNTERS) {
          set(id, (Math.max(snap[id] - last[id], 0) / minutes).toFixed(1));
          set(id + "-unit", "per minute");
        }
        const q = p99(snap.latency_buckets, last.latency_buckets);
        set("p99", q === null ? "no requests" : "≤ " + (q * 1000).toFixed(1) + " ms");
        set("p99-unit", "over the last " + Math.round(minutes * 60) + " s");
      }
      last = snap;
      status.textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (error) {
      status.textContent = "Could not refresh.";
    }
  }

  refresh();
  setInterval(refresh, 5000);
})();

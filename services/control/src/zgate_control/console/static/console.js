// zgate console: progressive enhancement only. Every page works without this script; with it,
// the overview and lists refresh themselves and destructive forms ask for confirmation.
"use strict";
(function () {
  const zgate = (window.zgate = {});

  // Forms marked data-confirm="text" ask first.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    const question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // zgate.poll(url, ms, fn): fetch JSON every `ms` and hand it to fn (stops on sign-out).
  zgate.poll = function (url, ms, fn) {
    async function tick() {
      try {
        const response = await fetch(url, { headers: { Accept: "application/json" } });
        if (response.redirected || response.status === 401) return; // signed out
        if (response.ok) fn(await response.json());
      } catch (_) { /* the next tick tries again */ }
      setTimeout(tick, ms);
    }
    setTimeout(tick, ms);
  };

  // zgate.refresh(selector, ms): re-fetch this page and swap in the element `selector`.
  zgate.refresh = function (selector, ms) {
    async function tick() {
      try {
        const response = await fetch(window.location.href, { headers: { Accept: "text/html" } });
        if (response.ok && !response.redirected) {
          const html = new DOMParser().parseFromString(await response.text(), "text/html");
          const fresh = html.querySelector(selector);
          const current = document.querySelector(selector);
          // Not while the user is in it, nor over a value typed and not yet submitted.
          if (fresh && current && !current.contains(document.activeElement) && !edited(current)) current.replaceWith(fresh);
        }
      } catch (_) { /* next time */ }
      setTimeout(tick, ms);
    }
    setTimeout(tick, ms);
  };

  function edited(element) {
    for (const field of element.querySelectorAll("input, textarea")) {
      if (field.type !== "hidden" && field.value !== field.defaultValue) return true;
    }
    return false;
  }

  function get(data, path) {
    return path.split(".").reduce((v, k) => (v == null ? v : v[k]), data);
  }

  function human(bytesPerSecond) {
    const bits = bytesPerSecond * 8;
    const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
    let value = bits, unit = 0;
    while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit++; }
    return value.toFixed(value < 10 ? 1 : 0) + " " + units[unit];
  }

  function drawChart(svg, points) {
    const width = 600, height = 160, pad = 4;
    const peak = Math.max(1, ...points.map((p) => Math.max(p.in, p.out)));
    const x = (i) => pad + (i * (width - 2 * pad)) / Math.max(1, points.length - 1);
    const y = (v) => height - pad - (v / peak) * (height - 2 * pad);
    const line = (key) => points.map((p, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(p[key]).toFixed(1)).join(" ");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    for (const key of ["in", "out"]) {
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      path.setAttribute("class", key);
      path.setAttribute("d", line(key));
      svg.appendChild(path);
    }
    return peak;
  }

  function showOverview(root, data) {
    for (const el of root.querySelectorAll("[data-field]")) {
      const value = get(data, el.getAttribute("data-field"));
      if (value !== undefined) el.textContent = value === null ? "none" : value;
    }
    const svg = document.getElementById("throughput");
    if (svg) {
      const peak = drawChart(svg, data.throughput);
      const label = root.querySelector(".peak");
      if (label) label.textContent = "peak " + human(peak);
    }
    const body = root.querySelector("#relays tbody");
    if (body) {
      body.textContent = "";
      for (const r of data.relays) {
        const row = body.insertRow();
        row.dataset.relay = r.id;
        const health = r.healthy ? ["ok", "healthy"] : ["bad", "stale" + (r.last_heartbeat_s != null ? " (" + r.last_heartbeat_s + " s)" : "")];
        const cells = [[r.id, "id"], [health[1], health[0]], [r.applied_seq], [r.behind], [r.policy_version || "", "mono"], [r.sessions]];
        for (const [text, cls] of cells) {
          const cell = row.insertCell();
          cell.textContent = text;
          if (cls) cell.className = cls;
        }
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("overview");
    if (root) {
      const initial = document.getElementById("overview-data");
      if (initial) showOverview(root, JSON.parse(initial.textContent));
      zgate.poll(root.getAttribute("data-live"), 3000, (data) => showOverview(root, data));
    }
    for (const el of document.querySelectorAll("[data-refresh]")) {
      zgate.refresh("#" + el.id, Number(el.getAttribute("data-refresh")) || 3000);
    }
  });
})();

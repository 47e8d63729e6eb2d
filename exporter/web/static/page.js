// The live page: poll /api/v1/status every second and update the server-rendered rows in place.
// Plain JavaScript, no framework: the page is a table the server already renders; this file only
// refreshes numbers, filters rows and sends "pull now" in place. Without it the page still works.
"use strict";
(function () {
  const POLL_MS = 1000;
  const table = document.getElementById("pairs");
  if (!table) return;
  const admin = table.dataset.admin === "true";
  const rows = new Map();
  // Keys as JSON.stringify writes them, whatever spacing the server used.
  for (const row of table.tBodies[0].rows) rows.set(JSON.stringify(JSON.parse(row.dataset.key)), row);
  const form = document.querySelector("form.filters");

  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  function bytes(n) {
    let size = n, unit = 0;
    while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit++; }
    return unit === 0 ? size.toFixed(0) + " B" : size.toFixed(1) + " " + units[unit];
  }
  // The page's duration text, as exporter/web/page.py's `span` writes it: rounded once to the
  // unit shown (half up), then split; tests/e2e/test_page.py runs this function under node.
  function span(s) {
    s = Number.isFinite(s) ? Math.max(0, s) : 0;
    const whole = Math.floor(s + 0.5);
    if (whole < 60) return whole + "s";
    if (whole < 3600) return Math.floor(whole / 60) + "m " + String(whole % 60).padStart(2, "0") + "s";
    const minutes = Math.floor(s / 60 + 0.5);
    if (minutes < 1440) return Math.floor(minutes / 60) + "h " + String(minutes % 60).padStart(2, "0") + "m";
    const tenths = Math.floor(s / 8640 + 0.5);
    return Math.floor(tenths / 10) + "." + (tenths % 10) + "d";
  }
  function relative(at) {
    if (at === null || at === undefined) return "\u2013";
    const now = Date.now() / 1000;
    return at > now ? "in " + span(at - now) : span(now - at) + " ago";
  }
  function stateOf(p) {
    if (p.in_progress) return "pulling";
    if (!p.last) return "pending";
    return p.last.result === "success" ? "ok" : "failing";
  }
  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }
  function cell(row, name) { return row.querySelector("td.c-" + name); }

  function resultNode(last) {
    const frag = document.createDocumentFragment();
    if (!last) { frag.append("never run"); return frag; }
    const span_ = document.createElement("span");
    if (last.result === "success") { span_.className = "ok"; span_.textContent = "success"; }
    else { span_.className = "fail"; span_.textContent = "failed: " + last.reason; }
    let head = span_;
    if (last.id !== null) {
      head = document.createElement("a");
      head.href = "/runs/" + last.id;
      head.append(span_);
    }
    frag.append(head, " " + relative(last.ended_at));
    return frag;
  }

  function update(row, p) {
    const state = stateOf(p);
    if (row.dataset.state !== state) {
      row.dataset.state = state;
      row.className = "pair state-" + state + (p.stalled ? " stalled" : "");
    }
    const phase = cell(row, "phase");
    const phaseText = p.phase;
    if (phase.textContent !== phaseText || phase.dataset.running !== String(p.in_progress)) {
      phase.dataset.running = String(p.in_progress);
      phase.replaceChildren();
      if (p.in_progress) {
        const s = document.createElement("span"); s.className = "run"; s.textContent = phaseText;
        phase.append(s);
      } else phase.append(phaseText);
    }
    const progress = cell(row, "progress");
    const bar = progress.querySelector("progress");
    const share = p.expected_bytes ? Math.min(100, 100 * p.completed_bytes / p.expected_bytes) : 0;
    const value = share.toFixed(1);
    if (bar.getAttribute("value") !== value) { bar.value = share; bar.setAttribute("value", value); bar.textContent = share.toFixed(0) + "%"; }
    setText(progress.querySelector(".bytes"), bytes(p.completed_bytes) + " / " + bytes(p.expected_bytes));
    setText(progress.querySelector(".layers"), p.layers_completed + "/" + p.layers + " layers");
    // A server that does not answer: since when and why, under its name.
    const serverCell = cell(row, "server");
    const downText = p.server_up === false
      ? "down since " + relative(p.server_down_since) + ": " + (p.server_problem || "") : "";
    if (serverCell.dataset.down !== downText) {
      serverCell.dataset.down = downText;
      serverCell.replaceChildren(p.server);
      if (downText) {
        const note = document.createElement("span"); note.className = "server-down"; note.textContent = downText;
        serverCell.append(" ", note);
      }
    }
    // A stall shows as "no progress for N s" under a rate of 0 (the API says when: `stalled`).
    const throughput = cell(row, "throughput");
    const rateText = p.bytes_per_second === null ? "\u2013" : bytes(p.bytes_per_second) + "/s";
    const stallText = p.stalled ? "no progress for " + Math.round(p.no_progress_seconds) + " s" : "";
    if (throughput.dataset.key !== rateText + "|" + stallText) {
      throughput.dataset.key = rateText + "|" + stallText;
      throughput.replaceChildren(rateText);
      if (stallText) {
        const note = document.createElement("span"); note.className = "stall"; note.textContent = stallText;
        throughput.append(" ", note);
      }
    }
    if (row.classList.contains("stalled") !== p.stalled) row.classList.toggle("stalled", p.stalled);
    setText(cell(row, "eta"), p.eta_seconds === null ? "\u2013" : span(p.eta_seconds));
    const last = cell(row, "last-result");
    const lastKey = JSON.stringify(p.last) + "|" + relative(p.last ? p.last.ended_at : null);
    if (last.dataset.key !== lastKey) { last.dataset.key = lastKey; last.replaceChildren(resultNode(p.last)); }
    setText(cell(row, "next-run"), relative(p.next_run_at));
    const button = row.querySelector("button.pull-now");
    if (button) button.disabled = p.in_progress;
  }

  // A byte count as exporter/web/charts.py's `size_label` writes it (one decimal under 10).
  function sizeLabel(n) {
    let size = n;
    for (const unit of ["B", "KiB", "MiB", "GiB"]) {
      if (size < 1024) return unit !== "B" && size < 10 ? size.toFixed(1) + " " + unit : size.toFixed(0) + " " + unit;
      size /= 1024;
    }
    return size < 10 ? size.toFixed(1) + " TiB" : size.toFixed(0) + " TiB";
  }
  // A sparkline's points as charts.py's `sparkline` draws them: the newest sample at the right
  // edge, each of `slots` samples in its place, scaled to the line's own peak.
  function sparkPoints(values, slots, width, height) {
    values = values.slice(-slots);
    const peak = Math.max(0, ...values);
    const scale = peak > 0 ? (height - 3) / peak : 0;
    const step = width / Math.max(slots - 1, 1);
    const first = slots - values.length;
    return values.map((v, i) =>
      ((first + i) * step).toFixed(1).replace(/\.0$/, "") + "," + (height - 1.5 - v * scale).toFixed(1)).join(" ");
  }
  const SVG = "http://www.w3.org/2000/svg";
  function updateSpark(tr, name, values) {
    const svg = tr.querySelector("svg.spark");
    if (!svg || !Array.isArray(values)) return;
    const box = svg.viewBox.baseVal, slots = Number(svg.dataset.slots) || 60;
    values = values.slice(-slots);
    let line = svg.querySelector("polyline.spark-line");
    if (values.length > 1) {
      if (!line) { line = document.createElementNS(SVG, "polyline"); line.setAttribute("class", "spark-line"); svg.append(line); }
      line.setAttribute("points", sparkPoints(values, slots, box.width, box.height));
    } else if (line) line.remove();
    const peak = Math.max(0, ...values), now = values.length ? values[values.length - 1] : 0;
    const label = "Throughput of " + name + " over the last " + values.length + " s: now " +
      sizeLabel(now) + "/s, peak " + sizeLabel(peak) + "/s";
    svg.setAttribute("aria-label", label);
    setText(svg.querySelector("title"), label);
    setText(tr.querySelector(".spark-peak"), "peak " + sizeLabel(peak) + "/s");
  }

  // The servers table: up (with its version) or down since when and why, never a stale version.
  const serverRows = new Map();
  for (const tr of document.querySelectorAll("tr.server[data-server]")) serverRows.set(tr.dataset.server, tr);
  function updateServers(servers) {
    for (const s of servers) {
      const tr = serverRows.get(s.name);
      if (!tr) continue;
      updateSpark(tr, s.name, s.throughput);
      const key = JSON.stringify({ ...s, throughput: null }) + "|" + relative(s.down_since);
      if (tr.dataset.key === key) continue;
      tr.dataset.key = key;
      const state = tr.querySelector(".c-server-state"), detail = tr.querySelector(".c-server-detail");
      const mark = document.createElement("span");
      if (s.up === null) { state.replaceChildren("not asked yet"); detail.replaceChildren(); continue; }
      mark.className = s.up ? "ok" : "fail"; mark.textContent = s.up ? "up" : "down";
      if (s.up) {
        state.replaceChildren(mark);
        detail.replaceChildren(s.version ? "Ollama " + s.version : "");
      } else {
        state.replaceChildren(mark, " since " + relative(s.down_since));
        const why = document.createElement("span"); why.className = "fail"; why.textContent = s.problem || "";
        detail.replaceChildren(why);
      }
    }
  }

  function filters() {
    if (!form) return { server: "", model: "", state: "" };
    return { server: form.elements.server.value, model: form.elements.model.value.toLowerCase(), state: form.elements.state.value };
  }
  function applyFilters() {
    const f = filters();
    for (const row of rows.values()) {
      const [server, model] = JSON.parse(row.dataset.key);
      const show = (!f.server || server === f.server) &&
        (!f.model || model.toLowerCase().includes(f.model)) &&
        (!f.state || row.dataset.state === f.state);
      if (row.hidden === show) row.hidden = !show;
    }
  }
  function filtersToUrl() {
    const f = filters(), params = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) params.set(k, k === "model" ? form.elements.model.value : v);
    const query = params.toString();
    history.replaceState(null, "", query ? "/?" + query : "/");
  }
  if (form) {
    form.addEventListener("input", () => { applyFilters(); filtersToUrl(); });
    form.addEventListener("submit", (event) => { event.preventDefault(); applyFilters(); filtersToUrl(); });
  }

  function summarize(pairs) {
    const counts = { pulling: 0, failing: 0, ok: 0, pending: 0 };
    for (const p of pairs) counts[stateOf(p)]++;
    const down = new Set();
    const up = new Set();
    for (const p of pairs) {
      if (p.server_up === false) down.add(p.server); else if (p.server_up === true) up.add(p.server);
    }
    counts.servers_down = down.size;
    for (const [name, n] of Object.entries(counts)) {
      setText(document.querySelector('[data-count="' + name + '"]'), String(n));
    }
  }

  async function pullNow(row, button) {
    const [server, model] = JSON.parse(row.dataset.key);
    const note = row.querySelector(".note");
    button.disabled = true;
    note.replaceChildren("starting\u2026");
    try {
      const answer = await fetch("/api/v1/pulls", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ server: server, model: model }), credentials: "same-origin",
      });
      const body = await answer.json();
      if (answer.status === 202) {
        const link = document.createElement("a");
        link.href = "/runs/" + body.id; link.textContent = "run #" + body.id;
        note.replaceChildren("started ", link);
      } else note.replaceChildren(body.error || "failed (" + answer.status + ")");
    } catch (err) {
      note.replaceChildren("failed: " + err);
    }
    poll();
  }
  if (admin) {
    // The server renders "pull now" as a form that posts without JavaScript; here it is sent
    // by fetch instead, and the answer is shown in the row.
    for (const row of rows.values()) {
      const pullForm = row.querySelector("form.pull-now-form");
      const button = row.querySelector("button.pull-now");
      if (pullForm && button) {
        pullForm.addEventListener("submit", (event) => { event.preventDefault(); pullNow(row, button); });
      }
    }
  }

  let timer = null, busy = false;
  async function poll() {
    if (busy) return;
    busy = true;
    try {
      const answer = await fetch("/api/v1/status", { cache: "no-store", credentials: "same-origin" });
      if (answer.ok) {
        const body = await answer.json();
        const seen = new Set();
        for (const p of body.pairs) {
          const key = JSON.stringify([p.server, p.model]);
          seen.add(key);
          const row = rows.get(key);
          if (!row) { location.reload(); return; }  // the config gained a pair
          update(row, p);
        }
        if (seen.size !== rows.size) { location.reload(); return; }  // ... or lost one
        summarize(body.pairs);
        if (body.servers) updateServers(body.servers);
        applyFilters();
        document.body.dataset.updated = String(Date.now());
      }
    } catch (err) {
      // The exporter restarts or the network blips: keep the last numbers, try again.
    } finally {
      busy = false;
      clearTimeout(timer);
      timer = setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();

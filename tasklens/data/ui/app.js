// tasklens live page: polls api/live once a second while visible; no framework, no CDN.
// Everything from the server is put in the page as text (textContent), never as HTML.
"use strict";
(() => {
  const base = document.querySelector('meta[name="tasklens-base"]').content;
  const SVG = "http://www.w3.org/2000/svg";
  const KEEP = 1000; // the server keeps as many
  const SHOWN = 200; // rows drawn at once
  const NAMES_EVERY = 3000; // ms: the per-name summary is asked for at most this often
  const TRACE_EVERY = 1000; // ms: an open trace view refreshes while its tasks may still run
  const state = { seq: 0, tasks: [], names: new Set(), traceUrl: null, selected: null, live: null,
    epoch: null, namesToken: "", namesAt: 0, trace: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) node.append(child);
    return node;
  }

  function sv(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function seconds(s) {
    if (s === null || s === undefined) return "—";
    if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
    if (s < 1) return `${(s * 1e3).toFixed(1)} ms`;
    return `${s.toFixed(2)} s`;
  }

  function clock(ns) {
    const d = new Date(ns / 1e6);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function traceLink(traceId) {
    if (!state.traceUrl || !traceId) return null;
    return el("a", { href: state.traceUrl.split("{trace_id}").join(traceId), target: "_blank",
      rel: "noopener noreferrer", text: "open in Tempo ↗", class: "external" });
  }

  async function getJSON(path) {
    const response = await fetch(base + path, { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) {
      const error = new Error(`${path}: ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  // --- polling ----------------------------------------------------------------------------
  let timer = null;
  function schedule(ms = 1000) {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }

  async function poll() {
    if (document.hidden) return schedule();
    try {
      // The summary only when it changed since our copy, and not more often than NAMES_EVERY.
      const names = Date.now() - state.namesAt < NAMES_EVERY ? "keep" : state.namesToken;
      const live = await getJSON(`/api/live?after=${state.seq}&names=${encodeURIComponent(names)}`);
      if ((state.epoch !== null && live.epoch !== state.epoch) || live.seq < state.seq) {
        // Another process (the app restarted): its tasks start again at 1, ask for all of them.
        state.epoch = live.epoch;
        state.seq = 0;
        state.tasks = [];
        state.namesToken = "";
        state.namesAt = 0;
        return schedule(0);
      }
      state.epoch = live.epoch;
      state.live = live;
      state.traceUrl = live.trace_url;
      if (live.names) {
        state.namesToken = live.names_token;
        state.namesAt = Date.now();
      }
      if (live.tasks.length) {
        state.tasks.push(...live.tasks);
        if (state.tasks.length > KEEP) state.tasks.splice(0, state.tasks.length - KEEP);
        for (const t of live.tasks) state.names.add(t.name);
      }
      const grew = live.seq !== state.seq;
      state.seq = live.seq;
      $("status").textContent = `live · ${new Date().toLocaleTimeString([], { hour12: false })}`;
      $("note").hidden = live.traced || !live.seq;
      $("status").className = "muted";
      renderPlots(live);
      if (live.names) renderSummary(live);
      if (grew || !$("tasks").tBodies[0].rows.length) renderTasks();
    } catch (error) {
      $("status").textContent = error.status === 401 || error.status === 403
        ? `not allowed (${error.status})` : `disconnected (${error.message})`;
      $("status").className = "bad";
    }
    schedule();
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });

  // --- plots ------------------------------------------------------------------------------
  function line(svg, values, max, cls) {
    const w = 360, h = 80, n = values.length;
    const missing = (v) => v === null || v === undefined;
    let d = "";
    values.forEach((v, i) => {
      if (missing(v)) return;
      const x = n > 1 ? (i / (n - 1)) * w : 0;
      const y = h - 2 - (max > 0 ? (v / max) * (h - 6) : 0);
      const pen = i > 0 && !missing(values[i - 1]);
      // A point with no neighbour is drawn as a short tick, so a lone second shows.
      d += pen ? `L${x.toFixed(1)},${y.toFixed(1)}` : `M${(x - 2).toFixed(1)},${y.toFixed(1)}h2`;
    });
    if (d) svg.append(sv("path", { d, class: `series ${cls}`, fill: "none" }));
  }

  function renderPlots(live) {
    const rate = $("plot-rate"), queue = $("plot-queue");
    rate.replaceChildren(sv("line", { x1: 0, y1: 78, x2: 360, y2: 78, class: "axis" }));
    queue.replaceChildren(sv("line", { x1: 0, y1: 78, x2: 360, y2: 78, class: "axis" }));
    const outcomes = live.series.outcomes;
    const max = Math.max(1, ...Object.values(outcomes).flat());
    const legend = $("rate-legend");
    legend.replaceChildren();
    for (const [outcome, values] of Object.entries(outcomes)) {
      line(rate, values, max, `o-${outcome}`);
      legend.append(el("span", { class: `key o-${outcome}`, text: outcome }));
    }
    $("rate-max").textContent = `(max ${max}/s, ${live.series.queue_p95.length} s)`;
    const q = live.series.queue_p95;
    const qmax = Math.max(0, ...q.filter((v) => v !== null));
    line(queue, q, qmax, "queue-line");
    $("queue-max").textContent = `(max ${seconds(qmax || null)})`;
    const totals = Object.entries(live.totals).filter(([, n]) => n).map(([o, n]) => `${o} ${n}`);
    $("totals").textContent = `since start: ${totals.join(" · ") || "no task yet"}`;
  }

  // --- tasks view -------------------------------------------------------------------------
  function renderSummary(live) {
    $("window").textContent = live.window_minutes;
    $("names-shown").textContent = live.names_total > live.names.length
      ? `(the ${live.names.length} of ${live.names_total} task names with the most tasks)` : "";
    const body = $("summary").tBodies[0];
    body.replaceChildren(...live.names.map((s) => {
      const name = el("a", { href: "#/", text: s.name, title: s.name });
      name.addEventListener("click", (e) => { e.preventDefault(); setFilter(s.name); });
      return el("tr", { "data-name": s.name },
        el("td", { class: "name" }, name),
        el("td", { class: "num", text: s.count }),
        el("td", { class: s.failures ? "num bad" : "num", text: s.failures }),
        el("td", { class: "num", text: `${(s.failure_ratio * 100).toFixed(1)} %` }),
        el("td", { class: "num", text: seconds(s.queue_p50) }),
        el("td", { class: "num", text: seconds(s.queue_p95) }),
        el("td", { class: "num", text: seconds(s.duration_p50) }),
        el("td", { class: "num", text: seconds(s.duration_p95) }));
    }));
    const select = $("filter-name");
    for (const s of live.names) state.names.add(s.name);
    const have = new Set([...select.options].map((o) => o.value));
    for (const name of [...state.names].sort()) {
      if (!have.has(name)) select.append(el("option", { value: name, text: name, title: name }));
    }
  }

  function setFilter(name) {
    $("filter-name").value = name;
    renderTasks();
  }

  function renderTasks() {
    const name = $("filter-name").value, outcome = $("filter-outcome").value;
    const rows = [];
    for (let i = state.tasks.length - 1; i >= 0 && rows.length < SHOWN; i--) {
      const t = state.tasks[i];
      if ((name && t.name !== name) || (outcome && t.outcome !== outcome)) continue;
      rows.push(taskRow(t));
    }
    $("tasks").tBodies[0].replaceChildren(...rows);
    $("shown").textContent = `${rows.length} shown of the last ${state.tasks.length} tasks`;
  }

  function taskRow(t) {
    const traceCell = el("td", { class: "mono" });
    if (t.request) {
      const a = el("a", { href: `#/trace/${t.request}`, text: (t.trace_id || "").slice(0, 12), title: t.trace_id });
      a.addEventListener("click", (e) => e.stopPropagation());
      traceCell.append(a);
    } else if (t.trace_id) traceCell.textContent = t.trace_id.slice(0, 12);
    const outcome = el("td", { class: `outcome o-${t.outcome}`, text: t.outcome });
    if (t.error_type) outcome.append(el("span", { class: "error-type", text: ` ${t.error_type}` }));
    const row = el("tr", { "data-seq": t.seq, "data-name": t.name, "data-outcome": t.outcome,
      "data-trace": t.trace_id,
      class: state.selected === t.seq ? "selected" : "" },
      el("td", { class: "mono", text: clock(t.finished_ns) }),
      el("td", { class: "name", text: t.name, title: t.name }),
      el("td", { text: t.executor }),
      outcome,
      el("td", { class: "num", text: seconds(t.queue_seconds) }),
      el("td", { class: "num", text: seconds(t.threadpool_wait_seconds) }),
      el("td", { class: "num", text: seconds(t.duration_seconds) }),
      traceCell);
    row.addEventListener("click", () => showDetail(t.seq));
    return row;
  }

  function failureBlock(t) {
    const block = el("div", { class: "failure" },
      el("p", { class: "message" }, el("strong", { class: "bad error-type", text: t.error_type || t.outcome }),
        el("span", { class: "text", text: t.error_message ? `: ${t.error_message}` : "" })));
    if (t.traceback) block.append(el("pre", { class: "traceback", text: t.traceback }));
    else if (t.error_type) block.append(el("p", { class: "muted", text: "traceback no longer kept (only the last failures keep theirs)" }));
    return block;
  }

  async function showDetail(seq) {
    state.selected = seq;
    renderTasks();
    const aside = $("detail");
    aside.hidden = false;
    aside.replaceChildren(el("p", { class: "muted", text: "loading…" }));
    let t;
    try {
      t = await getJSON(`/api/task/${seq}`);
    } catch (error) {
      aside.replaceChildren(el("p", { class: "muted", text: `task no longer kept (${error.message})` }));
      return;
    }
    const close = el("button", { type: "button", text: "×", title: "close", class: "close" });
    close.addEventListener("click", () => { aside.hidden = true; state.selected = null; renderTasks(); });
    const facts = el("dl", {},
      el("dt", { text: "outcome" }), el("dd", { class: `o-${t.outcome}`, text: t.outcome }),
      el("dt", { text: "executor" }), el("dd", { text: t.executor }),
      el("dt", { text: "queue" }), el("dd", { text: seconds(t.queue_seconds) }),
      el("dt", { text: "pool wait" }), el("dd", { text: seconds(t.threadpool_wait_seconds) }),
      el("dt", { text: "duration" }), el("dd", { text: seconds(t.duration_seconds) }),
      el("dt", { text: "position" }), el("dd", { text: `${t.index + 1} of ${t.batch_size}` }),
      el("dt", { text: "trace" }), el("dd", { class: "mono", text: t.trace_id || "—" }));
    if (t.loop_blocked) facts.append(el("dt", { text: "event" }), el("dd", { class: "warn", text: `loop blocked ${seconds(t.loop_blocking_seconds)}` }));
    aside.replaceChildren(close, el("h3", { class: "name", text: t.name }), facts);
    if (t.args) aside.append(el("pre", { class: "args", text: JSON.stringify(t.args, null, 1) }));
    if (t.outcome !== "success") aside.append(failureBlock(t));
    const links = el("p", {});
    if (t.request) links.append(el("a", { href: `#/trace/${t.request}`, text: "request trace →" }), " ");
    const external = traceLink(t.trace_id);
    if (external) links.append(external);
    aside.append(links);
  }

  // --- trace view -------------------------------------------------------------------------
  async function showTrace(key) {
    $("nav-trace-label").textContent = "· trace";
    clearTimeout(state.trace);
    const title = $("trace-title"), meta = $("trace-meta");
    let r;
    try {
      r = await getJSON(`/api/trace/${key}`);
    } catch (error) {
      title.textContent = "request no longer kept";
      meta.textContent = `(only the last requests are kept; ${error.message})`;
      $("waterfall").replaceChildren();
      $("trace-tasks").tBodies[0].replaceChildren();
      $("trace-errors").replaceChildren();
      return;
    }
    state.traceUrl = r.trace_url;
    title.textContent = r.name || "request";
    // Refresh while the request is open or a task is missing its run (still queued/running).
    const expected = Math.max(0, ...r.tasks.map((t) => t.batch_size));
    const open = r.end_ns === null || r.tasks.length + r.tasks_not_kept < expected;
    if (open && location.hash === `#/trace/${key}`) {
      state.trace = setTimeout(() => { if (location.hash === `#/trace/${key}`) showTrace(key); }, TRACE_EVERY);
    }
    const facts = [`trace ${r.trace_id}`, `span ${r.span_id}`];
    if (r.duration_seconds !== null) facts.push(`request ${seconds(r.duration_seconds)}`);
    facts.push(`${r.tasks.length} task${r.tasks.length === 1 ? "" : "s"}`);
    if (r.tasks_not_kept) facts.push(`${r.tasks_not_kept} more not kept`);
    meta.replaceChildren(document.createTextNode(facts.join(" · ") + " "));
    const external = traceLink(r.trace_id);
    if (external) meta.append(external);
    drawWaterfall(r);
    const t0 = origin(r);
    $("trace-tasks").tBodies[0].replaceChildren(...r.tasks.map((t, i) => {
      const events = t.loop_blocked ? `loop blocked ${seconds(t.loop_blocking_seconds)}` : "";
      return el("tr", { "data-name": t.name, "data-outcome": t.outcome, "data-span": t.span_id },
        el("td", { class: "num", text: i + 1 }),
        el("td", { class: "name", text: t.name }),
        el("td", { text: t.executor }),
        el("td", { class: `outcome o-${t.outcome}`, text: t.error_type ? `${t.outcome} ${t.error_type}` : t.outcome }),
        el("td", { class: "num", text: `+${seconds((t.enqueued_ns - t0) / 1e9)}` }),
        el("td", { class: "num", text: seconds(t.queue_seconds) }),
        el("td", { class: "num", text: seconds(t.threadpool_wait_seconds) }),
        el("td", { class: "num", text: seconds(t.duration_seconds) }),
        el("td", { class: t.loop_blocked ? "warn" : "", text: events }));
    }));
    $("trace-errors").replaceChildren(...r.tasks.filter((t) => t.error_type).map((t) =>
      el("div", {}, el("h3", { class: "name", text: t.name }), failureBlock(t))));
  }

  function origin(r) {
    const starts = r.tasks.map((t) => t.enqueued_ns);
    if (r.start_ns) starts.push(r.start_ns);
    return Math.min(...starts);
  }

  function drawWaterfall(r) {
    const svg = $("waterfall");
    const label = 260, width = 960, row = 22, top = 18;
    const t0 = origin(r);
    const ends = r.tasks.map((t) => t.finished_ns);
    if (r.end_ns) ends.push(r.end_ns);
    const t1 = Math.max(t0 + 1e6, ...ends);
    const x = (ns) => label + ((ns - t0) / (t1 - t0)) * (width - label - 10);
    const rows = r.tasks.length + 1;
    svg.setAttribute("viewBox", `0 0 ${width} ${top + rows * row + 6}`);
    svg.setAttribute("height", String(top + rows * row + 6));
    svg.replaceChildren();
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const px = label + f * (width - label - 10);
      svg.append(sv("line", { x1: px, y1: top - 4, x2: px, y2: top + rows * row, class: "grid" }));
      svg.append(sv("text", { x: px, y: 11, class: "tick", "text-anchor": f === 1 ? "end" : "middle" },
        `+${seconds(((t1 - t0) * f) / 1e9)}`));
    }
    const y0 = top;
    svg.append(sv("text", { x: 4, y: y0 + 15, class: "label" }, r.name || "request"));
    const reqEnd = r.end_ns || t1;
    svg.append(sv("rect", { x: x(r.start_ns || t0), y: y0 + 4, width: Math.max(1, x(reqEnd) - x(r.start_ns || t0)),
      height: 14, class: r.end_ns ? "request" : "request open" }));
    r.tasks.forEach((t, i) => {
      const y = top + (i + 1) * row;
      const g = sv("g", { "data-name": t.name, class: "span-row" });
      g.append(sv("title", {}, `${t.name}: queue ${seconds(t.queue_seconds)}, run ${seconds(t.duration_seconds)}, ${t.outcome}`));
      g.append(sv("text", { x: 14, y: y + 15, class: "label" }, t.name.length > 38 ? `…${t.name.slice(-37)}` : t.name));
      if (t.started_ns) {
        g.append(sv("rect", { x: x(t.enqueued_ns), y: y + 7, width: Math.max(1, x(t.started_ns) - x(t.enqueued_ns)), height: 8, class: "queue" }));
        const end = t.started_ns + (t.duration_seconds || 0) * 1e9;
        g.append(sv("rect", { x: x(t.started_ns), y: y + 4, width: Math.max(2, x(end) - x(t.started_ns)), height: 14, class: `run o-${t.outcome}` }));
        if (t.loop_blocked) g.append(sv("text", { x: x(end) + 3, y: y + 15, class: "mark" }, "◆"));
      } else {
        g.append(sv("rect", { x: x(t.enqueued_ns), y: y + 7, width: Math.max(2, x(t.finished_ns) - x(t.enqueued_ns)), height: 8, class: "notrun" }));
      }
      svg.append(g);
    });
  }

  // --- routing ----------------------------------------------------------------------------
  function route() {
    const match = location.hash.match(/^#\/trace\/([0-9a-f]{32}-[0-9a-f]{16})$/);
    $("view-tasks").hidden = !!match;
    $("view-trace").hidden = !match;
    if (match) showTrace(match[1]);
    else { clearTimeout(state.trace); $("nav-trace-label").textContent = ""; }
  }
  window.addEventListener("hashchange", route);
  $("filter-name").addEventListener("change", renderTasks);
  $("filter-outcome").addEventListener("change", renderTasks);
  route();
  poll();
})();

/* launch ui: draws the runs page and a run's page from the JSON the page carries (and, when served,
   refreshes it from the server). Every text of a run reaches the document through text nodes
   (el() below) or, for Plotly's labels, HTML-escaped (plotlyText): never as markup. */
(function () {
  "use strict";

  var PHASE_COLORS = {
    "queue": "#c6cbd1", "requeue": "#e8c07d", "stopped": "#8c959f", "start-up": "#79b8ff",
    "training": "#2da44e", "checkpoints": "#8250df", "stopping": "#fb8f44", "finishing": "#116329",
    "unrecorded": "#cf222e"
  };
  var MARKERS = {
    "preempted": ["x", "#cf222e"], "restarted": ["triangle-up", "#bf3989"], "stalled": ["hourglass", "#9a6700"],
    "resumed": ["circle-open", "#0969da"], "failed": ["x-thin-open", "#a40e26"], "requeued": ["square-open", "#6e7781"],
    "queued": ["diamond-open", "#6e7781"], "requeue_failed": ["x-open", "#a40e26"], "straggler": ["triangle-down-open", "#bc4c00"],
    "bad_node": ["x-dot", "#a40e26"]
  };

  var body = document.body;
  var page = body.getAttribute("data-page");
  var live = body.getAttribute("data-live") === "1";
  var api = body.getAttribute("data-api");
  var app = document.getElementById("app");
  var drawn = {};  // what each part last showed (JSON), so a refresh redraws only what changed

  function el(tag, attrs) {
    var node = document.createElement(tag);
    var key;
    for (key in (attrs || {})) {
      if (Object.prototype.hasOwnProperty.call(attrs, key)) { node.setAttribute(key, String(attrs[key])); }
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) { continue; }
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function plotlyText(s) {  // Plotly reads a few tags in its labels: give it entities, it shows the characters
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || v === "") { return "–"; }
    return typeof v === "number" ? (digits === undefined ? String(v) : v.toFixed(digits)) : String(v);
  }
  function seconds(s) {
    if (s === null || s === undefined) { return "–"; }
    if (s < 120) { return s.toFixed(1) + " s"; }
    if (s < 7200) { return (s / 60).toFixed(1) + " min"; }
    return (s / 3600).toFixed(2) + " h";
  }
  function section(id, title) {
    var box = document.getElementById(id);
    if (!box) {
      box = el("section", { id: id });
      app.appendChild(el("h2", { id: id + "-title" }, title));
      app.appendChild(box);
    }
    return box;
  }
  function changed(part, value) {
    var text = JSON.stringify(value);
    if (drawn[part] === text) { return false; }
    drawn[part] = text;
    return true;
  }
  function replace(box) {
    while (box.firstChild) { box.removeChild(box.firstChild); }
    for (var i = 1; i < arguments.length; i++) { if (arguments[i]) { box.appendChild(arguments[i]); } }
  }
  function stateBadge(state) {
    return el("span", { "class": "state state-" + String(state).replace(/[^a-z]/g, ""), id: "state" }, state);
  }
  function runHref(ref) {
    return "/run/" + String(ref).split("/").map(encodeURIComponent).join("/");
  }
  function plot(div, traces, layout) {
    var config = { displaylogo: false, displayModeBar: false, responsive: true };
    window.Plotly.react(div, traces, layout, config);
  }

  // ---- the runs page
  var sortKey = "submitted_t", sortDir = -1, filterText = "";
  var COLUMNS = [["run_id", "run"], ["job", "job"], ["state", "state"], ["step", "step", 1], ["epoch", "epoch", 1],
    ["restarts", "restarts", 1], ["goodput", "goodput", 1], ["submitted_t", "submitted"], ["wall_s", "wall time", 1]];

  function drawRuns(rows) {
    document.getElementById("crumb").textContent = "runs";
    if (!document.getElementById("runs-filter")) {
      var input = el("input", { id: "runs-filter", "class": "filter", type: "search",
        placeholder: "filter by run, job or state", "aria-label": "filter runs" });
      input.addEventListener("input", function () { filterText = input.value.toLowerCase(); drawRuns(current); });
      app.textContent = "";
      app.appendChild(input);
      app.appendChild(el("table", { id: "runs" }, el("thead"), el("tbody")));
    }
    var table = document.getElementById("runs");
    var head = el("tr");
    COLUMNS.forEach(function (c) {
      var th = el("th", { "class": "sortable" + (c[2] ? " num" : "") + (sortKey === c[0] ? (sortDir > 0 ? " sorted-asc" : " sorted-desc") : ""),
        "data-key": c[0] }, c[1]);
      th.addEventListener("click", function () {
        sortDir = sortKey === c[0] ? -sortDir : 1; sortKey = c[0]; drawRuns(current);
      });
      head.appendChild(th);
    });
    replace(table.tHead, head);
    var shown = rows.filter(function (r) {
      return !filterText || [r.run_id, r.job, r.state].join(" ").toLowerCase().indexOf(filterText) >= 0;
    }).sort(function (a, b) {
      var x = a[sortKey], y = b[sortKey];
      if (x === y) { return 0; }
      if (x === null || x === undefined) { return 1; }
      if (y === null || y === undefined) { return -1; }
      return (x < y ? -1 : 1) * sortDir;
    });
    var tbody = table.tBodies[0];
    replace(tbody);
    shown.forEach(function (r) {
      tbody.appendChild(el("tr", { "class": "run-row", "data-run": r.run_id },
        el("td", null, el("a", { href: runHref(r.ref) }, r.run_id)), el("td", null, r.job),
        el("td", null, stateBadge(r.state)), el("td", { "class": "num" }, r.step), el("td", { "class": "num" }, r.epoch),
        el("td", { "class": "num" }, r.restarts), el("td", { "class": "num" }, fmt(r.goodput, 2)),
        el("td", null, r.submitted), el("td", { "class": "num" }, seconds(r.wall_s))));
    });
    if (!shown.length) {
      tbody.appendChild(el("tr", null, el("td", { colspan: COLUMNS.length }, rows.length ? "no run matches" : "no runs yet")));
    }
  }

  // ---- a run's page
  function drawRun(d) {
    var run = d.run;
    var crumb = document.getElementById("crumb");
    crumb.textContent = run.job + " / " + run.run_id;
    document.title = "launch · " + run.job + " / " + run.run_id;
    var cards = section("summary", "Run");
    if (changed("summary", run)) {
      var items = [["state", stateBadge(run.state)], ["step", run.step], ["epoch", run.epoch], ["restarts", run.restarts],
        ["attempts", d.attempts.length], ["goodput", fmt(run.goodput, 2)], ["wall time", seconds(run.wall_s)],
        ["world size", fmt(run.world_size)], ["backend", run.backend]];
      var row = el("div", { "class": "cards" });
      items.forEach(function (it) {
        row.appendChild(el("div", { "class": "card", "data-card": it[0] }, el("div", { "class": "label" }, it[0]),
          el("div", { "class": "value" }, it[1])));
      });
      var extra = [];
      if (run.error) { extra.push(el("p", { "class": "error-text", id: "run-error" }, run.error)); }
      if (run.note) { extra.push(el("p", { "class": "note" }, run.note)); }
      replace.apply(null, [cards, row, el("p", { "class": "note" }, run.dir)].concat(extra));
    }
    drawTimeline(d);
    drawMetrics(d);
    drawLedger(d);
    drawHeartbeats(d);
    drawErrors(d);
    drawText("config", "Frozen config (config.toml)", d.config);
    drawText("script", "Submitted script (" + d.script_name + ")", d.script);
  }

  function drawTimeline(d) {
    var box = section("timeline-section", "Attempts");
    if (!changed("timeline", [d.attempts, d.unallocated])) { return; }
    if (!document.getElementById("timeline")) {
      box.appendChild(el("div", { id: "timeline", "class": "chart" }));
      box.appendChild(el("table", { id: "attempts" }, el("thead"), el("tbody")));
    }
    var labels = d.attempts.map(function (a) {
      return "attempt " + a.attempt + (a.slurm_job_id ? " (job " + a.slurm_job_id + ")" : "");
    });
    var traces = [];
    d.phases.forEach(function (phase) {
      var t = { type: "bar", orientation: "h", name: phase, x: [], base: [], y: [], hovertext: [], hoverinfo: "text",
        marker: { color: PHASE_COLORS[phase] || "#999" } };
      d.attempts.forEach(function (a, i) {
        a.segments.forEach(function (s) {
          if (s.phase !== phase) { return; }
          t.x.push(s.end - s.start); t.base.push(s.start); t.y.push(labels[i]);
          t.hovertext.push(plotlyText(labels[i] + ": " + phase + " " + seconds(s.end - s.start) + " (from " + seconds(s.start) + ")"));
        });
      });
      if (t.x.length) { traces.push(t); }
    });
    var kinds = {};
    d.attempts.forEach(function (a, i) {
      a.markers.forEach(function (m) {
        var k = kinds[m.event] = kinds[m.event] || { x: [], y: [], text: [] };
        k.x.push(m.t); k.y.push(labels[i]); k.text.push(plotlyText(m.text));
      });
    });
    Object.keys(kinds).forEach(function (name) {
      var look = MARKERS[name] || ["circle", "#333"];
      traces.push({ type: "scatter", mode: "markers", name: name, x: kinds[name].x, y: kinds[name].y,
        hovertext: kinds[name].text, hoverinfo: "text",
        marker: { symbol: look[0], color: look[1], size: 13, line: { width: 2, color: look[1] } } });
    });
    plot(document.getElementById("timeline"), traces, {
      barmode: "overlay", height: 130 + 46 * Math.max(1, labels.length), margin: { l: 150, r: 20, t: 60, b: 40 },
      xaxis: { title: { text: "seconds since submission" }, zeroline: false },
      yaxis: { autorange: "reversed", type: "category", categoryorder: "array", categoryarray: labels }, bargap: 0.35,
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" }
    });
    var tbody = document.querySelector("#attempts tbody");
    replace(document.querySelector("#attempts thead"),
      el("tr", null, el("th", null, "attempt"), el("th", null, "host"), el("th", null, "phases"), el("th", null, "events")));
    replace(tbody);
    d.attempts.forEach(function (a, i) {
      var phases = el("td", { "class": "phases" });
      a.segments.forEach(function (s) {
        phases.appendChild(el("span", { "class": "phase", "data-phase": s.phase },
          el("span", { "class": "swatch", style: "background:" + (PHASE_COLORS[s.phase] || "#999") }),
          s.phase + " " + seconds(s.end - s.start) + "  "));
      });
      var marks = el("td", { "class": "markers" });
      a.markers.forEach(function (m) { marks.appendChild(el("div", { "class": "marker", "data-event": m.event }, m.text)); });
      tbody.appendChild(el("tr", { "class": "attempt", "data-attempt": a.attempt },
        el("td", null, labels[i]), el("td", null, fmt(a.host)), phases, marks));
    });
  }

  function drawMetrics(d) {
    var box = section("metrics-section", "Metrics (metrics.csv)");
    if (!changed("metrics", [d.metrics, d.boundaries])) { return; }
    replace(box);
    if (!d.metrics.series.length) { box.appendChild(el("p", { "class": "note" }, "nothing logged yet")); return; }
    box.appendChild(el("p", { "class": "note" }, "dashed lines: an attempt resumed there; shaded: steps rewound and trained again"));
    var shapes = [], notes = [];
    d.boundaries.resumes.forEach(function (b) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: b.step, x1: b.step, y0: 0, y1: 1,
        line: { dash: "dash", color: "#0969da", width: 1 } });
    });
    d.boundaries.rewound.forEach(function (r) {
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: r.from, x1: r.to, y0: 0, y1: 1,
        fillcolor: "rgba(207,34,46,0.12)", line: { width: 0 } });
      notes.push(r.text);
    });
    var grid = el("div", { "class": "grid" });
    box.appendChild(grid);
    d.metrics.series.forEach(function (s, i) {
      var div = el("div", { id: "metric-" + i, "class": "chart metric", "data-metric": s.name, "data-points": s.points });
      grid.appendChild(div);
      var sampled = s.every > 1 ? " (every " + s.every + "th of " + s.points + " points)" : "";
      plot(div, [{ type: "scatter", mode: s.x.length > 60 ? "lines" : "lines+markers", name: plotlyText(s.name),
        x: s.x, y: s.y, hovertemplate: "step %{x}: %{y}<extra></extra>" }], {
        title: { text: plotlyText(s.name + sampled), font: { size: 13 } }, height: 240,
        margin: { l: 60, r: 20, t: 36, b: 36 }, xaxis: { title: { text: "step" } }, shapes: shapes, showlegend: false
      });
    });
    notes.forEach(function (n) { box.appendChild(el("p", { "class": "note rewound" }, n)); });
  }

  function drawLedger(d) {
    var box = section("ledger-section", "Where the time went");
    if (!changed("ledger", d.ledger)) { return; }
    replace(box);
    if (!d.ledger) { box.appendChild(el("p", { "class": "note" }, "not submitted")); return; }
    var div = el("div", { id: "ledger", "class": "chart" });
    box.appendChild(div);
    var traces = d.phases.filter(function (p) { return d.ledger[p + "_s"] > 0; }).map(function (p) {
      return { type: "bar", orientation: "h", name: p, y: ["wall time"], x: [d.ledger[p + "_s"]],
        marker: { color: PHASE_COLORS[p] }, hovertext: [p + " " + seconds(d.ledger[p + "_s"])], hoverinfo: "text" };
    });
    plot(div, traces, { barmode: "stack", height: 170, margin: { l: 80, r: 20, t: 40, b: 40 },
      xaxis: { title: { text: "seconds" } }, legend: { orientation: "h", x: 0, y: 1.05, yanchor: "bottom" } });
    box.appendChild(el("p", { id: "goodput" }, "goodput " + fmt(d.ledger.goodput, 2) + " of " +
      seconds(d.ledger.allocated_s) + " allocated" + (d.ledger.recomputed_steps ? "; " + d.ledger.recomputed_steps +
      " steps recomputed (" + seconds(d.ledger.recomputed_s) + ")" : "")));
  }

  function drawHeartbeats(d) {
    var box = section("heartbeats-section", "Ranks (heartbeats)");
    if (!changed("heartbeats", d.heartbeats)) { return; }
    var table = el("table", { id: "heartbeats" }, el("thead", null, el("tr", null, el("th", null, "rank"), el("th", null, "host"),
      el("th", { "class": "num" }, "step"), el("th", { "class": "num" }, "last progress"),
      el("th", { "class": "num" }, "slowest step"), el("th", { "class": "num" }, "step compute"), el("th", null, "done"))));
    var tbody = el("tbody");
    d.heartbeats.forEach(function (b) {
      tbody.appendChild(el("tr", { "class": "rank", "data-rank": b.rank }, el("td", null, b.rank), el("td", null, b.host),
        el("td", { "class": "num" }, b.step), el("td", { "class": "num" }, b.progress_ago_s === null ? "–" : seconds(b.progress_ago_s) + " ago"),
        el("td", { "class": "num" }, seconds(b.slowest_step_s)),
        el("td", { "class": "num" }, b.compute_s === null ? "–" : (b.compute_s * 1000).toFixed(1) + " ms"), el("td", null, b.done ? "yes" : "")));
    });
    table.appendChild(tbody);
    replace(box, d.heartbeats.length ? table : el("p", { "class": "note" }, "no heartbeats (no rank has started)"));
  }

  function drawErrors(d) {
    var box = section("errors-section", "Errors");
    if (!changed("errors", d.errors)) { return; }
    replace(box);
    if (!d.errors.length) { box.appendChild(el("p", { "class": "note" }, "none")); return; }
    var list = el("ul", { id: "errors" });
    d.errors.forEach(function (e) {
      var item = el("li", { "class": "error" }, el("strong", null, e.source + ": "), el("span", { "class": "error-text" }, e.text));
      if (e.detail) { item.appendChild(el("details", null, el("summary", null, "traceback"), el("pre", null, e.detail))); }
      list.appendChild(item);
    });
    box.appendChild(list);
  }

  function drawText(id, title, text) {
    var box = section(id + "-section", title);
    if (!changed(id, text)) { return; }
    replace(box, el("pre", { id: id }, text || "(none)"));
  }

  // ---- drawing and refreshing
  var current = JSON.parse(document.getElementById("launch-data").textContent);
  var stamp = document.getElementById("updated");

  function draw(data) {
    current = data;
    if (page === "runs") { drawRuns(data); } else {
      if (app.firstChild && app.firstChild.nodeName === "P") { app.textContent = ""; }
      drawRun(data);
    }
  }
  function over(data) { return page === "run" && data.run.terminal === true; }

  draw(current);
  if (!live) {
    stamp.textContent = "report written " + new Date(current.now * 1000).toLocaleString();
    return;
  }
  var every = page === "runs" ? 5000 : 2000;
  var stopped = over(current);
  stamp.textContent = stopped ? "run ended" : "refreshes every " + every / 1000 + " s";
  function refresh() {
    if (stopped) { return; }
    fetch(api, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) {
        draw(data);
        stopped = over(data);
        stamp.textContent = (stopped ? "run ended; " : "") + "updated " + new Date().toLocaleTimeString();
      })
      .catch(function (err) { stamp.textContent = "not updated: " + err.message; });
  }
  window.setInterval(refresh, every);
})();

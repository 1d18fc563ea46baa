// Trend charts of an alert's patient with uPlot: readings, the baseline band and the threshold line.
(function () {
  "use strict";
  const box = document.getElementById("charts");
  if (!box) return;
  const tz = box.dataset.tz;
  // The page's strings come in a meta tag ({msgid: text}, from the catalogues), as for console.js;
  // `make i18n` finds each _("...") here.
  const i18nMeta = document.querySelector('meta[name="vaktrom-i18n"]');
  let messages = {};
  try { messages = JSON.parse((i18nMeta && i18nMeta.content) || "{}"); } catch (error) { messages = {}; }
  function _(msgid, params) {
    const text = Object.prototype.hasOwnProperty.call(messages, msgid) ? messages[msgid] : msgid;
    return text.replace(/%\((\w+)\)s/g, (all, name) => (params && name in params ? String(params[name]) : all));
  }
  const locale = document.documentElement.lang === "nb" ? "nb-NO" : "en-GB";
  const fmt = new Intl.DateTimeFormat(locale, {timeZone: tz, day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit"});
  const names = {body_weight: _("Weight"), spo2: "SpO₂", pulse: _("Pulse"), glucose: _("Glucose"), body_temperature: _("Temperature")};
  const units = {"Cel": "°C", "/min": _("beats/min")};
  names.bp_systolic = _("Systolic pressure");
  names.bp_diastolic = _("Diastolic pressure");
  units["mm[Hg]"] = "mmHg";

  function draw(chart) {
    const wrap = document.createElement("div");
    wrap.className = "chart";
    wrap.dataset.metric = chart.metric;
    const title = document.createElement("h3");
    title.textContent = (names[chart.metric] || chart.metric) + " (" + (units[chart.unit] || chart.unit) + ")";
    wrap.append(title);
    box.append(wrap);
    if (!chart.points.length) {
      const none = document.createElement("p");
      none.className = "muted";
      none.textContent = _("No readings in the archive for this period.");
      wrap.append(none);
      return;
    }
    const xs = chart.points.map((p) => p[0]);
    const ys = chart.points.map((p) => p[1]);
    const marked = chart.points.map((p) => (p[2] ? p[1] : null));
    const data = [xs, ys, marked];
    const series = [
      {value: (u, t) => t == null ? "" : fmt.format(new Date(t * 1000))},
      {label: names[chart.metric] || chart.metric, stroke: "#1f5fa8", width: 1.5, points: {show: xs.length < 300, size: 4}},
      {label: _("in this alert"), stroke: "#c62828", width: 0, points: {show: true, size: 9, fill: "#c62828"}},
    ];
    const bands = [];
    const legend = [];
    if (chart.baseline) {
      const b = chart.baseline, s = b.spread || 0;
      data.push(xs.map(() => b.value + s), xs.map(() => b.value), xs.map(() => b.value - s));
      series.push({label: "baseline +", stroke: "rgba(46,125,50,.3)", width: 1, points: {show: false}},
                  {label: "baseline", stroke: "#2e7d32", width: 1.5, dash: [6, 4], points: {show: false}},
                  {label: "baseline −", stroke: "rgba(46,125,50,.3)", width: 1, points: {show: false}});
      bands.push({series: [3, 5], fill: "rgba(46,125,50,.10)"});
      legend.push(b.label + (s ? " ± " + s : ""));
    }
    if (chart.daily && chart.daily.length) {
      // the daily mean from the archive's daily aggregate, as a step line under each day's readings
      const means = new Map(chart.daily.map((d) => [d[0], d[2]]));
      data.push(xs.map((x) => { const m = means.get(Math.floor(x / 86400) * 86400); return m == null ? null : m; }));
      series.push({label: "daily mean", stroke: "#757575", width: 1, paths: uPlot.paths.stepped({align: 1}), points: {show: false}});
      legend.push(_("grey: daily mean"));
    }
    if (chart.threshold) {
      const t = chart.threshold;
      data.push(xs.map(() => t.value));
      series.push({label: "threshold", stroke: "#c62828", width: 1.5, dash: [3, 3], points: {show: false}});
      legend.push(t.label);
    }
    if (chart.companion) {
      // after the other series, so the baseline band keeps its indices; the other pressure of each cuff measurement (same measured time): systolic and diastolic together
      const other = new Map(chart.companion.points.map((p) => [p[0], p[1]]));
      data.push(xs.map((x) => (other.has(x) ? other.get(x) : null)));
      series.push({label: names[chart.companion.metric], stroke: "#6a1b9a", width: 1.5, points: {show: xs.length < 300, size: 4}});
      legend.push(_("purple: %(name)s", {name: names[chart.companion.metric].toLowerCase()}));
    }
    const width = Math.max(320, box.clientWidth - 10);
    // eslint-disable-next-line no-undef
    new uPlot({
      width, height: 220, series, bands,
      scales: {x: {time: true}},
      axes: [
        {values: (u, ticks) => ticks.map((t) => fmt.format(new Date(t * 1000)).replace(",", "")), space: 90},
        {label: chart.unit},
      ],
      legend: {show: false},
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz),
    }, data, wrap);
    const caption = document.createElement("p");
    caption.className = "legend";
    caption.textContent = [_("● readings"), _("● red: readings in this alert")].concat(legend).join(" · ");
    wrap.append(caption);
  }

  function note(kind, text) {
    const p = document.createElement("p");
    p.className = kind;
    p.textContent = text;
    box.append(p);
  }

  fetch(box.dataset.src, {cache: "no-store"})
    .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then((body) => {
      box.innerHTML = "";
      if (!body.charts.length) note("muted", _("This alert is about the kit, not a measurement; no trend to show."));
      body.charts.forEach(draw);
      box.dataset.ready = "1";
    })
    .catch((error) => { box.innerHTML = ""; note("error", _("Could not load the readings (%(error)s). Reload the page to try again.", {error: error.message})); });
})();

// The indicators page's charts with uPlot: one chart per indicator, one point per week.
(function () {
  "use strict";
  const box = document.getElementById("indicators");
  if (!box) return;
  const tz = box.dataset.tz;
  // The page's strings come in a meta tag ({msgid: text}), as for trend.js; `make i18n` finds each _("...").
  const i18nMeta = document.querySelector('meta[name="vaktrom-i18n"]');
  let messages = {};
  try { messages = JSON.parse((i18nMeta && i18nMeta.content) || "{}"); } catch (error) { messages = {}; }
  function _(msgid) {
    return Object.prototype.hasOwnProperty.call(messages, msgid) ? messages[msgid] : msgid;
  }
  const locale = document.documentElement.lang === "nb" ? "nb-NO" : "en-GB";
  const fmt = new Intl.DateTimeFormat(locale, {timeZone: tz, day: "2-digit", month: "short"});
  const pct = (v) => (v == null ? null : Math.round(v * 1000) / 10);
  const charts = [
    {title: _("Response-time compliance (%)"), lines: [
      {key: "compliance_red", label: _("red"), stroke: "#c62828", scale: pct, size: 10},
      {key: "compliance_yellow", label: _("yellow"), stroke: "#f9a825", scale: pct, size: 6}]},
    {title: _("Alerts per patient per 30 days"), lines: [{key: "alerts_per_30_days", label: _("alerts"), stroke: "#1f5fa8"}]},
    {title: _("Measurement adherence (%)"), lines: [{key: "adherence", label: _("adherence"), stroke: "#2e7d32", scale: pct}]},
    {title: _("Patients per nurse on duty"), lines: [{key: "patients_per_nurse", label: _("patients per nurse"), stroke: "#6a1b9a"}]},
    {title: _("Escalations"), lines: [{key: "escalations", label: _("escalation steps"), stroke: "#e65100"}]},
  ];

  function draw(spec, weeks) {
    const wrap = document.createElement("div");
    wrap.className = "chart";
    wrap.dataset.indicator = spec.lines[0].key;
    const title = document.createElement("h3");
    title.textContent = spec.title;
    wrap.append(title);
    box.append(wrap);
    const xs = weeks.map((w) => w.t);
    const data = [xs].concat(spec.lines.map((l) => weeks.map((w) => (l.scale ? l.scale(w[l.key]) : w[l.key]))));
    const series = [{value: (u, t) => (t == null ? "" : fmt.format(new Date(t * 1000)))}].concat(
      spec.lines.map((l) => ({label: l.label, stroke: l.stroke, width: 2, spanGaps: false, points: {show: true, size: l.size || 6, fill: l.stroke}})));
    // eslint-disable-next-line no-undef
    new uPlot({
      width: Math.max(320, Math.min(560, box.clientWidth - 10)), height: 200, series,
      scales: {x: {time: true}, y: {range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)]}},
      axes: [{values: (u, ticks) => ticks.map((t) => fmt.format(new Date(t * 1000))), space: 70}, {}],
      legend: {show: spec.lines.length > 1},
    }, data, wrap);
  }

  fetch(box.dataset.src, {cache: "no-store"})
    .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then((body) => {
      box.innerHTML = "";
      charts.forEach((spec) => draw(spec, body.weeks));
      box.dataset.ready = "1";
    })
    .catch(() => {
      box.innerHTML = "";
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = _("The indicators could not be loaded; reload the page to try again.");
      box.append(p);
    });
})();

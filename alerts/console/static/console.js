// Vaktrom console: the live queue (server-sent events), row navigation and keyboard shortcuts.
// No framework: the server renders every fragment; this file only swaps them in.
(function () {
  "use strict";
  // The page's CSRF token comes in a meta tag: the Content-Security-Policy allows no inline script.
  const csrfMeta = document.querySelector('meta[name="vaktrom-csrf"]');
  if (csrfMeta) window.VAKTROM = {csrf: csrfMeta.content};
  // The page's language: its strings come in a meta tag too ({msgid: text}, from the catalogues);
  // `make i18n` finds each _("...") here. %(name)s is filled from `params`.
  const i18nMeta = document.querySelector('meta[name="vaktrom-i18n"]');
  let messages = {};
  try { messages = JSON.parse((i18nMeta && i18nMeta.content) || "{}"); } catch (error) { messages = {}; }
  function _(msgid, params) {
    const text = Object.prototype.hasOwnProperty.call(messages, msgid) ? messages[msgid] : msgid;
    return text.replace(/%\((\w+)\)s/g, (all, name) => (params && name in params ? String(params[name]) : all));
  }
  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  }

  // ------------------------------------------------------------ behaviour that was inline (CSP)
  // <select data-autosubmit> sends its form when changed; <form data-confirm="..."> asks first;
  // <span data-width="42"> is a meter bar of that width in per cent.
  document.addEventListener("change", (event) => {
    if (event.target.matches("[data-autosubmit]") && event.target.form) event.target.form.submit();
  });
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.matches("form[data-confirm]") && !confirm(form.dataset.confirm)) event.preventDefault();
  });
  function paintMeters(root) {
    for (const bar of root.querySelectorAll("[data-width]")) bar.style.width = bar.dataset.width + "%";
  }
  paintMeters(document);

  const live = document.getElementById("live");
  const rowsBody = document.getElementById("rows");
  const table = rowsBody && rowsBody.closest("table");
  const panel = document.getElementById("panel");
  let selected = null;
  // Set once the page is being left (a logout, a link): a refresh still in flight that then gets
  // 401 must not send the browser to the login page over the navigation under way (after a logout
  // through the hospital's login, it raced the redirect to the provider).
  let leaving = false;
  window.addEventListener("beforeunload", () => { leaving = true; });

  // ------------------------------------------------------------ fetch a fragment, at most one at a time
  function refresher(url, apply) {
    let running = false, again = false;
    return async function refresh() {
      if (running) { again = true; return; }
      running = true;
      try {
        do {
          again = false;
          const response = await fetch(url(), {headers: {"Accept": "text/html"}, cache: "no-store"});
          if (response.status === 401) {
            if (!leaving) location.href = "/login?next=" + encodeURIComponent(location.pathname);
            return;
          }
          if (response.ok) apply(await response.text());
        } while (again);
      } finally { running = false; }
    };
  }

  const refreshRows = rowsBody && refresher(() => table.dataset.rows, (html) => {
    const before = new Set([...rowsBody.querySelectorAll("tr[data-id]")].map((r) => r.dataset.id));
    // a patient's row keeps its selection when their most urgent problem changes
    const keyOf = (row) => row.dataset.patient || row.dataset.id;
    const keep = selected && keyOf(selected);
    rowsBody.innerHTML = html;
    paintMeters(rowsBody);
    for (const row of rowsBody.querySelectorAll("tr[data-id]")) {
      if (!before.has(row.dataset.id)) {
        row.classList.add("fresh");
        setTimeout(() => row.classList.remove("fresh"), 3000);
      }
      if (keyOf(row) === keep) select(row);
    }
  });
  const refreshPanel = panel && refresher(() => panel.dataset.src, (html) => {
    if (panel.contains(document.activeElement) && document.activeElement.matches("select, textarea")) return;
    panel.innerHTML = html;
  });

  // ------------------------------------------------------------ live updates
  if (window.VAKTROM && (rowsBody || panel)) {
    const source = new EventSource("/events");
    source.addEventListener("open", () => { live.classList.replace("off", "on"); });
    source.addEventListener("error", () => { live.classList.replace("on", "off"); });
    const update = () => { if (refreshRows) refreshRows(); if (refreshPanel) refreshPanel(); };
    source.addEventListener("hello", update);  // also after a reconnect: changes may have been missed
    source.addEventListener("changed", update);
    // The queue's waiting times move even when nothing changes.
    if (refreshRows) setInterval(refreshRows, 30000);
  } else if (live) {
    live.hidden = true;
  }

  // ------------------------------------------------------------ technical alarm (every page)
  // The server's banner says which stage is late or down; when the server itself stops answering,
  // the page says so: a broken alarm channel raises its own alarm.
  const alarm = document.getElementById("pipeline-banner");
  if (alarm) {
    let lostSince = null;
    const lost = () => {
      lostSince = lostSince || new Date();
      const at = lostSince.toLocaleTimeString(document.documentElement.lang || [], {hour: "2-digit", minute: "2-digit"});
      alarm.innerHTML = '<div class="pipeline-alarm" role="alert" data-client="1"><strong>' + escapeHtml(_("Alerts may be delayed")) +
        "</strong> " + escapeHtml(_("since %(since)s: this console has lost the response centre, so new alerts may not be shown. Reload, check patients at risk by other means and tell the technical on-call.", {since: at})) + "</div>";
    };
    const check = async () => {
      try {
        const response = await fetch("/status/banner", {headers: {"Accept": "text/html"}, cache: "no-store"});
        if (!response.ok) { lost(); return; }
        lostSince = null;
        const html = await response.text();
        if (alarm.innerHTML.trim() !== html.trim()) alarm.innerHTML = html;
      } catch (error) { lost(); }
    };
    setInterval(check, 10000);
  }

  // ------------------------------------------------------------ queue navigation
  function rows() { return rowsBody ? [...rowsBody.querySelectorAll("tr[data-href]")] : []; }
  function select(row) {
    if (selected) selected.classList.remove("selected");
    selected = row;
    if (row) { row.classList.add("selected"); row.scrollIntoView({block: "nearest"}); }
  }
  function move(step) {
    const all = rows();
    if (!all.length) return;
    const at = all.indexOf(selected);
    select(all[Math.max(0, Math.min(all.length - 1, at < 0 ? 0 : at + step))]);
  }
  if (rowsBody) {
    rowsBody.addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-href]");
      if (row && !event.target.closest("a")) location.href = row.dataset.href;
    });
  }

  async function claimSelected() {
    if (!selected) return;
    const response = await fetch("/api/v1" + selected.dataset.href + "/claim", {
      method: "POST", headers: {"X-CSRF-Token": window.VAKTROM.csrf},
    });
    if (response.ok) { location.href = selected.dataset.href; return; }
    const body = await response.json().catch(() => ({detail: response.statusText}));
    alert(_("Could not claim: %(reason)s", {reason: body.detail}));
    refreshRows();
  }

  function submit(id) {
    const form = document.getElementById(id);
    if (form) form.requestSubmit();
  }

  // ------------------------------------------------------------ keyboard
  const help = document.getElementById("help");
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target.matches("input, textarea, select");
    if (event.key === "Escape") {
      if (!help.hidden) { help.hidden = true; return; }
      if (typing) { event.target.blur(); return; }
      if (!rowsBody && window.VAKTROM) location.href = "/";
      return;
    }
    if (typing) {
      if (event.key === "Enter" && event.target.matches("#resolve select")) { event.preventDefault(); submit("resolve"); }
      return;
    }
    switch (event.key) {
      case "?": help.hidden = !help.hidden; break;
      case "j": move(1); break;
      case "k": move(-1); break;
      case "o": case "Enter": if (selected) location.href = selected.dataset.href; break;
      case "c": if (rowsBody) claimSelected(); else submit("claim"); break;
      case "s": submit("start"); break;
      case "r": {
        const code = document.querySelector("#resolve select");
        if (code) { event.preventDefault(); code.focus(); }
        break;
      }
      case "q": if (!rowsBody && window.VAKTROM) location.href = "/"; break;
      default: return;
    }
  });
})();

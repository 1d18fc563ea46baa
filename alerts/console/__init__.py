"""The console and the HTTP API: pages, the JSON API, live updates, the registry's pages and API,
accounts pages, templates and static files. Views call store functions (`alerts.store`,
`alerts.accounts`, `alerts.handoff`, `alerts.quarantine`); they hold no SQL."""

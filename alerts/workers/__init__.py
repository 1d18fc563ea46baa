"""The response centre's background workers: the alert feed, escalation, session purge,
notifications and the care-plan relay, each a supervised task (`supervisor`, wired in
`alerts.service`), and the stage watch behind the console's technical-alarm banner."""

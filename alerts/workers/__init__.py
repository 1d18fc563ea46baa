"""The response centre's background workers: the alert feed, escalation, session purge,
notifications, the care-plan relay and the stage watch, each a supervised task (`supervisor`)."""

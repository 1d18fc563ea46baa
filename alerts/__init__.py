"""Response-centre service: alert store, escalation, nurse console and HTTP API.

Not built yet (issue #7).
"""

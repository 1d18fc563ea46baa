"""Faust stream apps: `monitor` (baselines and rules -> alert episodes) and `archive` (-> TimescaleDB).

Not built yet (issues #5 and #6).
"""

"""Home-kit simulator and load generator. Talks MQTT only and imports nothing of the pipeline.

It knows the published payload format (`contracts/schemas/*.json`) and nothing else, like a kit
vendor's firmware would. `gateway-sim --help` (or `python -m gateway_sim --help`) explains the
commands; `gateway_sim.cli` has the overview.
"""

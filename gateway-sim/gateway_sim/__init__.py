"""Home-kit simulator and load generator. Talks MQTT only and imports nothing of the pipeline.

Not built yet (issue #3).
"""

"""MQTT -> Kafka bridge: validates and normalises kit readings, rejects bad input with a reason.

Not built yet (issue #4).
"""

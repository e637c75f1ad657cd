"""Pi scanner firmware: camera -> decode -> credential -> decision -> signals -> outbox -> MQTT."""

__version__ = "0.1.0"

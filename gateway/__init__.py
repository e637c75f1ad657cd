"""Site gateway: ingest check-ins into the tracing database, ack them, watch the fleet."""

__version__ = "0.1.0"

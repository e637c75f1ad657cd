"""The bus contract shared by devices and the gateway: topics, messages, Mosquitto setup."""

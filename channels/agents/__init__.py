"""Agent devices: OwnTracks and native JSON over MQTT, the OsmAnd protocol of Traccar Client over
HTTP, commands and replies, the MQTT client, and the broker's view of device identity."""

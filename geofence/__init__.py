"""Geofence: geometry and policy. Fences from GeoJSON, an index, inside / outside / uncertain
decisions and enter / exit / breach events. No I/O beyond its own store."""

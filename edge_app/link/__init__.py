"""The device's link to a fleet: the MQTT sink (status, results, events), the commands it takes (signed deploys,
benches) and Home Assistant discovery."""

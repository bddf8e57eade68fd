"""Platform wiring shared by the offline rooms: settings, local services, the `tx` CLI."""

"""The device service: The device registry and presence (online / late / offline)."""

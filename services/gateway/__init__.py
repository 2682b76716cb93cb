"""The gateway service: Agent and portal WebSockets and the web portal."""

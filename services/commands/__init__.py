"""The commands service: The durable command queue and each command's lifecycle."""

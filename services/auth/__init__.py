"""The auth service: Operators, workspaces, device credentials and sessions."""

-- A workspace's commands, newest first (GET /api/v1/commands).
CREATE INDEX commands_workspace_created ON commands (workspace_id, created_at DESC, command_id DESC);

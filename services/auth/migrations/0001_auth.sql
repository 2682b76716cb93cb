-- Operators, workspaces and roles; device credentials minted here; the audit read model.
CREATE TABLE workspaces (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    open_enrolment boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL
);

CREATE TABLE operators (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE CHECK (email = lower(email)),
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL,
    password_changed_at timestamptz NOT NULL
);

CREATE TABLE memberships (
    operator_id uuid NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('owner', 'operator', 'viewer')),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (operator_id, workspace_id)
);
CREATE INDEX memberships_workspace ON memberships (workspace_id);

-- Credentials this service minted (initial ones come with device.registered); hashes only.
CREATE TABLE credentials (
    id uuid PRIMARY KEY,
    device_id text NOT NULL,
    workspace_id text NOT NULL,
    kind text NOT NULL,
    secret_sha256 text NOT NULL,
    replaces text,
    created_at timestamptz NOT NULL,
    created_by text NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX credentials_device ON credentials (device_id, kind) WHERE revoked_at IS NULL;

-- Read model of operator actions, fed from events:auth and events:device.
CREATE TABLE audit_log (
    event_id uuid PRIMARY KEY,
    workspace_id text NOT NULL,
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    subject text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_workspace_at ON audit_log (workspace_id, at DESC, event_id DESC);

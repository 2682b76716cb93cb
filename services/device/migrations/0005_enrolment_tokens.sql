-- Enrolment tokens: an agent presenting one registers itself in the token's workspace. The token is
-- kept only as its SHA-256; agents are remembered per token (by the SHA-256 of their own id) so a
-- retry after a lost answer finds its device instead of making a second one.
CREATE TABLE enrolment_tokens (
    token_id      text PRIMARY KEY,
    workspace_id  text NOT NULL,
    secret_sha256 text NOT NULL UNIQUE,
    name          text,
    site_id       text REFERENCES sites (site_id),
    device_type   text NOT NULL,
    groups        text[] NOT NULL DEFAULT '{}',
    labels        jsonb NOT NULL DEFAULT '{}',
    max_uses      integer NOT NULL,
    uses          integer NOT NULL DEFAULT 0,
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    created_by    text NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX enrolment_tokens_workspace ON enrolment_tokens (workspace_id, created_at DESC);

CREATE TABLE enrolment_agents (
    token_id      text NOT NULL REFERENCES enrolment_tokens (token_id),
    agent_sha256  text NOT NULL,
    device_id     text NOT NULL REFERENCES devices (device_id),
    credential_id text NOT NULL,  -- the secret credential the registry last gave this agent
    enrolled_at   timestamptz NOT NULL,
    PRIMARY KEY (token_id, agent_sha256)
);

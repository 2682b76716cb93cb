-- A socket counts as connected only while the gateway instance holding it keeps announcing itself
-- (gateway.alive.v1): a gateway killed without closing its sockets must not leave devices online.
ALTER TABLE presence ADD COLUMN gateway_id text;
CREATE TABLE presence_gateways (
    gateway_id text PRIMARY KEY,
    last_seen  timestamptz NOT NULL  -- its latest announcement (or a connection through it)
);
CREATE INDEX presence_connected_gateway ON presence (gateway_id) WHERE connected;

-- Tenants: a token belongs to one owner, or to none (an operator's token, which sees the
-- whole fleet). Tokens made before this are operators' tokens, as they behaved.
ALTER TABLE api_tokens ADD COLUMN owner TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE api_tokens ADD COLUMN revoked_reason TEXT;
-- The token this one replaced (`pvefleet token rotate`).
ALTER TABLE api_tokens ADD COLUMN rotated_from UUID;
CREATE INDEX api_tokens_owner ON api_tokens (owner);

-- The sagas intake answered with, before the coordinator starts them: the id is known (an SSE
-- stream on it waits; an unknown id is 404), and whose it is.
CREATE TABLE accepted_sagas (
    saga_id     UUID PRIMARY KEY,
    kind        TEXT NOT NULL,
    site_id     UUID,
    owner       TEXT,
    accepted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX accepted_sagas_site ON accepted_sagas (site_id);

-- The audit trail: who (a token, or `cli:<operator>`), for which owner, did what to which
-- target, how it ended, in which request.
ALTER TABLE audit_log ADD COLUMN token_id UUID;
ALTER TABLE audit_log ADD COLUMN owner TEXT;
ALTER TABLE audit_log ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
ALTER TABLE audit_log ADD COLUMN request_id TEXT;
CREATE INDEX audit_log_actor ON audit_log (actor);
CREATE INDEX audit_log_owner ON audit_log (owner);
CREATE INDEX audit_log_action ON audit_log (action);
CREATE INDEX audit_log_target ON audit_log (target);

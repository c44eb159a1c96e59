-- The notifier's deliveries: one row per notice, channel and target, with its state, tries
-- and last error, so no delivery is lost silently.
CREATE TABLE notifications (
    id          UUID PRIMARY KEY,
    -- the event's message id: a redelivered event makes no second row
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    -- info, warning, critical
    severity    TEXT NOT NULL,
    -- operator, owner
    audience    TEXT NOT NULL,
    owner       TEXT,
    -- email, webhook, ntfy, alertmanager
    channel     TEXT NOT NULL,
    target      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    payload     JSONB NOT NULL,
    -- a raised alert's subject and kind: not sent again within notifier.alert_resend_interval
    dedupe_key  TEXT,
    -- pending, sending, retrying, sent, failed, suppressed
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ,
    UNIQUE (event_id, channel, target)
);
CREATE INDEX notifications_state ON notifications (state, id);
CREATE INDEX notifications_owner ON notifications (owner, id);
CREATE INDEX notifications_dedupe ON notifications (dedupe_key, channel, target, created_at) WHERE dedupe_key IS NOT NULL;

-- Where a site owner's own notices go.
CREATE TABLE owner_contacts (
    owner       TEXT PRIMARY KEY,
    email       TEXT,
    webhook_url TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The inbox: one row per (consumer, message id) handled, written in the handler's transaction.
CREATE TABLE inbox (
    consumer    TEXT        NOT NULL,
    message_id  TEXT        NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_received_at ON inbox (received_at);

-- The outbox: messages written in the same transaction as the state change that caused them,
-- published by the relay with confirms, then marked sent.
CREATE TABLE outbox (
    id              BIGSERIAL   PRIMARY KEY,
    message_id      TEXT        NOT NULL,
    exchange        TEXT        NOT NULL,
    routing_key     TEXT        NOT NULL,
    mandatory       BOOLEAN     NOT NULL,
    message_type    TEXT,
    correlation_id  TEXT,
    properties      JSONB       NOT NULL,
    body            BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at, id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

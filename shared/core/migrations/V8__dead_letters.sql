-- The dead-letter store (DESIGN.md §3): every message that reaches `pvefleet.parked`, byte for
-- byte, with where it came from and why it was parked.
CREATE TABLE dead_letters (
    id              UUID PRIMARY KEY,
    message_id      TEXT NOT NULL,
    -- pvefleet's attempt count, or the broker's x-death count for a broker dead letter
    attempts        BIGINT NOT NULL,
    -- how many replays this copy has been through (its pvefleet-replay-count header)
    generation      BIGINT NOT NULL DEFAULT 0,
    message_type    TEXT,
    correlation_id  UUID,
    -- the full AMQP properties with every header, as lapin serializes them
    properties      JSONB NOT NULL,
    body            BYTEA NOT NULL,
    origin_exchange TEXT NOT NULL,
    origin_routing_key TEXT NOT NULL,
    origin_queue    TEXT NOT NULL,
    fault_class     TEXT NOT NULL,
    fault_message   TEXT NOT NULL,
    first_failure   TEXT,
    last_failure    TEXT,
    x_death         JSONB,
    -- message type + fault class + normalised message, hashed: what an operator groups by
    fingerprint     TEXT NOT NULL,
    -- parked, replayed, resolved, archived
    state           TEXT NOT NULL DEFAULT 'parked',
    replay_count    INTEGER NOT NULL DEFAULT 0,
    parked_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- a second park of the same message at the same attempt is the same dead letter
    UNIQUE (message_id, attempts, generation)
);
CREATE INDEX dead_letters_state ON dead_letters (state, parked_at);
CREATE INDEX dead_letters_fingerprint ON dead_letters (fingerprint) WHERE state = 'parked';
CREATE INDEX dead_letters_correlation ON dead_letters (correlation_id);

-- Each replay of a dead letter.
CREATE TABLE dead_letter_replays (
    id             BIGSERIAL PRIMARY KEY,
    dead_letter_id UUID NOT NULL REFERENCES dead_letters (id),
    actor          TEXT NOT NULL,
    replayed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

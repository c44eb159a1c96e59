-- What operators did to sagas (pvefleet saga retry-step|resume|abort), and who.
CREATE TABLE saga_audit (
    id        BIGSERIAL PRIMARY KEY,
    saga_id   UUID NOT NULL REFERENCES sagas (id),
    action    TEXT NOT NULL,
    actor     TEXT NOT NULL,
    detail    JSONB,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX saga_audit_saga ON saga_audit (saga_id);

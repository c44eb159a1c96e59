-- Sites' generated credentials (WordPress admin and database), encrypted with the installer's
-- key (ChaCha20-Poly1305; a fresh nonce per row, the site id as associated data).
CREATE TABLE site_secrets (
    site_id     UUID PRIMARY KEY,
    sealed      BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What operators and tokens did that must be accountable: who, what, to which rows, when.
CREATE TABLE audit_log (
    id        BIGSERIAL PRIMARY KEY,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    detail    JSONB,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_at ON audit_log (at);

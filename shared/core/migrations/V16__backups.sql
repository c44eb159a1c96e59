-- Issue 20: backup policies (kept in step with PVE's cluster backup jobs), the backups the
-- fleet knows of (taken by those jobs, on demand, before a destroy, before a restore), and
-- which policy a site follows.

CREATE TABLE backup_policies (
    name        TEXT PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,30}$'),
    -- a PVE calendar event: daily, 02:30, sat 04:00, ...
    schedule    TEXT NOT NULL,
    storage     TEXT NOT NULL,
    mode        TEXT NOT NULL DEFAULT 'snapshot' CHECK (mode IN ('snapshot', 'suspend', 'stop')),
    compress    TEXT NOT NULL DEFAULT 'zstd' CHECK (compress IN ('zstd', 'gzip', 'lzo', '0')),
    -- PVE's prune-backups, as written to the job (keep-daily=7)
    retention   TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT true,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The guardrails' container backups: daily, kept seven days.
INSERT INTO backup_policies (name, schedule, storage, retention) VALUES ('daily', '02:00', 'local', 'keep-daily=7');

-- NULL: the site's plan's policy, else backup.default_policy.
ALTER TABLE sites ADD COLUMN backup_policy TEXT REFERENCES backup_policies (name) ON DELETE SET NULL;

CREATE TABLE backups (
    id          UUID PRIMARY KEY,
    site_id     UUID REFERENCES sites (id),
    vmid        INTEGER NOT NULL,
    node        TEXT,
    storage     TEXT NOT NULL,
    -- set once PVE wrote it
    volid       TEXT UNIQUE,
    -- scheduled (a PVE job made it), on_demand, final (before a destroy), pre_restore
    kind        TEXT NOT NULL CHECK (kind IN ('scheduled', 'on_demand', 'final', 'pre_restore')),
    -- requested, running, ok, failed, pruned (gone from the storage), deleted (by the fleet)
    state       TEXT NOT NULL CHECK (state IN ('requested', 'running', 'ok', 'failed', 'pruned', 'deleted')),
    upid        TEXT,
    size        BIGINT,
    taken_at    TIMESTAMPTZ,
    protected   BOOLEAN NOT NULL DEFAULT false,
    -- a final backup is kept until then, then removed
    keep_until  TIMESTAMPTZ,
    error       JSONB,
    -- the last verification restore: ok or failed
    verify_state TEXT CHECK (verify_state IN ('ok', 'failed')),
    verified_at TIMESTAMPTZ,
    verify_error TEXT,
    requested_by TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX backups_site ON backups (site_id, created_at DESC);
CREATE INDEX backups_vmid ON backups (vmid, created_at DESC);

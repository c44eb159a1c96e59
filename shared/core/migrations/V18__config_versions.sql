-- Issue 20: the configuration history. Each fleet container's PVE config is recorded when it
-- changes (after the autoscaler, nethotplug or a restore changed it, and by a periodic pass
-- that also catches an operator's own edits), one row per distinct config per site, each with
-- what changed from the version before; kept backup.config_retention (the newest always).
CREATE TABLE config_versions (
    site_id     UUID NOT NULL REFERENCES sites (id),
    -- 1, 2, 3, ... per site
    version     INTEGER NOT NULL,
    vmid        INTEGER NOT NULL,
    node        TEXT NOT NULL,
    -- PVE's digest of the config file when read (snapshots change it too)
    digest      TEXT NOT NULL,
    -- the config as GET .../config answers it (pending values applied), without the digest
    config      JSONB NOT NULL,
    -- [{key, from, to}] against the version before (empty for the first)
    changes     JSONB NOT NULL DEFAULT '[]',
    -- what made the change known: container.scaled, net.attached, ..., schedule, config.restore
    cause       TEXT NOT NULL,
    -- the message or restore that did
    cause_ref   TEXT,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- the last time the container still had this config (the newest version only)
    checked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, version)
);
CREATE INDEX config_versions_recorded ON config_versions (recorded_at);

-- A config restore asked for (pvefleet site config ID --restore N), carried out by the backup
-- service with the digest-guarded write.
CREATE TABLE config_restores (
    id          UUID PRIMARY KEY,
    site_id     UUID NOT NULL REFERENCES sites (id),
    -- the version put back
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'requested' CHECK (state IN ('requested', 'done', 'failed')),
    -- the version recorded after the restore
    result_version INTEGER,
    -- keys written, and those PVE left pending until a restart
    changed     JSONB NOT NULL DEFAULT '[]',
    pending     JSONB NOT NULL DEFAULT '[]',
    error       TEXT,
    requested_by TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX config_restores_site ON config_restores (site_id, created_at DESC);

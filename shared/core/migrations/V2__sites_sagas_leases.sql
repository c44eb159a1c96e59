-- Sites, sagas and their steps, and leases of vmids and IPs (DESIGN.md §6, §8).

CREATE TABLE sites (
    id          UUID PRIMARY KEY,
    subdomain   TEXT NOT NULL,
    owner       TEXT NOT NULL,
    -- requested, provisioning, active, failed, deprovisioning, deleted
    state       TEXT NOT NULL,
    spec        JSONB NOT NULL,
    vmid        INTEGER,
    ip          TEXT,
    node        TEXT,
    error       JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One live site per subdomain.
CREATE UNIQUE INDEX sites_live_subdomain ON sites (subdomain) WHERE state NOT IN ('failed', 'deleted');
CREATE INDEX sites_owner ON sites (owner);

CREATE TABLE sagas (
    id          UUID PRIMARY KEY,
    -- provision, deprovision
    kind        TEXT NOT NULL,
    site_id     UUID NOT NULL REFERENCES sites (id),
    -- running, compensating, completed, failed, compensation_failed, suspended
    state       TEXT NOT NULL,
    -- the index of the step in flight, in the current direction
    step        INTEGER NOT NULL DEFAULT 0,
    data        JSONB NOT NULL,
    error       JSONB,
    version     INTEGER NOT NULL DEFAULT 0,
    deadline    TIMESTAMPTZ,
    resends     INTEGER NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sagas_site ON sagas (site_id);
CREATE INDEX sagas_deadline ON sagas (deadline) WHERE state IN ('running', 'compensating');

-- The timeline: one row per step and direction.
CREATE TABLE saga_steps (
    saga_id     UUID NOT NULL REFERENCES sagas (id),
    name        TEXT NOT NULL,
    -- forward, compensate
    phase       TEXT NOT NULL,
    -- sent, done, failed, skipped
    state       TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    error       JSONB,
    PRIMARY KEY (saga_id, name, phase)
);

-- A vmid or IP held by a site, unique across the fleet.
CREATE TABLE leases (
    kind        TEXT NOT NULL,   -- vmid, ip
    value       TEXT NOT NULL,
    site_id     UUID NOT NULL,
    leased_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value)
);
CREATE INDEX leases_site ON leases (site_id);

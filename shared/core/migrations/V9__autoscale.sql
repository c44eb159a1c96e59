-- The autoscaler's memory: cooldowns that survive restarts and are shared by replicas, and
-- every action (or, in a dry run, what it would have done).
CREATE TABLE autoscale_cooldowns (
    vmid      INTEGER NOT NULL,
    -- cpu, memory
    resource  TEXT NOT NULL,
    until     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (vmid, resource)
);

CREATE TABLE autoscale_actions (
    id        BIGSERIAL PRIMARY KEY,
    vmid      INTEGER NOT NULL,
    node      TEXT NOT NULL,
    resource  TEXT NOT NULL,
    from_value BIGINT NOT NULL,
    to_value  BIGINT NOT NULL,
    -- scaled, would_scale, failed
    outcome   TEXT NOT NULL,
    emergency BOOLEAN NOT NULL DEFAULT false,
    detail    TEXT,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX autoscale_actions_vmid ON autoscale_actions (vmid, at);

-- Alerts raised and not yet cleared, so each is raised once and cleared once, across restarts
-- and replicas.
CREATE TABLE resource_alerts (
    subject   TEXT NOT NULL,
    resource  TEXT NOT NULL,
    raised_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, resource)
);

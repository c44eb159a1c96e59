-- Autoscaling policies: `global`, `tag:<tag>` (groups, tiers), `vmid:<n>` (one container).
-- A container takes its own, else its first tagged one (by tag name), else the global one,
-- else the configured default.
CREATE TABLE autoscale_policies (
    scope       TEXT PRIMARY KEY,
    policy      JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

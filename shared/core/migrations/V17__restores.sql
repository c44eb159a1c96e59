-- Issue 20: the restores the backup service carried out, so a redelivered backup.restore (the
-- same restore putting the same volume back) is answered again instead of stopping and
-- overwriting the container a second time.
CREATE TABLE restores (
    restore_id  UUID NOT NULL,
    volid       TEXT NOT NULL,
    site_id     UUID,
    vmid        INTEGER NOT NULL,
    node        TEXT NOT NULL,
    done_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (restore_id, volid)
);

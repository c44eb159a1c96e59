-- Step deadlines: how often the step in flight was sent without an answer (sagas.deadline
-- already holds when it is due), and each step's sends in the timeline.
ALTER TABLE sagas ADD COLUMN step_sends INTEGER NOT NULL DEFAULT 0;
ALTER TABLE saga_steps ADD COLUMN sends INTEGER NOT NULL DEFAULT 1;

-- A lease without a site is a value PVE already uses for something outside the fleet (a
-- container or VM found at that vmid): it is held so that no site is given it.
ALTER TABLE leases ALTER COLUMN site_id DROP NOT NULL;
ALTER TABLE leases ADD COLUMN holder TEXT;

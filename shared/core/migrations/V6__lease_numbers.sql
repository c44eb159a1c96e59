-- Leases carry their value as a number (the vmid; the address as a 32-bit number), indexed, so
-- a lease finds the highest value in use with one index probe instead of walking the pool.
ALTER TABLE leases ADD COLUMN num BIGINT;
UPDATE leases SET num = CASE kind
    WHEN 'vmid' THEN value::bigint
    WHEN 'ip' THEN value::inet - '0.0.0.0'::inet
END;
CREATE INDEX leases_num ON leases (kind, num);

-- A dead letter is one parking of one message, named by its park id (the runner's
-- `pvefleet-park-id` header, or one the keeper derives for a copy that has none). The message id
-- cannot be the key: publishers send empty or no ids, and two different messages with one id
-- must both be kept.
ALTER TABLE dead_letters ADD COLUMN park_id UUID;
UPDATE dead_letters SET park_id = gen_random_uuid() WHERE park_id IS NULL;
ALTER TABLE dead_letters ALTER COLUMN park_id SET NOT NULL;
-- A row written by hand (or by an import of an old export) gets a park id of its own.
ALTER TABLE dead_letters ALTER COLUMN park_id SET DEFAULT gen_random_uuid();
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_park_id_key UNIQUE (park_id);
ALTER TABLE dead_letters DROP CONSTRAINT IF EXISTS dead_letters_message_id_attempts_generation_key;
CREATE INDEX dead_letters_message_id ON dead_letters (message_id);

-- A site refused before its saga started (invalid by policy, or its request parked) is
-- `rejected`; like `failed` and `deleted`, it holds no subdomain.
DROP INDEX sites_live_subdomain;
CREATE UNIQUE INDEX sites_live_subdomain ON sites (subdomain) WHERE state NOT IN ('failed', 'rejected', 'deleted');

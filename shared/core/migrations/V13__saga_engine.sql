-- Every saga kind runs on one engine and lives in `sagas`: a VNet saga has no site.
ALTER TABLE sagas ALTER COLUMN site_id DROP NOT NULL;

-- The correlation ids a saga's steps answer on, besides the saga's own id (a network
-- operation's events carry the operation's id).
CREATE TABLE saga_correlations (
    correlation UUID PRIMARY KEY,
    saga_id     UUID NOT NULL REFERENCES sagas (id)
);
CREATE INDEX saga_correlations_saga ON saga_correlations (saga_id);

-- VNet sagas move from `net_sagas` into `sagas`, each in the engine's form: its progress
-- (plan, done, compensations, failure) beside its own data.
INSERT INTO sagas (id, kind, site_id, state, step, data, error, created_at, updated_at)
SELECT n.id, 'vnet.provision', NULL,
       CASE n.state WHEN 'ensuring' THEN 'running' WHEN 'binding' THEN 'running'
                    WHEN 'compensated' THEN 'failed' ELSE n.state END,
       CASE n.state WHEN 'binding' THEN 1 ELSE 0 END,
       jsonb_build_object(
           'plan', jsonb_build_array('ensure', 'bind'),
           'done', CASE WHEN n.state IN ('binding', 'completed') THEN jsonb_build_array('ensure') ELSE '[]'::jsonb END,
           'compensations', CASE WHEN n.state IN ('compensating', 'compensated', 'compensation_failed')
                                 THEN jsonb_build_array('remove') ELSE '[]'::jsonb END,
           'failure', NULL,
           'request', n.request, 'ensure_op', n.ensure_op, 'bind_op', n.bind_op, 'remove_op', n.remove_op,
           'created', n.created, 'bound', NULL, 'error', n.error, 'failed_nodes', '[]'::jsonb),
       n.error, n.created_at, n.updated_at
FROM net_sagas n
ON CONFLICT (id) DO NOTHING;
INSERT INTO saga_correlations (correlation, saga_id)
SELECT c, n.id FROM net_sagas n, unnest(ARRAY[n.ensure_op, n.bind_op, n.remove_op]) AS c
ON CONFLICT DO NOTHING;
DROP TABLE net_sagas;

-- Network hotplug and SDN VNet binding (services/nethotplug).

-- Each net.* / vnet.* command is an operation: its id is returned by intake at once.
CREATE TABLE net_operations (
    id           UUID PRIMARY KEY,
    -- net.attach, net.update, net.detach, vnet.bind, vnet.unbind, vnet.provision
    kind         TEXT NOT NULL,
    vmid         INTEGER,
    vnet         TEXT,
    node         TEXT,
    -- pending, running, succeeded, failed, pending_reboot; parked while its command is a dead letter
    status       TEXT NOT NULL DEFAULT 'pending',
    request      JSONB NOT NULL,
    -- the netN index, line and MAC chosen (kept before the write, so a redelivery finds them)
    net_index    INTEGER,
    line         TEXT,
    pending_keys TEXT[] NOT NULL DEFAULT '{}',
    failed_nodes TEXT[] NOT NULL DEFAULT '{}',
    error        JSONB,
    -- what a kind adds: {"created": true} for vnet.ensure, {"applied_sdn": true} for vnet.bind
    result       JSONB,
    requested_by TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
CREATE INDEX net_operations_vmid ON net_operations (vmid, created_at DESC);

-- MACs handed out to managed containers: unique across the fleet.
CREATE TABLE net_macs (
    hwaddr     TEXT PRIMARY KEY,
    vmid       INTEGER NOT NULL,
    net_index  INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX net_macs_vmid ON net_macs (vmid, net_index);

-- Addresses leased from a bridge's or VNet's pool, released on detach.
CREATE TABLE net_ip_leases (
    pool         TEXT NOT NULL,
    ip           TEXT NOT NULL,
    vmid         INTEGER NOT NULL,
    net_index    INTEGER NOT NULL,
    operation_id UUID NOT NULL,
    leased_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pool, ip)
);
CREATE UNIQUE INDEX net_ip_leases_iface ON net_ip_leases (vmid, net_index, pool);

-- Interfaces bound to SDN VNets.
CREATE TABLE vnet_bindings (
    vnet         TEXT NOT NULL,
    vmid         INTEGER NOT NULL,
    net_index    INTEGER NOT NULL,
    hwaddr       TEXT,
    operation_id UUID NOT NULL,
    bound_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (vmid, net_index)
);
CREATE INDEX vnet_bindings_vnet ON vnet_bindings (vnet);

-- Executions and outcomes per event type (the hook statistics of pve-network's design).
CREATE TABLE net_event_stats (
    event    TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    count    BIGINT NOT NULL DEFAULT 0,
    last_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event, outcome)
);

-- The vnet.ensure + net.attach saga.
CREATE TABLE net_sagas (
    id          UUID PRIMARY KEY,
    vnet        TEXT NOT NULL,
    vmid        INTEGER NOT NULL,
    -- ensuring, binding, compensating, completed, failed, compensated, compensation_failed
    state       TEXT NOT NULL,
    created     BOOLEAN NOT NULL DEFAULT false,
    -- the operations of its steps
    ensure_op   UUID NOT NULL,
    bind_op     UUID NOT NULL,
    remove_op   UUID NOT NULL,
    request     JSONB NOT NULL,
    error       JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

//! The OpenAPI document at `/openapi.json`: utoipa's, from the handlers' annotations, made
//! exact here so that what it calls valid is what intake accepts and what it calls invalid is
//! what intake refuses. Every path and query parameter, and every request body, gets the
//! schema of the rule intake applies (the site policy's label, owner and node formats, the
//! configured plans, templates and apps, PVE's VNet and interface names, the vmid range); every
//! operation gets the bearer scheme and the problem answers any route can give.

use pvefleet_core::Settings;
use serde_json::{Map, Value, json};
use utoipa::OpenApi as _;

/// An owner name (`pvefleet_policy::site::owner`).
const OWNER: &str = "^[A-Za-z0-9._-]{1,64}$";
/// A subdomain: one RFC 1123 label (`pvefleet_policy::site::label`).
const LABEL: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// A PVE node name (`pvefleet_policy::names::node`).
const NODE: &str = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";
/// A VNet or zone name: 2 to 8, a letter first, letters and digits.
const SDN_ID: &str = "^[A-Za-z][A-Za-z0-9]{1,7}$";
/// An interface: `net0` to `net31`, or the bare index.
const INTERFACE: &str = "^(net)?([0-9]|[12][0-9]|3[01])$";
/// A dotted-quad IPv4 address.
const IPV4: &str = "((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
/// A string without a NUL (Postgres stores none; intake refuses them before any handler).
const NO_NUL: &str = "^[^\\u0000]*$";

fn vmid() -> Value {
    json!({ "type": "integer", "minimum": 100, "maximum": 999_999_999 })
}

fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}

fn text(pattern: &str) -> Value {
    json!({ "type": "string", "pattern": pattern })
}

fn param(name: &str, place: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": place, "required": required, "schema": schema, "description": description })
}

/// The schema of a path parameter, by its name.
fn path_param(name: &str) -> Value {
    match name {
        "vmid" => param(name, "path", true, vmid(), "The container's vmid (100 to 999999999)."),
        "name" => param(name, "path", true, text(INTERFACE), "The interface: net0 to net31."),
        "vnet" => param(name, "path", true, text(SDN_ID), "The VNet."),
        "owner" => param(name, "path", true, text(OWNER), "The owner."),
        "version" => param(name, "path", true, version(), "A config version: 1, 2, ..."),
        _ => param(name, "path", true, uuid(), "The id."),
    }
}

/// A config version's number, as the history numbers them.
fn version() -> Value {
    count(1, i32::MAX as u64)
}

/// The query parameters of an operation.
fn query_params(method: &str, path: &str) -> Vec<Value> {
    match (method, path) {
        ("get", "/v1/sites/{id}/config/diff") => vec![
            param("from", "query", true, version(), "The older version."),
            param(
                "to",
                "query",
                false,
                version(),
                "The newer version (default: the newest).",
            ),
        ],
        ("get", "/v1/sites") => vec![
            param(
                "owner",
                "query",
                false,
                text(OWNER),
                "Only this owner's sites (an owner's token: its own).",
            ),
            param(
                "state",
                "query",
                false,
                json!({ "type": "string", "enum": pvefleet_policy::site::STATES }),
                "Only sites in this state.",
            ),
        ],
        ("get", "/v1/dead-letters") => vec![
            param("id", "query", false, uuid(), "One dead letter."),
            param("group", "query", false, text(NO_NUL), "A group (`queue/type/fault`)."),
            param("queue", "query", false, text(NO_NUL), "The queue it was parked from."),
            param("type", "query", false, text(NO_NUL), "The message type."),
            param(
                "correlation_id",
                "query",
                false,
                uuid(),
                "The correlation id (a saga's id).",
            ),
            param(
                "since",
                "query",
                false,
                json!({ "type": "string", "format": "date-time" }),
                "Parked from this time.",
            ),
            param(
                "until",
                "query",
                false,
                json!({ "type": "string", "format": "date-time" }),
                "Parked before this time.",
            ),
            param(
                "state",
                "query",
                false,
                json!({ "type": "string", "enum": pvefleet_core::dlq::STATES }),
                "Only dead letters in this state.",
            ),
            param(
                "limit",
                "query",
                false,
                json!({ "type": "integer", "minimum": 1, "maximum": 10_000 }),
                "At most this many (default 200).",
            ),
        ],
        ("get", "/v1/notifications") => vec![
            param(
                "state",
                "query",
                false,
                json!({ "type": "string", "enum": pvefleet_notifier::store::STATES }),
                "Only deliveries in this state.",
            ),
            param(
                "owner",
                "query",
                false,
                text(OWNER),
                "Only this owner's (an owner's token: its own).",
            ),
            param(
                "event_type",
                "query",
                false,
                text(NO_NUL),
                "Only of this event type (`site.provisioned`, `resource.alert`...).",
            ),
            param(
                "before",
                "query",
                false,
                uuid(),
                "Older than this delivery (the next page).",
            ),
            param(
                "limit",
                "query",
                false,
                json!({ "type": "integer", "minimum": 1, "maximum": 1000 }),
                "At most this many (default 100).",
            ),
        ],
        ("delete", "/v1/vnets/{vnet}/bindings") => vec![
            param("vmid", "query", true, vmid(), "The container."),
            param("interface", "query", false, text(INTERFACE), "Only this interface."),
        ],
        _ => Vec::new(),
    }
}

/// A number JSON gives as an integer: intake takes `5.0` for `5`.
fn count(min: u64, max: u64) -> Value {
    json!({ "type": "integer", "minimum": min, "maximum": max })
}

/// The body of `POST /v1/sites`, with the configured plans, templates and apps.
fn site_request(s: &Settings) -> Value {
    let plans: Vec<&String> = s.saga.plans.keys().collect();
    let biggest = s.saga.plans.values().fold((1, 512, 8), |m, p| {
        (m.0.max(p.cores), m.1.max(p.memory_mb), m.2.max(p.disk_gb))
    });
    let mut apps: Vec<String> = vec!["wordpress".into(), "none".into()];
    apps.extend(s.installer.apps.keys().cloned());
    let nullable = |v: Value| json!({ "oneOf": [v, { "type": "null" }] });
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["subdomain"],
        "properties": {
            "subdomain": { "type": "string", "pattern": LABEL, "description": "An RFC 1123 label: the site is <subdomain>.<domain>." },
            "plan": nullable(json!({ "type": "string", "enum": plans })),
            "cores": nullable(count(1, u64::from(biggest.0))),
            "memory_mb": nullable(count(1, u64::from(biggest.1))),
            "disk_gb": nullable(count(1, u64::from(biggest.2))),
            "template": nullable(json!({ "type": "string", "enum": s.pve.templates })),
            "node": nullable(text(NODE)),
            "ha": { "type": "boolean" },
            "app": nullable(json!({ "type": "string", "enum": apps })),
            "owner": nullable(text(OWNER)),
            "unprivileged": { "oneOf": [{ "const": true }, { "type": "null" }], "description": "Only unprivileged containers are provisioned." },
        },
        // A plan, or all three sizes.
        "anyOf": [
            { "required": ["plan"], "properties": { "plan": { "type": "string" } } },
            {
                "required": ["cores", "memory_mb", "disk_gb"],
                "properties": { "cores": { "type": "integer" }, "memory_mb": { "type": "integer" }, "disk_gb": { "type": "integer" } }
            }
        ]
    })
}

/// A network interface request (`NetInterface`).
fn interface() -> Value {
    let s = |p: &str| text(p);
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "index": count(0, 31),
            "name": s("^[A-Za-z][A-Za-z0-9_.-]{0,15}$"),
            "bridge": s("^[A-Za-z][A-Za-z0-9_.-]{0,14}$"),
            "vnet": s(SDN_ID),
            "hwaddr": s("^[0-9A-Fa-f][02468aceACE](:[0-9A-Fa-f]{2}){5}$"),
            "ip": s(&format!("^(dhcp|manual|pool|{IPV4}/([0-9]|[12][0-9]|3[0-2]))$")),
            "ip6": s("^(dhcp|auto|manual|[0-9A-Fa-f:]+/[0-9]{1,3})$"),
            "gw": s(&format!("^{IPV4}$")),
            "gw6": { "type": "string", "format": "ipv6" },
            "tag": count(1, 4094),
            "trunks": { "type": "array", "items": count(1, 4094) },
            "firewall": { "type": "boolean" },
            "link_down": { "type": "boolean" },
            "mtu": count(64, 65_535),
            "rate": { "type": "number", "minimum": 0 }
        },
        // A bridge or a VNet, not both.
        "not": { "required": ["bridge", "vnet"] }
    })
}

/// A dead-letter selector: at least one of the fields that select.
fn selector() -> Value {
    let names = ["id", "group", "queue", "type", "correlation_id", "since", "until"];
    let or_null = |v: Value| json!({ "oneOf": [v, { "type": "null" }] });
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "id": or_null(uuid()),
            "group": or_null(text(NO_NUL)),
            "queue": or_null(text(NO_NUL)),
            "type": or_null(text(NO_NUL)),
            "correlation_id": or_null(uuid()),
            "since": or_null(json!({ "type": "string", "format": "date-time" })),
            "until": or_null(json!({ "type": "string", "format": "date-time" })),
            "state": or_null(json!({ "type": "string", "enum": pvefleet_core::dlq::STATES })),
            "limit": or_null(count(1, 10_000)),
            "dry_run": { "type": "boolean", "description": "Replay: show what would be replayed." },
            "rate": or_null(json!({ "type": "number", "minimum": 1, "maximum": 100_000, "description": "Replay: at most this many a second." }))
        },
        // At least one field that selects, and not null.
        "anyOf": names.iter().map(|n| {
            let mut not_null = Map::new();
            not_null.insert(n.to_string(), json!({ "not": { "type": "null" } }));
            json!({ "required": [n], "properties": not_null })
        }).collect::<Vec<_>>()
    })
}

/// An autoscaling policy: the keys to store, each of its type.
fn policy() -> Value {
    let percent = json!({ "type": "number", "minimum": 0, "maximum": 100 });
    let small = count(0, u64::from(u32::MAX));
    let big = count(0, u64::MAX);
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "cpu_up": percent, "cpu_down": percent, "mem_up": percent, "mem_down": percent,
            "emergency_mem": percent,
            "min_cores": small, "max_cores": small, "core_step": small,
            "min_memory_mb": big, "max_memory_mb": big, "memory_step_mb": big,
            "cooldown_secs": big, "evaluation_periods": big, "memory_headroom_mb": big,
            "dry_run": { "type": "boolean" }, "enabled": { "type": "boolean" }
        }
    })
}

/// An owner's contacts: each an address or URL, an empty string to clear it, or absent (as it
/// is). Whether an address's domain is one `lettre` takes is checked by intake (422).
fn contacts() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "email": { "oneOf": [
                { "type": "string", "maxLength": 0 },
                { "type": "string", "format": "email", "maxLength": 254 },
                { "type": "null" }
            ] },
            "webhook_url": { "oneOf": [
                { "type": "string", "maxLength": 0 },
                { "type": "string", "format": "uri", "pattern": "^https?://[^/?#\\s]+", "maxLength": 2048 },
                { "type": "null" }
            ] }
        }
    })
}

/// The request body of an operation, if it takes one.
fn request_body(method: &str, path: &str, s: &Settings) -> Option<Value> {
    let schema = match (method, path) {
        ("post", "/v1/sites") => site_request(s),
        ("post", "/v1/containers/{vmid}/interfaces") | ("patch", "/v1/containers/{vmid}/interfaces/{name}") => {
            interface()
        }
        ("post", "/v1/vnets/{vnet}/bindings") => json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["vmid"],
            "properties": {
                "vmid": vmid(),
                "interface": interface(),
                "ensure": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["zone"],
                    "properties": { "zone": text(SDN_ID), "tag": count(1, 16_777_215) }
                }
            }
        }),
        ("put", "/v1/containers/{vmid}/autoscale") => policy(),
        ("post", "/v1/sites/{id}/config/restores") => json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["version"],
            "properties": { "version": version() }
        }),
        ("put", "/v1/owners/{owner}/contacts") => contacts(),
        ("post", "/v1/notifications/test") => json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "message": {
                    "oneOf": [
                        { "type": "string", "maxLength": pvefleet_notifier::ops::TEST_MESSAGE_MAX, "pattern": NO_NUL },
                        { "type": "null" }
                    ]
                }
            }
        }),
        ("post", "/v1/dead-letters/replay" | "/v1/dead-letters/archive" | "/v1/dead-letters/purge") => selector(),
        _ => return None,
    };
    Some(json!({ "required": true, "content": { "application/json": { "schema": schema } } }))
}

const COMMON: &[(&str, &str)] = &[
    ("400", "A bad parameter or body"),
    ("401", "No token, or a bad, revoked or expired one"),
    ("403", "The token lacks the scope, or the resource is not its owner's"),
    ("404", "No such resource (or not this token's owner's)"),
    ("413", "The body is over the size limit"),
    (
        "429",
        "Over the token's request rate or the owner's sagas in flight; see Retry-After",
    ),
    ("500", "Intake failed; see its log"),
    ("503", "The database, the broker or PVE is unavailable"),
];

fn problem(why: &str) -> Value {
    json!({
        "description": why,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// The document, for intake configured with `s`.
pub fn document(s: &Settings) -> Value {
    let mut doc = serde_json::to_value(crate::ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let scopes: Vec<String> = pvefleet_policy::scopes::ALL
        .iter()
        .map(|s| format!("`{}`: {}", s.name, s.grants))
        .collect();
    doc["components"]["securitySchemes"]["bearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": format!(
            "A token from `pvefleet token create`. Scopes: {}. An owner's token reaches only its owner's resources.",
            scopes.join("; ")
        ),
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else { continue };
            if path == "/openapi.json" {
                op.insert("security".into(), json!([]));
                continue;
            }
            op.insert("security".into(), json!([{ "bearer": [] }]));
            let mut params: Vec<Value> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(path_param)
                .collect();
            params.extend(query_params(method, path));
            if params.is_empty() {
                op.remove("parameters");
            } else {
                op.insert("parameters".into(), Value::Array(params));
            }
            match request_body(method, path, s) {
                Some(body) => {
                    op.insert("requestBody".into(), body);
                }
                None => {
                    op.remove("requestBody");
                }
            }
            let responses = op
                .entry("responses")
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut();
            let Some(responses) = responses else { continue };
            for (code, why) in COMMON {
                responses.entry(code.to_string()).or_insert_with(|| problem(why));
            }
            if method == "post" && path == "/v1/sites" {
                responses.insert("415".into(), problem("The body is not application/json"));
            }
            if method == "delete" && path == "/v1/sites/{id}" {
                responses.insert("410".into(), problem("The site is deleted already"));
            }
            // An error's body is a problem, whatever the annotation said.
            for (code, r) in responses.iter_mut() {
                if code.as_str() >= "400" {
                    let why = r["description"].as_str().unwrap_or("A problem").to_string();
                    *r = problem(&why);
                }
            }
        }
    }
    doc
}

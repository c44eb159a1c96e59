//! Generates `proto/asyncapi.yaml`: AsyncAPI 3 with AMQP bindings for every exchange, routing key
//! and message, built from the registry so it cannot miss a type.

use serde_json::{Map, Value, json};

use crate::envelope::{CONTENT_TYPE_JSON, headers};
use crate::message::Kind;
use crate::registry::registry;
use crate::routing::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE, PARKED_EXCHANGE, PARKED_QUEUE};

const AMQP_BINDING_VERSION: &str = "0.3.0";

/// The AsyncAPI document as a JSON value.
pub fn document() -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();

    for m in registry() {
        let msg_id = format!("{}.v{}", m.name, m.version);
        let (exchange, ex_type) = match m.kind {
            Kind::Command => (COMMANDS_EXCHANGE, "direct"),
            Kind::Event => (EVENTS_EXCHANGE, "topic"),
        };
        let channel_id = m.name.to_string();
        channels.insert(
            channel_id.clone(),
            json!({
                "address": m.name,
                "description": format!("Routing key `{}` on exchange `{exchange}`.", m.name),
                "messages": { msg_id.clone(): { "$ref": format!("#/components/messages/{msg_id}") } },
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": { "name": exchange, "type": ex_type, "durable": true, "autoDelete": false, "vhost": "/" },
                    "bindingVersion": AMQP_BINDING_VERSION
                }}
            }),
        );
        let mut op_binding = json!({ "deliveryMode": 2, "bindingVersion": AMQP_BINDING_VERSION });
        if m.kind == Kind::Command {
            op_binding["mandatory"] = json!(true);
        }
        operations.insert(
            format!("publish.{}", m.name),
            json!({
                "action": "send",
                "summary": m.description,
                "channel": { "$ref": format!("#/channels/{channel_id}") },
                "messages": [ { "$ref": format!("#/channels/{channel_id}/messages/{msg_id}") } ],
                "bindings": { "amqp": op_binding }
            }),
        );
        let mut message = json!({
            "name": m.name,
            "title": m.name,
            "summary": m.description,
            "contentType": CONTENT_TYPE_JSON,
            "headers": { "$ref": "#/components/schemas/Headers" },
            "payload": { "$ref": format!("./schemas/{}", m.schema_file()) },
            "bindings": { "amqp": { "messageType": m.name, "bindingVersion": AMQP_BINDING_VERSION } },
            "examples": [ { "name": "golden", "payload": m.example() } ]
        });
        if let Some(f) = m.failed_event {
            message["description"] = json!(format!("A definitive failure is reported by `{f}`."));
        }
        messages.insert(msg_id, message);
    }

    channels.insert(
        "parked".into(),
        json!({
            "address": PARKED_QUEUE,
            "description": "Messages that gave up, with fault headers (pvefleet-fault-*). Bound to the fanout exchange `pvefleet.parked`, which is also every work queue's dead-letter exchange.",
            "bindings": { "amqp": {
                "is": "queue",
                "queue": { "name": PARKED_QUEUE, "durable": true, "exclusive": false, "autoDelete": false, "vhost": "/" },
                "bindingVersion": AMQP_BINDING_VERSION
            }}
        }),
    );
    channels.insert(
        "parked-exchange".into(),
        json!({
            "address": PARKED_EXCHANGE,
            "bindings": { "amqp": {
                "is": "routingKey",
                "exchange": { "name": PARKED_EXCHANGE, "type": "fanout", "durable": true, "autoDelete": false, "vhost": "/" },
                "bindingVersion": AMQP_BINDING_VERSION
            }}
        }),
    );

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "pvefleet",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Commands and events of the pvefleet worker fleet. Commands go to the direct exchange `pvefleet.commands` with routing key = type and must be published mandatory; events go to the topic exchange `pvefleet.events` with routing key = type. Every message is persistent JSON with AMQP properties message_id (UUIDv7), correlation_id, type, content_type, timestamp and app_id. Generated from shared/contracts; do not edit."
        },
        "defaultContentType": CONTENT_TYPE_JSON,
        "servers": {
            "local": { "host": "localhost:5672", "protocol": "amqp", "protocolVersion": "0.9.1", "description": "RabbitMQ 3.10 or later." }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {
                "Headers": {
                    "type": "object",
                    "properties": {
                        headers::SCHEMA_VERSION: { "type": "integer", "minimum": 1, "description": "Schema version of the body." },
                        headers::CAUSATION_ID: { "type": "string", "format": "uuid", "description": "Message id of the message that caused this one." },
                        headers::TRACEPARENT: { "type": "string", "description": "W3C trace context." },
                        headers::ATTEMPT: { "type": "integer", "minimum": 1, "description": "Delivery attempt, set by pvefleet on retry." }
                    }
                }
            },
            "messages": messages
        }
    })
}

/// The AsyncAPI document as YAML text.
pub fn yaml() -> String {
    let mut out = String::from(
        "# Generated from shared/contracts by `PVEFLEET_UPDATE_PROTO=1 cargo test -p pvefleet-contracts`. Do not edit.\n",
    );
    emit(&document(), 0, &mut out);
    out
}

/// A minimal block-style YAML emitter. Scalars are written as JSON scalars, which YAML reads
/// the same way, so no string can be misread as another type.
fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                out.push_str(&pad);
                out.push_str(&key(k));
                out.push(':');
                write_child(val, indent, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                write_child(item, indent, out);
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&scalar.to_string());
            out.push('\n');
        }
    }
}

fn write_child(val: &Value, indent: usize, out: &mut String) {
    match val {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit(val, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit(val, indent + 2, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        scalar => {
            out.push(' ');
            out.push_str(&scalar.to_string());
            out.push('\n');
        }
    }
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_message_has_a_channel_operation_and_message() {
        let doc = document();
        for m in registry() {
            assert!(doc["channels"][m.name].is_object(), "no channel for {}", m.name);
            assert!(doc["operations"][format!("publish.{}", m.name)].is_object());
            assert!(doc["components"]["messages"][format!("{}.v{}", m.name, m.version)].is_object());
        }
    }

    #[test]
    fn commands_are_documented_as_mandatory() {
        let doc = document();
        assert_eq!(
            doc["operations"]["publish.container.create"]["bindings"]["amqp"]["mandatory"],
            json!(true)
        );
        assert!(
            doc["operations"]["publish.container.created"]["bindings"]["amqp"]
                .get("mandatory")
                .is_none()
        );
    }
}

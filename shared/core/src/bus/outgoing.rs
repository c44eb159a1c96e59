//! An outgoing message: exchange, routing key, mandatory flag, AMQP properties and body.

use bytes::Bytes;
use pvefleet_contracts::envelope::{CONTENT_TYPE_JSON, DELIVERY_MODE_PERSISTENT};
use pvefleet_contracts::registry::MessageInfo;
use pvefleet_contracts::routing::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE};
use pvefleet_contracts::{Kind, Message, MessageId, TraceContext, headers};
use uuid::Uuid;

use super::envelope::Properties;

/// A message ready to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The exchange.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// Whether an unroutable publish is an error (true for commands).
    pub mandatory: bool,
    /// Properties and headers.
    pub properties: Properties,
    /// The body, byte-exact.
    pub body: Bytes,
}

/// Where a new message comes from: it inherits the correlation id and trace, and names its cause.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// The saga or operation.
    pub correlation_id: Option<Uuid>,
    /// The message that caused this one.
    pub causation_id: Option<String>,
    /// The trace to continue.
    pub trace: Option<TraceContext>,
    /// The sending service (`app_id`).
    pub app_id: Option<String>,
}

impl Outgoing {
    /// A typed message, with a fresh UUIDv7 message id and the envelope DESIGN.md §2 defines.
    pub fn message<M: Message>(msg: &M, origin: &Origin) -> Result<Self, serde_json::Error> {
        let body = serde_json::to_vec(msg)?;
        Ok(Self::envelope(M::TYPE, M::VERSION, M::KIND, body, origin))
    }

    /// A message from JSON, for tools that publish a type chosen at run time. The caller
    /// validates the body against the type's schema first.
    pub fn from_json(info: &MessageInfo, body: &serde_json::Value, origin: &Origin) -> Result<Self, serde_json::Error> {
        let body = serde_json::to_vec(body)?;
        Ok(Self::envelope(info.name, info.version, info.kind, body, origin))
    }

    fn envelope(mtype: &str, version: u32, kind: Kind, body: Vec<u8>, origin: &Origin) -> Self {
        // Exported, the origin's span is the parent as it is; else a child id stands for it.
        let trace = origin
            .trace
            .map(|t| if crate::telemetry::exporting() { t } else { t.child() })
            .unwrap_or_else(TraceContext::new_root);
        let mut props = Properties {
            message_id: Some(MessageId::new().to_string()),
            kind: Some(mtype.to_string()),
            content_type: Some(CONTENT_TYPE_JSON.to_string()),
            delivery_mode: Some(DELIVERY_MODE_PERSISTENT),
            timestamp: Some(chrono::Utc::now().timestamp().max(0) as u64),
            correlation_id: origin.correlation_id.map(|c| c.to_string()),
            app_id: origin.app_id.clone(),
            ..Properties::default()
        };
        props.set_header(headers::SCHEMA_VERSION, i64::from(version));
        props.set_header(headers::TRACEPARENT, trace.to_string());
        if let Some(c) = &origin.causation_id {
            props.set_header(headers::CAUSATION_ID, c.as_str());
        }
        let exchange = match kind {
            Kind::Command => COMMANDS_EXCHANGE,
            Kind::Event => EVENTS_EXCHANGE,
        };
        Self {
            exchange: exchange.to_string(),
            routing_key: mtype.to_string(),
            mandatory: kind == Kind::Command,
            properties: props,
            body: Bytes::from(body),
        }
    }

    /// The message id, if set.
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id.as_deref()
    }
}

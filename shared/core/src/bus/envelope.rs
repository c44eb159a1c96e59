//! A message's AMQP properties and headers in pvefleet's own terms. Everything outside the bus
//! module (the outbox, the dead-letter store, tools and tests) reads and writes these; only the
//! bus converts them to and from the AMQP client's types. Stored as JSON, they keep each
//! header's kind (a string, an integer, bytes...), so a message replayed from storage carries
//! the values it was published with.

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One header value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type", content = "value")]
pub enum HeaderValue {
    /// A boolean.
    Bool(bool),
    /// An integer of any AMQP width.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A decimal: `value` × 10^-`scale`.
    Decimal {
        /// Decimal places.
        scale: u8,
        /// The digits.
        value: u32,
    },
    /// Text (an AMQP long or short string that is UTF-8).
    Str(String),
    /// Bytes that are not text.
    Bytes(Vec<u8>),
    /// Seconds since the epoch.
    Timestamp(u64),
    /// An array.
    Array(Vec<HeaderValue>),
    /// A nested table.
    Table(BTreeMap<String, HeaderValue>),
    /// No value.
    Void,
}

impl HeaderValue {
    /// The value as text, whatever string encoding it came in; integers as their digits.
    pub fn as_text(&self) -> Option<String> {
        match self {
            HeaderValue::Str(s) => Some(s.clone()),
            HeaderValue::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            HeaderValue::Int(i) => Some(i.to_string()),
            HeaderValue::Timestamp(t) => Some(t.to_string()),
            _ => None,
        }
    }

    /// The value as an integer, accepting any width or a decimal string.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(i) => Some(*i),
            HeaderValue::Timestamp(t) => i64::try_from(*t).ok(),
            HeaderValue::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The value as plain JSON, the way it was published: strings, numbers, booleans, arrays
    /// and objects; bytes that are not text as `{"bytes": "<base64>"}`.
    pub fn to_plain(&self) -> Value {
        use base64::Engine as _;
        match self {
            HeaderValue::Bool(b) => json!(b),
            HeaderValue::Int(i) => json!(i),
            HeaderValue::Float(f) => json!(f),
            HeaderValue::Decimal { scale, value } => json!(f64::from(*value) / 10f64.powi(i32::from(*scale))),
            HeaderValue::Str(s) => json!(s),
            HeaderValue::Bytes(b) => json!({ "bytes": base64::engine::general_purpose::STANDARD.encode(b) }),
            HeaderValue::Timestamp(t) => json!(t),
            HeaderValue::Array(a) => Value::Array(a.iter().map(HeaderValue::to_plain).collect()),
            HeaderValue::Table(t) => Value::Object(t.iter().map(|(k, v)| (k.clone(), v.to_plain())).collect()),
            HeaderValue::Void => Value::Null,
        }
    }

    fn from_amqp(v: &AMQPValue) -> Self {
        let text = |b: &[u8]| match std::str::from_utf8(b) {
            Ok(s) => HeaderValue::Str(s.to_string()),
            Err(_) => HeaderValue::Bytes(b.to_vec()),
        };
        match v {
            AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
            AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
            AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
            AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
            AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
            AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
            AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
            AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
            AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
            AMQPValue::Double(f) => HeaderValue::Float(*f),
            AMQPValue::DecimalValue(d) => HeaderValue::Decimal {
                scale: d.scale,
                value: d.value,
            },
            AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_string()),
            AMQPValue::LongString(s) => text(s.as_bytes()),
            AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
            AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
            AMQPValue::FieldArray(a) => HeaderValue::Array(a.as_slice().iter().map(HeaderValue::from_amqp).collect()),
            AMQPValue::FieldTable(t) => HeaderValue::Table(table_from_amqp(t)),
            AMQPValue::Void => HeaderValue::Void,
        }
    }

    fn to_amqp(&self) -> AMQPValue {
        match self {
            HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
            HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
            HeaderValue::Float(f) => AMQPValue::Double(*f),
            HeaderValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
                scale: *scale,
                value: *value,
            }),
            HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
            HeaderValue::Bytes(b) => AMQPValue::LongString(LongString::from(b.clone())),
            HeaderValue::Timestamp(t) => AMQPValue::Timestamp(*t),
            HeaderValue::Array(a) => {
                AMQPValue::FieldArray(FieldArray::from(a.iter().map(HeaderValue::to_amqp).collect::<Vec<_>>()))
            }
            HeaderValue::Table(t) => AMQPValue::FieldTable(table_to_amqp(t)),
            HeaderValue::Void => AMQPValue::Void,
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_string())
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}

impl From<i64> for HeaderValue {
    fn from(i: i64) -> Self {
        HeaderValue::Int(i)
    }
}

fn table_from_amqp(t: &FieldTable) -> BTreeMap<String, HeaderValue> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), HeaderValue::from_amqp(v)))
        .collect()
}

fn table_to_amqp(t: &BTreeMap<String, HeaderValue>) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in t {
        out.insert(ShortString::from(k.as_str()), v.to_amqp());
    }
    out
}

/// The format marker of stored properties (`"v": 1`); stored properties without it are the
/// AMQP client's own serialization, which older versions wrote.
const FORMAT: u32 = 1;

fn format_version() -> u32 {
    FORMAT
}

/// A message's properties.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    /// The format marker.
    #[serde(default = "format_version")]
    pub v: u32,
    /// `message_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `correlation_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// `type`: the message type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `content_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `content_encoding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `delivery_mode` (2: persistent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_mode: Option<u8>,
    /// `priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// `timestamp`, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// `app_id`: the sending service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// `user_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `reply_to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `expiration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderValue>,
}

impl Properties {
    /// A header as text, whatever string encoding the publisher used.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(HeaderValue::as_text)
    }

    /// A header as an integer, accepting any integer width or a decimal string.
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        self.headers.get(name).and_then(HeaderValue::as_int)
    }

    /// Sets a header (replacing any earlier value).
    pub fn set_header(&mut self, name: &str, value: impl Into<HeaderValue>) {
        self.headers.insert(name.to_string(), value.into());
    }

    /// The properties with a header set.
    pub fn with_header(mut self, name: &str, value: impl Into<HeaderValue>) -> Self {
        self.set_header(name, value);
        self
    }

    /// The properties without the headers named.
    pub fn without_headers(mut self, names: &[&str]) -> Self {
        for n in names {
            self.headers.remove(*n);
        }
        self
    }

    /// The headers as plain JSON, the way they were published (see [`HeaderValue::to_plain`]).
    pub fn plain_headers(&self) -> Value {
        Value::Object(self.headers.iter().map(|(k, v)| (k.clone(), v.to_plain())).collect())
    }

    /// Properties from their stored JSON: this format, or the AMQP client's own serialization
    /// that older versions stored.
    pub fn from_stored(v: &Value) -> Result<Self, serde_json::Error> {
        if v.get("v").is_some() {
            return serde_json::from_value(v.clone());
        }
        let legacy: BasicProperties = serde_json::from_value(v.clone())?;
        Ok(Self::from(&legacy))
    }

    /// The JSON to store.
    pub fn to_stored(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl From<&BasicProperties> for Properties {
    fn from(p: &BasicProperties) -> Self {
        let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_string());
        Self {
            v: FORMAT,
            message_id: s(p.message_id()),
            correlation_id: s(p.correlation_id()),
            kind: s(p.kind()),
            content_type: s(p.content_type()),
            content_encoding: s(p.content_encoding()),
            delivery_mode: *p.delivery_mode(),
            priority: *p.priority(),
            timestamp: *p.timestamp(),
            app_id: s(p.app_id()),
            user_id: s(p.user_id()),
            reply_to: s(p.reply_to()),
            expiration: s(p.expiration()),
            headers: p.headers().as_ref().map(table_from_amqp).unwrap_or_default(),
        }
    }
}

impl From<&Properties> for BasicProperties {
    fn from(p: &Properties) -> Self {
        let mut out = BasicProperties::default();
        let short = |s: &String| ShortString::from(s.as_str());
        if let Some(v) = &p.message_id {
            out = out.with_message_id(short(v));
        }
        if let Some(v) = &p.correlation_id {
            out = out.with_correlation_id(short(v));
        }
        if let Some(v) = &p.kind {
            out = out.with_type(short(v));
        }
        if let Some(v) = &p.content_type {
            out = out.with_content_type(short(v));
        }
        if let Some(v) = &p.content_encoding {
            out = out.with_content_encoding(short(v));
        }
        if let Some(v) = p.delivery_mode {
            out = out.with_delivery_mode(v);
        }
        if let Some(v) = p.priority {
            out = out.with_priority(v);
        }
        if let Some(v) = p.timestamp {
            out = out.with_timestamp(v);
        }
        if let Some(v) = &p.app_id {
            out = out.with_app_id(short(v));
        }
        if let Some(v) = &p.user_id {
            out = out.with_user_id(short(v));
        }
        if let Some(v) = &p.reply_to {
            out = out.with_reply_to(short(v));
        }
        if let Some(v) = &p.expiration {
            out = out.with_expiration(short(v));
        }
        if !p.headers.is_empty() {
            out = out.with_headers(table_to_amqp(&p.headers));
        }
        out
    }
}

/// The broker's `x-death` header of a dead-lettered message as plain JSON: an array, newest
/// death first, each with `queue`, `reason`, `count`, `exchange`, `routing-keys`, `time`.
pub fn x_death(p: &Properties) -> Option<Value> {
    match p.headers.get("x-death")? {
        v @ HeaderValue::Array(_) => Some(v.to_plain()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_header_survives_storage_and_shows_as_published() {
        let mut p = Properties {
            message_id: Some("m1".into()),
            kind: Some("container.create".into()),
            delivery_mode: Some(2),
            ..Properties::default()
        };
        p.set_header("s", "text");
        p.set_header("n", 42i64);
        p.headers.insert("b".into(), HeaderValue::Bool(true));
        p.headers
            .insert("bin".into(), HeaderValue::Bytes(vec![0, 159, 146, 150]));
        p.headers.insert(
            "table".into(),
            HeaderValue::Table(BTreeMap::from([("inner".into(), HeaderValue::Int(1))])),
        );
        p.headers.insert(
            "list".into(),
            HeaderValue::Array(vec![HeaderValue::Str("a".into()), HeaderValue::Int(2)]),
        );
        let stored = p.to_stored();
        let back = Properties::from_stored(&stored).unwrap();
        assert_eq!(back, p);
        let amqp = BasicProperties::from(&p);
        let round = Properties::from(&amqp);
        assert_eq!(round.header_str("s").as_deref(), Some("text"));
        assert_eq!(round.header_i64("n"), Some(42));
        assert_eq!(round.headers["bin"], HeaderValue::Bytes(vec![0, 159, 146, 150]));
        assert_eq!(
            back.plain_headers(),
            json!({ "s": "text", "n": 42, "b": true, "bin": { "bytes": "AJ+Slg==" },
                    "table": { "inner": 1 }, "list": ["a", 2] })
        );
    }

    #[test]
    fn properties_stored_by_older_versions_still_read() {
        let old = BasicProperties::default()
            .with_message_id("m2".into())
            .with_type("ha.enable".into())
            .with_headers(table_to_amqp(&BTreeMap::from([(
                "pvefleet-attempt".to_string(),
                HeaderValue::Int(3),
            )])));
        let stored = serde_json::to_value(&old).unwrap();
        let p = Properties::from_stored(&stored).unwrap();
        assert_eq!(p.message_id.as_deref(), Some("m2"));
        assert_eq!(p.kind.as_deref(), Some("ha.enable"));
        assert_eq!(p.header_i64("pvefleet-attempt"), Some(3));
    }
}

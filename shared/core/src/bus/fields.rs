//! Reading and writing AMQP header values, which arrive in many integer and string encodings.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Reads a header as text, whatever string encoding the publisher used.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let table = props.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        other => int_of(other).map(|i| i.to_string()),
    }
}

/// Reads a header as an integer, accepting any integer width or a decimal string.
pub fn header_i64(props: &BasicProperties, name: &str) -> Option<i64> {
    let table = props.headers().as_ref()?;
    let v = table.inner().get(name)?;
    int_of(v).or_else(|| match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    })
}

fn int_of(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => i64::from(*i),
        AMQPValue::ShortShortUInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::ShortUInt(i) => i64::from(*i),
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::LongUInt(i) => i64::from(*i),
        AMQPValue::LongLongInt(i) => *i,
        AMQPValue::Timestamp(i) => i64::try_from(*i).ok()?,
        _ => return None,
    })
}

/// A string header value.
pub fn text(value: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

/// Returns the properties with one header set (replacing any earlier value).
pub fn with_header(props: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    table.insert(ShortString::from(name), value);
    props.with_headers(table)
}

/// Returns the properties with several headers set.
pub fn with_headers(props: BasicProperties, values: Vec<(&str, AMQPValue)>) -> BasicProperties {
    let mut table: FieldTable = props.headers().clone().unwrap_or_default();
    for (name, value) in values {
        table.insert(ShortString::from(name), value);
    }
    props.with_headers(table)
}

/// Returns the properties without the headers named.
pub fn without_headers(props: BasicProperties, names: &[&str]) -> BasicProperties {
    let Some(mut table) = props.headers().clone() else {
        return props;
    };
    let mut inner = table.inner().clone();
    for name in names {
        inner.remove(&ShortString::from(*name));
    }
    table = FieldTable::from(inner);
    props.with_headers(table)
}

/// The properties' `type`, if set.
pub fn message_type(props: &BasicProperties) -> Option<String> {
    props.kind().as_ref().map(|s| s.as_str().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn integer_headers_read_in_every_width_and_as_text() {
        for v in [
            AMQPValue::ShortShortUInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongLongInt(3),
            text("3"),
        ] {
            let p = with_header(BasicProperties::default(), "n", v);
            assert_eq!(header_i64(&p, "n"), Some(3));
        }
        assert_eq!(header_i64(&BasicProperties::default(), "n"), None);
    }

    #[test]
    fn setting_a_header_keeps_the_others() {
        let p = with_header(BasicProperties::default(), "a", text("1"));
        let p = with_header(p, "b", text("2"));
        let p = with_header(p, "a", text("3"));
        assert_eq!(header_str(&p, "a").as_deref(), Some("3"));
        assert_eq!(header_str(&p, "b").as_deref(), Some("2"));
    }
}

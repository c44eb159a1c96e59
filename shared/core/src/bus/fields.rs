//! Reading and writing AMQP header values, which arrive in many integer and string encodings.

use lapin::BasicProperties;
use lapin::types::AMQPValue;

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

/// The properties' `type`, if set.
pub fn message_type(props: &BasicProperties) -> Option<String> {
    props.kind().as_ref().map(|s| s.as_str().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use lapin::types::{FieldTable, LongString};

    #[test]
    fn integer_headers_read_in_every_width_and_as_text() {
        for v in [
            AMQPValue::ShortShortUInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongLongInt(3),
            AMQPValue::LongString(LongString::from(b"3".to_vec())),
        ] {
            let mut t = FieldTable::default();
            t.insert("n".into(), v);
            let p = BasicProperties::default().with_headers(t);
            assert_eq!(header_i64(&p, "n"), Some(3));
        }
        assert_eq!(header_i64(&BasicProperties::default(), "n"), None);
    }
}

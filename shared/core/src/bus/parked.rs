//! The identity of a parked copy. The runner stamps every copy it parks with a park id; the
//! dead-letter store keys on it. A redelivery of the same parking (a keeper killed before its
//! ack, or a runner that parks again after its ack was lost) carries the same id, so it is
//! stored once; two different messages never share one, whatever their `message_id` says.

use pvefleet_contracts::headers;
use uuid::Uuid;

use super::envelope::Properties;

/// The park id of the copy of a message parked from `queue` at `attempt`: derived from the
/// queue, the message id, the attempt, the replay generation and the body when the message has
/// a `message_id`, so the same parking always gets the same id; a fresh one when it has none
/// (nothing then tells two such messages apart, so none may be taken for another).
pub fn park_id(queue: &str, props: &Properties, attempt: i64, body: &[u8]) -> Uuid {
    let message_id = props.message_id.as_deref().unwrap_or_default();
    if message_id.is_empty() {
        return Uuid::now_v7();
    }
    let generation = props.header_i64(headers::replay::COUNT).unwrap_or(0);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Length-prefixed, so no two different inputs run together into the same bytes.
    for part in [queue.as_bytes(), message_id.as_bytes()] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.update(&attempt.to_be_bytes());
    ctx.update(&generation.to_be_bytes());
    ctx.update(body);
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    Uuid::new_v8(bytes)
}

/// The park id a parked copy carries, when it carries a readable one.
pub fn stamped_park_id(props: &Properties) -> Option<Uuid> {
    props.header_str(headers::fault::PARK_ID).and_then(|s| s.parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn props(id: Option<&str>) -> Properties {
        Properties {
            message_id: id.map(str::to_string),
            ..Properties::default()
        }
    }

    #[test]
    fn the_same_parking_gets_the_same_id_and_any_other_another() {
        let a = park_id("pvefleet.saga", &props(Some("m1")), 3, b"{}");
        assert_eq!(a, park_id("pvefleet.saga", &props(Some("m1")), 3, b"{}"));
        for other in [
            park_id("pvefleet.ha", &props(Some("m1")), 3, b"{}"),
            park_id("pvefleet.saga", &props(Some("m2")), 3, b"{}"),
            park_id("pvefleet.saga", &props(Some("m1")), 4, b"{}"),
            park_id("pvefleet.saga", &props(Some("m1")), 3, b"{ }"),
            park_id(
                "pvefleet.saga",
                &props(Some("m1")).with_header(headers::replay::COUNT, 1i64),
                3,
                b"{}",
            ),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn messages_without_an_id_never_share_one() {
        for id in [None, Some("")] {
            let a = park_id("q", &props(id), 1, b"same");
            let b = park_id("q", &props(id), 1, b"same");
            assert_ne!(a, b);
        }
    }
}

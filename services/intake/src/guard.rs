//! Input every route refuses before a handler sees it: a NUL or a byte that is not UTF-8 in a
//! query parameter, a NUL in any string or key of a JSON body, and a body over the size limit.
//! Postgres stores neither a NUL nor invalid UTF-8, so such a value would otherwise reach the
//! database and fail there; here it is a 400 naming the field, and nothing is written.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::problem::Problem;

/// The largest request body intake reads.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The middleware: checks the query, then (for a JSON body) the body, then calls the route.
pub async fn check_input(req: Request, next: Next) -> Response {
    if let Some(q) = req.uri().query()
        && let Err(p) = check_query(q)
    {
        return p.into_response();
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("The body is over the limit of {MAX_BODY_BYTES} bytes."),
            )
            .into_response();
        }
    };
    if json && let Err(p) = check_json(&bytes) {
        return p.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn bad(field: &str, detail: String) -> Problem {
    Problem::field(StatusCode::BAD_REQUEST, "invalid", field, detail)
}

/// A NUL, or bytes that are not UTF-8, in a query parameter's name or value.
fn check_query(q: &str) -> Result<(), Problem> {
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key);
        let name = String::from_utf8_lossy(&key).replace('\0', "\u{FFFD}");
        if key.contains(&0) || std::str::from_utf8(&key).is_err() {
            return Err(bad(
                &name,
                "A query parameter's name holds a NUL or is not UTF-8.".into(),
            ));
        }
        let value = decode(raw_value);
        if value.contains(&0) {
            return Err(bad(&name, format!("Query parameter '{name}' holds a NUL byte.")));
        }
        if std::str::from_utf8(&value).is_err() {
            return Err(bad(&name, format!("Query parameter '{name}' is not UTF-8.")));
        }
    }
    Ok(())
}

/// Percent-decodes a query component to its raw bytes (`+` is a space, as in forms).
fn decode(s: &str) -> Vec<u8> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).collect()
}

/// A NUL in any string or key of a JSON body, named by its path (`interface.name`, `tags.2`).
/// A body that is not JSON is left to the route, which says why.
fn check_json(bytes: &Bytes) -> Result<(), Problem> {
    if !bytes.contains(&0) && !bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return Ok(());
    }
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    match find_nul(&v, String::new()) {
        Some(path) => {
            let field = if path.is_empty() { "body".to_string() } else { path };
            Err(bad(
                &field,
                format!("'{field}' holds a NUL character, which cannot be stored."),
            ))
        }
        None => Ok(()),
    }
}

fn find_nul(v: &Value, at: String) -> Option<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        Value::String(s) => s.contains('\0').then_some(at),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| find_nul(x, join(&i.to_string()))),
        Value::Object(o) => o.iter().find_map(|(k, x)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\u{FFFD}")))
            } else {
                find_nul(x, join(k))
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_or_bad_utf8_in_the_query_names_the_parameter() {
        assert!(check_query("owner=alice&state=active").is_ok());
        assert_eq!(check_query("owner=a%00b").unwrap_err().field.as_deref(), Some("/owner"));
        assert_eq!(
            check_query("x=1&state=%00").unwrap_err().field.as_deref(),
            Some("/state")
        );
        assert_eq!(check_query("owner=%FF").unwrap_err().field.as_deref(), Some("/owner"));
        assert!(check_query("owner=100%25").is_ok());
        assert!(check_query("owner=%").is_ok());
    }

    #[test]
    fn a_nul_in_a_json_body_names_its_path() {
        let body = Bytes::from_static(br#"{"owner":"a\u0000b"}"#);
        assert_eq!(check_json(&body).unwrap_err().field.as_deref(), Some("/owner"));
        let body = Bytes::from_static(br#"{"interface":{"name":"eth\u00000"}}"#);
        assert_eq!(check_json(&body).unwrap_err().field.as_deref(), Some("/interface/name"));
        let body = Bytes::from_static(br#"{"tags":["a","\u0000"]}"#);
        assert_eq!(check_json(&body).unwrap_err().field.as_deref(), Some("/tags/1"));
        assert!(check_json(&Bytes::from_static(br#"{"owner":"alice"}"#)).is_ok());
    }
}

//! RFC 9457 problem details: every 4xx and 5xx of intake is `application/problem+json`.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// A problem: the kind, the status, a sentence, and the field at fault when there is one.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct Problem {
    /// A URI naming the kind: `urn:pvefleet:problem:<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short title.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// The request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before trying again (the `Retry-After` header of a 429 or 503).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `kind` with a sentence.
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:pvefleet:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: shorten(&detail.into()),
            field: None,
            retry_after: None,
        }
    }

    /// A problem naming the request field at fault, as a JSON pointer (RFC 6901): the body's
    /// `interface.name` is `/interface/name`, `tags.2` is `/tags/2`, a path or query
    /// parameter `vmid` is `/vmid`, and the whole body (`body`) is the empty pointer.
    pub fn field(status: StatusCode, kind: &str, field: &str, detail: impl Into<String>) -> Self {
        let mut p = Self::new(status, kind, detail);
        p.field = Some(shorten(&pointer(field)));
        p
    }
}

/// A field's path (`interface.name`, `tags.2`, or `body` for the whole) as a JSON pointer.
pub fn pointer(field: &str) -> String {
    if field.starts_with('/') {
        return field.to_string();
    }
    if field == "body" || field.is_empty() {
        return String::new();
    }
    field
        .split('.')
        .map(|seg| format!("/{}", seg.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// The longest quoted value a detail repeats, in characters; the rest is cut.
const SHOWN: usize = 32;
/// The longest detail.
const DETAIL_MAX: usize = 400;

/// A detail that repeats no more of a request's values than a short prefix: each stretch in
/// double quotes or backquotes (how serde quotes values and names) longer than `SHOWN` is
/// cut, and the whole to `DETAIL_MAX` characters. The policy's own messages cut the values
/// they quote already (`pvefleet_policy::names::shown`).
pub fn shorten(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len().min(DETAIL_MAX));
    let mut quoted = None::<usize>;
    for c in detail.chars() {
        match (c, quoted.as_mut()) {
            ('"' | '`', Some(_)) => {
                quoted = None;
                out.push(c);
            }
            ('"' | '`', None) => {
                quoted = Some(0);
                out.push(c);
            }
            (_, Some(n)) => {
                *n += 1;
                if *n <= SHOWN {
                    out.push(c);
                } else if *n == SHOWN + 1 {
                    out.push('…');
                }
            }
            (_, None) => out.push(c),
        }
        if out.chars().count() >= DETAIL_MAX {
            out.push('…');
            break;
        }
    }
    out
}

/// A JSON body as `T`, or a 400 naming the member at fault (`field`): the missing or unknown
/// one, or the one of the wrong type. `what` names the request (`site request`).
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Problem> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "body",
            format!("The body is not a valid {what}: {e}"),
        )
    })?;
    whole_numbers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde names a missing or unknown member in backquotes; that member is at fault.
        let named = inner
            .strip_prefix("missing field `")
            .or_else(|| inner.strip_prefix("unknown field `"))
            .and_then(|rest| rest.split('`').next());
        let at = if path == "." { String::new() } else { path };
        let field = match (named, at.is_empty()) {
            (Some(n), true) => n.to_string(),
            (Some(n), false) if inner.starts_with("missing") => format!("{at}.{n}"),
            (Some(_), false) | (None, false) => at,
            (None, true) => "body".to_string(),
        };
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            &field,
            format!("The body is not a valid {what}: {inner}"),
        )
    })
}

/// The query string as `T`, or a 400 naming the parameter at fault.
pub fn parse_query<T: serde::de::DeserializeOwned>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Problem> {
    q.map(|axum::extract::Query(v)| v).map_err(|e| {
        let text = e.body_text();
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.contains("missing field") || text.contains("unknown field"))
            .or_else(|| {
                text.split(": ")
                    .nth(1)
                    .and_then(|t| t.split(':').next())
                    .filter(|f| !f.contains(' '))
            })
            .unwrap_or("query")
            .to_string();
        Problem::field(StatusCode::BAD_REQUEST, "invalid-query", &field, text)
    })
}

/// Numbers JSON writes with a fraction of zero (`5.0`) as the integers they are, so a count
/// sent as `5.0` is taken as `5`, as JSON Schema's `integer` says.
pub fn whole_numbers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                // Below 2^64 (`u64::MAX as f64` is 2^64 itself).
                if (0.0..u64::MAX as f64).contains(&f) {
                    *v = serde_json::Value::from(f as u64);
                } else if (i64::MIN as f64..0.0).contains(&f) {
                    *v = serde_json::Value::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(whole_numbers),
        serde_json::Value::Object(o) => o.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// A timestamp parameter in RFC 3339, as UTC (Postgres takes offsets up to 15:59 only), or a
/// 400 naming it.
pub fn timestamp(field: &str, value: Option<&str>) -> Result<Option<String>, Problem> {
    let Some(v) = value else { return Ok(None) };
    match chrono::DateTime::parse_from_rfc3339(v) {
        Ok(t) => Ok(Some(t.with_timezone(&chrono::Utc).to_rfc3339())),
        Err(_) => Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            field,
            format!(
                "'{}' is not an RFC 3339 time (2026-12-04T10:00:00Z)",
                v.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// A value that must be one of `allowed`, or a 400 naming the field.
pub fn one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), Problem> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            field,
            format!(
                "'{}' is not one of {}",
                v.chars().take(40).collect::<String>(),
                allowed.join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_cut_to_a_prefix() {
        let long = format!("invalid type: string \"{}\", expected u32", "x".repeat(1_000_000));
        let short = shorten(&long);
        assert!(short.len() < 100, "{short}");
        assert!(short.contains(&format!("\"{}…\"", "x".repeat(SHOWN))), "{short}");
        assert_eq!(shorten("it isn't cut"), "it isn't cut");
        assert_eq!(shorten("a \"short\" one"), "a \"short\" one");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        name: String,
        size: Option<u32>,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        bridge: String,
    }

    #[test]
    fn a_bad_body_names_its_member() {
        let field = |b: &str| parse_body::<Req>(b.as_bytes(), "request").unwrap_err().field;
        assert_eq!(field("{}").as_deref(), Some("/name"));
        assert_eq!(field(r#"{"name":"a","color":1}"#).as_deref(), Some("/color"));
        assert_eq!(field(r#"{"name":"a","size":"big"}"#).as_deref(), Some("/size"));
        assert_eq!(field(r#"{"name":"a","inner":{}}"#).as_deref(), Some("/inner/bridge"));
        assert_eq!(field("not json").as_deref(), Some(""));
        assert_eq!(pointer("a/b.c~d"), "/a~1b/c~0d");
    }
}

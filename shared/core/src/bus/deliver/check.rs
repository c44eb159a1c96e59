//! The checks a delivery passes before any handler sees it (content type, type, version,
//! envelope, size, JSON, schema), and parking one that fails them.

use lapin::message::Delivery;
use pvefleet_contracts::envelope::CONTENT_TYPE_JSON;
use pvefleet_contracts::headers;
use serde_json::Value;

use super::Meta;
use super::settle::{park, retry_outage};
use crate::bus::fields::{header_i64, message_type};
use crate::bus::handler::Route;
use crate::bus::runner::Shared;

/// Why a message is parked without reaching a handler.
pub(in crate::bus) struct Rejection {
    pub class: &'static str,
    pub reason: String,
    /// The route's notice for a schema-invalid body, with that body.
    pub notice: Option<(std::sync::Arc<crate::bus::handler::InvalidFn>, Value)>,
}

fn reject(class: &'static str, reason: String) -> Rejection {
    Rejection {
        class,
        reason,
        notice: None,
    }
}

/// Parks a rejected delivery; first publishes the route's notice for a schema-invalid body,
/// and if that publish fails, retries the message later instead of parking it silently.
pub(in crate::bus) async fn park_rejected(shared: &Shared, d: &Delivery, meta: &Meta, r: Rejection) {
    if let Some((notice, body)) = &r.notice {
        let origin = crate::bus::outgoing::Origin {
            correlation_id: meta.correlation_id,
            causation_id: Some(meta.message_id.clone()),
            trace: Some(meta.trace),
            app_id: Some(shared.spec.name.clone()),
        };
        if let Some(out) = notice(body, &r.reason, &origin)
            && let Err(e) = shared.deps.publisher.publish(&out).await
        {
            let error = format!("cannot publish the rejection notice: {e}");
            return retry_outage(shared, d, &meta.mtype, meta.attempt, &error).await;
        }
    }
    park(shared, d, r.class, &r.reason, meta.attempt).await;
}

impl Shared {
    /// Checks the envelope and body before any handler sees the message.
    pub(in crate::bus) fn check<'r>(&'r self, d: &Delivery) -> Result<(&'r Route, Value), Rejection> {
        let props = &d.properties;
        match props.content_type().as_ref().map(|c| c.as_str()) {
            None => {
                return Err(reject(
                    "content-type",
                    format!("message has no content_type; expected {CONTENT_TYPE_JSON}"),
                ));
            }
            Some(ct) => {
                let base = ct.split(';').next().unwrap_or_default().trim();
                if !base.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
                    return Err(reject(
                        "content-type",
                        format!("content_type is '{ct}'; expected {CONTENT_TYPE_JSON}"),
                    ));
                }
            }
        }
        let Some(mtype) = message_type(props) else {
            return Err(reject("unknown-type", "message has no type property".into()));
        };
        let Some(route) = self.router.routes.get(mtype.as_str()) else {
            return Err(reject(
                "unknown-type",
                format!(
                    "type '{mtype}' is not handled on queue {} (it handles: {})",
                    self.spec.queue,
                    self.router.types().join(", ")
                ),
            ));
        };
        if let Some(v) = header_i64(props, headers::SCHEMA_VERSION)
            && v != i64::from(route.info.version)
        {
            return Err(reject(
                "unknown-type",
                format!(
                    "version {v} of '{mtype}' is not supported; this consumer reads v{}",
                    route.info.version
                ),
            ));
        }
        // From here the route is known: a body it cannot read gets its notice too, so an
        // upstream publisher learns why (with no fields to name).
        let refused = |class: &'static str, reason: String| Rejection {
            class,
            reason,
            notice: route.on_invalid.clone().map(|n| (n, Value::Null)),
        };
        if props.message_id().as_ref().is_none_or(|m| m.as_str().is_empty()) {
            return Err(refused("invalid-envelope", "message has no message_id".into()));
        }
        if d.data.is_empty() {
            return Err(refused("decode", "body is empty".into()));
        }
        if d.data.len() > self.spec.max_body_bytes {
            return Err(refused(
                "too-large",
                format!(
                    "body is {} bytes; the limit is {}",
                    d.data.len(),
                    self.spec.max_body_bytes
                ),
            ));
        }
        let text = std::str::from_utf8(&d.data).map_err(|e| {
            refused(
                "decode",
                format!("body is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            )
        })?;
        let body: Value =
            serde_json::from_str(text).map_err(|e| refused("decode", format!("body is not JSON: {e}")))?;
        if let Some(validator) = route.validator.as_ref().filter(|v| !v.is_valid(&body)) {
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .take(5)
                .map(|e| {
                    let path = e.instance_path().to_string();
                    format!("{}: {e}", if path.is_empty() { "/".to_string() } else { path })
                })
                .collect();
            if !errors.is_empty() {
                let mut r = reject(
                    "invalid",
                    format!(
                        "body does not match {}: {}",
                        route.info.schema_file(),
                        errors.join("; ")
                    ),
                );
                r.notice = route.on_invalid.clone().map(|n| (n, body));
                return Err(r);
            }
        }
        Ok((route, body))
    }
}

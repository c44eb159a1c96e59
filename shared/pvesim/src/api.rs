//! PVE-shaped answers: the error type, `{data}` envelopes, gzip, and request parameters.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A PVE-shaped failure.
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub errors: Option<serde_json::Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            errors: None,
        }
    }

    pub fn params(errors: Vec<(String, String)>) -> Self {
        let map = errors.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        Self {
            status: StatusCode::BAD_REQUEST,
            message: "Parameter verification failed.".into(),
            errors: Some(map),
        }
    }
}

impl ApiError {
    /// PVE before libpve-http-server 5.2 sent the message only as the reason phrase.
    pub(crate) fn into_reason_phrase(self) -> Response {
        let mut resp = (self.status, axum::body::Body::empty()).into_response();
        let phrase = self.message.replace(['\r', '\n'], " ");
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(phrase.trim().as_bytes().to_vec()) {
            resp.extensions_mut().insert(p);
        }
        resp
    }
}

/// PVE gzips answers longer than this for clients that accept gzip.
pub(crate) const GZIP_OVER: usize = 1024;

/// Gzips a body (fast level: the simulator answers, it does not archive).
pub(crate) fn gzip(body: &[u8]) -> axum::body::Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    match enc.write_all(body).and_then(|()| enc.finish()) {
        Ok(v) => v.into(),
        Err(_) => axum::body::Bytes::copy_from_slice(body),
    }
}

/// The value of a request parameter.
pub(crate) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "data": null, "message": format!("{}\n", self.message) });
        if let Some(e) = self.errors {
            body["errors"] = Value::Object(e);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

pub(crate) fn ok(data: Value) -> Response {
    axum::Json(json!({ "data": data })).into_response()
}

//! Extractors whose failures are problem+json: a strict JSON body and
//! validated path ids. An id that is not a valid id is a 400 (and never
//! reaches storage); a valid id that does not exist is a 404 later.
//!
//! Bodies follow JSON Schema's reading of numbers, as `api/openapi.yaml`
//! does: a whole-number float (`682.0`, `1e3`) is an integer, so a field the
//! contract calls `integer` takes it. [`non_null`] keeps `null` out of
//! optional fields whose contract does not allow it.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{request::Parts, StatusCode};
use cutpoint_core::{CheckpointId, JobId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::{ApiError, ErrorKind};

/// A JSON body; an empty body is `{}`-less `None` only via [`OptionalJson`].
pub struct ApiJson<T>(pub T);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if let Some(ct) = req.headers().get(axum::http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(ApiError::invalid(format!(
                "content-type must be application/json, got {ct:?}"
            )));
        }
    }
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorKind::TooLarge, r.body_text())
        } else {
            ApiError::invalid(r.body_text())
        }
    })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))?;
    integers_as_integers(&mut value);
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("invalid body: {e}")))
}

/// Rewrites every whole-number float that fits an `i64` or `u64` as that
/// integer, in place (`682.0` → `682`; `0.5` and `1e20` stay floats).
pub fn integers_as_integers(value: &mut Value) {
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0) else {
                return;
            };
            if (0.0..TWO_POW_64).contains(&f) {
                *value = Value::from(f as u64);
            } else if (-TWO_POW_63..0.0).contains(&f) {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integers_as_integers),
        _ => {}
    }
}

/// For an optional field that may be absent but not `null`: use with
/// `#[serde(default, deserialize_with = "crate::extract::non_null")]`.
pub fn non_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(d)?;
    if value.is_null() {
        return Err(serde::de::Error::custom(
            "null is not allowed here (leave the field out instead)",
        ));
    }
    T::deserialize(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("a JSON body is required"));
        }
        parse(&bytes).map(ApiJson)
    }
}

/// A JSON body that may be empty.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(OptionalJson(None));
        }
        parse(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// `{job_id}` of the path, validated.
pub struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw): Path<Vec<String>> = Path::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let job = raw
            .first()
            .ok_or_else(|| ApiError::invalid("missing job id"))?;
        JobId::new(job.as_str())
            .map(JobPath)
            .map_err(|e| ApiError::invalid(e.to_string()))
    }
}

/// `{job_id}` and `{checkpoint_id}` of the path, validated.
pub struct CheckpointPath(pub JobId, pub CheckpointId);

impl<S: Send + Sync> FromRequestParts<S> for CheckpointPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw): Path<Vec<String>> = Path::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let (Some(job), Some(id)) = (raw.first(), raw.get(1)) else {
            return Err(ApiError::invalid("missing job or checkpoint id"));
        };
        let job = JobId::new(job.as_str()).map_err(|e| ApiError::invalid(e.to_string()))?;
        let id = id
            .parse::<CheckpointId>()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(CheckpointPath(job, id))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn whole_number_floats_become_integers() {
        let mut v = json!({"size": 682.0, "xs": [1e3, 0.5, -2.0, 1e20, u64::MAX], "zero": -0.0});
        integers_as_integers(&mut v);
        assert_eq!(
            v,
            json!({"size": 682, "xs": [1000, 0.5, -2, 1e20, u64::MAX], "zero": 0})
        );
        assert!(v["size"].is_u64() && v["xs"][2].is_i64() && v["xs"][3].is_f64());
        // Parsed exactly (serde_json's float_roundtrip): no neighbouring float.
        let big: Value = parse(b"[2251799813685247.0, 9007199254740991.0]").unwrap();
        assert_eq!(
            big,
            json!([2_251_799_813_685_247u64, 9_007_199_254_740_991u64])
        );
    }

    #[derive(Deserialize, Debug)]
    struct Opt {
        #[serde(default, deserialize_with = "non_null")]
        n: Option<u32>,
    }

    #[test]
    fn non_null_allows_absence_but_not_null() {
        assert_eq!(parse::<Opt>(b"{}").unwrap().n, None);
        assert_eq!(parse::<Opt>(br#"{"n": 7.0}"#).unwrap().n, Some(7));
        let e = parse::<Opt>(br#"{"n": null}"#).unwrap_err();
        assert!(e.detail.contains("null"), "{}", e.detail);
        assert!(parse::<Opt>(br#"{"n": 1.5}"#).is_err());
    }
}

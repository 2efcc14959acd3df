//! Request extractors: JSON bodies parsed into the API's types (a bad field is named by its
//! JSON path), the authenticated owner, and query parameters.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The authenticated caller (set by the middleware).
#[derive(Clone, Debug)]
pub struct Owner(pub String);

/// A JSON body of type `T`; an empty body is `{}`. Rejections are the error envelope.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody<T>, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                        "file_upload_limit_exceeded"
                    } else {
                        "invalid_request"
                    },
                    rejection.body_text(),
                )
            })?;
        Ok(JsonBody(nullspace_api::from_json(&bytes)?))
    }
}

/// Query parameters, checked by name.
pub struct QueryParams(pub HashMap<String, String>);

impl QueryParams {
    /// Refuses parameters not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::invalid(unknown, "unknown query parameter")),
            None => Ok(()),
        }
    }

    /// A non-negative integer parameter.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::invalid(name, "must be a non-negative integer"))
            })
            .transpose()
    }

    /// A boolean parameter (`true`/`1`/empty or `false`/`0`).
    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(_) => Err(ApiError::invalid(name, "must be true or false")),
        }
    }

    /// A parameter parsed with `FromStr` (enums), naming the parameter on failure.
    pub fn parsed<T: std::str::FromStr<Err = String>>(
        &self,
        name: &str,
    ) -> Result<Option<T>, ApiError> {
        self.0
            .get(name)
            .map(|v| v.parse().map_err(|e: String| ApiError::invalid(name, e)))
            .transpose()
    }

    /// A text parameter.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<QueryParams, ApiError> {
        let axum::extract::Query(map) =
            axum::extract::Query::<HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::invalid_body(e.body_text()))?;
        Ok(QueryParams(map))
    }
}

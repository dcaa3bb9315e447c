//! The extractor of the key [`crate::KeyAuth`]'s layer verified.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use keymeter::keys::KeyRecord;

use crate::error::ApiError;

/// The verified key's record, put in the request's extensions by [`crate::RequireKeyLayer`]. Extracting it on a
/// route without the layer is a 500 (a wiring mistake, never a way in).
#[derive(Debug, Clone)]
pub struct VerifiedKey(pub Arc<KeyRecord>);

impl<S: Send + Sync> FromRequestParts<S> for VerifiedKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<VerifiedKey>().cloned().ok_or_else(|| {
            tracing::error!(path = %parts.uri.path(), "VerifiedKey extracted on a route without RequireKeyLayer");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "this route is not guarded by an API key layer",
            )
        })
    }
}

impl std::ops::Deref for VerifiedKey {
    type Target = KeyRecord;

    fn deref(&self) -> &KeyRecord {
        &self.0
    }
}

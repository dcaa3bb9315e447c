//! `POST /secret-scanning/github`: GitHub's secret scanning partner alerts. The signature over the raw body is
//! checked before anything else; then every token is judged and each live key among them revoked and alerted
//! ([`keymeter::leaks`]).

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use keymeter::leaks::github;
use keymeter_axum::ApiError;

use crate::State;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// 401 `INVALID_SIGNATURE`: nothing was looked at.
fn unsigned(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "INVALID_SIGNATURE",
        format!("the GitHub signature is missing or does not verify: {why}"),
    )
}

pub(crate) async fn github(
    axum::extract::State(app): State,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (Some(key_id), Some(signature)) = (
        header(&headers, github::KEY_ID_HEADER),
        header(&headers, github::SIGNATURE_HEADER),
    ) else {
        return Err(unsigned(
            "no Github-Public-Key-Identifier or Github-Public-Key-Signature",
        ));
    };
    let body = crate::body_bytes(&app, body, github::MAX_BODY).await?;
    match app.github_keys.verify(key_id, signature, &body).await {
        Ok(()) => {}
        Err(keymeter::Error::InvalidInput { reason, .. }) => {
            tracing::warn!(key_id, reason = %reason, "refused a secret scanning report");
            return Err(unsigned(&reason));
        }
        Err(e) => {
            tracing::warn!(error = %e, "GitHub's secret scanning keys cannot be loaded: answering 503");
            return Err(ApiError::unavailable(
                "SIGNATURE_KEYS_UNAVAILABLE",
                "GitHub's public keys cannot be loaded now",
                60,
            ));
        }
    }
    let reports = github::parse_alerts(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let findings = app.intake.report(&reports).await?;
    let revoked = findings.iter().filter(|f| f.revoked).count();
    tracing::info!(
        tokens = findings.len(),
        true_positives = findings
            .iter()
            .filter(|f| f.label == keymeter::leaks::Label::TruePositive)
            .count(),
        revoked,
        "secret scanning report handled"
    );
    Ok(Json(github::answer(&findings)))
}

//! What a tenant (an organisation's admin, a key without `write`) and a careless client can do to the reference
//! service over loopback, and what they cannot (DESIGN §12 "who may do what"): each test failed before its fix.

mod support;

use keymeter_axum::ClientIp;
use reqwest::Method;
use serde_json::{Value, json};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// An organisation's admin cannot make keys that act as an owner of another organisation (or of none): the key
/// would read that owner's usage, pay with its provider key and replace that key.
#[tokio::test]
async fn an_organisations_admin_acts_only_for_its_own_owners() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.key(json!({"name": "bob", "owner": "bob", "organization_id": "victims", "permissions": ["llm:chat"]}))
        .await;
    gw.key(json!({"name": "dan", "owner": "dan", "permissions": ["llm:chat"]}))
        .await;
    let (_, attacker) = gw
        .key(json!({"name": "x-admin", "owner": "x-root", "organization_id": "x", "permissions": ["admin", "llm:chat", "reports"]}))
        .await;
    for owner in ["bob", "dan"] {
        let (s, _, body) = gw
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(&attacker),
                Some(json!({"name": "mine", "owner": owner, "permissions": ["llm:chat"]})),
            )
            .await;
        assert_eq!(
            (s, code(&body)),
            (403, "OWNER_IN_OTHER_ORGANISATION"),
            "{owner}: {body}"
        );
        assert!(
            !body.to_string().contains("victims"),
            "the other organisation is not named"
        );
    }
    // A new owner is bound to the admin's organisation.
    let (s, _, carol) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&attacker),
            Some(json!({"name": "carol", "owner": "carol", "permissions": ["llm:chat"]})),
        )
        .await;
    assert_eq!((s, carol["org"].as_str()), (201, Some("x")), "{carol}");
    // The operator's admin spans organisations, but a key for an existing owner names the owner's organisation.
    let (s, _, _) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&gw.admin),
            Some(json!({"name": "bob 2", "owner": "bob", "permissions": ["llm:chat"]})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&gw.admin),
            Some(json!({"name": "bob 2", "owner": "bob", "organization_id": "victims", "permissions": ["llm:chat"]})),
        )
        .await;
    assert_eq!(s, 201);
}

/// A key never grants scopes its creator lacks: `*` only from `*`.
#[tokio::test]
async fn keys_never_grant_more_than_their_creator_holds() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, org_admin) = gw
        .key(json!({"name": "a", "owner": "root", "organization_id": "acme", "permissions": ["admin", "llm:*"]}))
        .await;
    for (permissions, want) in [
        (json!(["*"]), 403),
        (json!(["billing"]), 403),
        (json!(["llm:chat", "reports"]), 403),
        (json!(["llm:chat"]), 201),
        (json!(["llm:*", "admin"]), 201),
    ] {
        let (s, _, body) = gw
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(&org_admin),
                Some(json!({"name": "k", "owner": "alice", "permissions": permissions})),
            )
            .await;
        assert_eq!(s, want, "{permissions}: {body}");
        if s == 403 {
            assert_eq!(code(&body), "INSUFFICIENT_SCOPE");
        }
    }
}

/// Changing or deleting the owner's provider keys needs `write`; reading whose keys exist needs no scope.
#[tokio::test]
async fn provider_keys_change_only_with_write() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, reader) = gw
        .key(json!({"name": "r", "owner": "alice", "permissions": ["reports"]}))
        .await;
    let (_, writer) = gw
        .key(json!({"name": "w", "owner": "alice", "permissions": ["write"]}))
        .await;
    let set = json!({"openai_api_key": "sk-proj-attackercontrolled0000000000000000000000"});
    let (s, _, body) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&reader),
            Some(set.clone()),
        )
        .await;
    assert_eq!((s, code(&body)), (403, "INSUFFICIENT_SCOPE"));
    let (s, _, _) = gw
        .call(Method::DELETE, "/v2/users/me/api-key", Some(&reader), None)
        .await;
    assert_eq!(s, 403);
    let (s, _, status) = gw
        .call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!((s, &status["has_openai_key"]), (200, &json!(false)));
    let (s, _, _) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&writer),
            Some(set),
        )
        .await;
    assert_eq!(s, 200);
}

/// Behind a trusted proxy, an `X-Forwarded-For` the service cannot read is no address: a key whose IP rules
/// allow the proxy's network is refused, not let through as the proxy.
#[tokio::test]
async fn an_unreadable_forwarded_header_fails_closed() {
    let up = support::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gateway.db", dir.path().display());
    let mut settings = support::settings(&up);
    settings.client_ip = ClientIp::Forwarded {
        header: reqwest::header::HeaderName::from_static("x-forwarded-for"),
        proxies: vec!["127.0.0.0/8".parse().unwrap()],
    };
    let gw = support::serve_with(
        &support::config(&url),
        settings,
        keymeter_gateway::server::Limits::default(),
        "ops",
    )
    .await;
    let (_, internal) = gw
        .key(json!({"name": "i", "owner": "alice", "allowed_ips": ["127.0.0.0/8"], "permissions": ["reports"]}))
        .await;
    let status = |xff: reqwest::header::HeaderValue| {
        let request = gw
            .client
            .get(format!("{}/v2/users/me/api-key-status", gw.url))
            .bearer_auth(&internal)
            .header("x-forwarded-for", xff);
        async move { support::send(request).await.status().as_u16() }
    };
    assert_eq!(
        status(reqwest::header::HeaderValue::from_static("127.0.0.9")).await,
        200
    );
    assert_eq!(
        status(reqwest::header::HeaderValue::from_static("6.6.6.6")).await,
        403
    );
    let unreadable = reqwest::header::HeaderValue::from_bytes(b"6.6.6.6\xa0").unwrap();
    assert_eq!(status(unreadable).await, 403);
}

/// A grace period past what a date can hold is a 422, not a panic that drops the connection.
#[tokio::test]
async fn an_absurd_grace_period_is_refused() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (id, _) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["llm:chat"]}))
        .await;
    for grace in ["9999999999d", "99999999d"] {
        let (s, _, body) = gw
            .call(
                Method::POST,
                &format!("/api/v1/api-keys/{id}/rotate"),
                Some(&gw.admin),
                Some(json!({"grace_period": grace})),
            )
            .await;
        assert_eq!(s, 422, "{grace}: {body}");
    }
}

//! The caller's own keys over loopback (DESIGN §12, `me/keys`): created for its own owner with a subset of its
//! scopes and never `admin` or `keys:write`, listed, rotated, revoked; revoking the creator revokes them.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Gateway, code, sqlite_gateway, upstream};

async fn create(gw: &Gateway, key: &str, body: Value) -> (u16, Value) {
    let (status, _, body) = gw
        .call(Method::POST, "/api/v1/me/keys", Some(key), Some(body))
        .await;
    (status, body)
}

#[tokio::test]
async fn a_key_makes_keys_for_its_owner_within_its_own_scopes() {
    let up = upstream().await;
    let gw = sqlite_gateway(&up).await;
    let (maker_id, maker) = gw
        .key(
            json!({"name": "console", "owner": "bob", "organization_id": "acme",
            "permissions": ["keys:write", "llm:chat", "reports"], "allowed_models": ["gpt-4o*"]}),
        )
        .await;
    let (_, other_owner) = gw
        .key(
            json!({"name": "carol's", "owner": "carol", "permissions": ["keys:write", "llm:chat"]}),
        )
        .await;
    let (_, admin_of_bob) = gw
        .key(
            json!({"name": "bob's admin", "owner": "bob", "organization_id": "acme",
            "permissions": ["admin"]}),
        )
        .await;

    // Refusals: a scope the maker lacks, the reserved scopes, none at all, a model beyond the maker's.
    for (permissions, status, expected) in [
        (json!(["billing"]), 403, "INSUFFICIENT_SCOPE"),
        (json!(["keys:write"]), 403, "INSUFFICIENT_SCOPE"),
        (json!(["admin"]), 403, "INSUFFICIENT_SCOPE"),
        (json!(["*"]), 403, "INSUFFICIENT_SCOPE"),
        (json!([]), 422, "INVALID_REQUEST"),
    ] {
        let (got, body) = create(
            &gw,
            &maker,
            json!({"name": "x", "permissions": permissions}),
        )
        .await;
        assert_eq!(
            (got, code(&body)),
            (status, expected),
            "{permissions}: {body}"
        );
    }
    let (got, body) = create(
        &gw,
        &maker,
        json!({"name": "x", "permissions": ["llm:chat"], "allowed_models": ["claude-*"]}),
    )
    .await;
    assert_eq!((got, code(&body)), (403, "INSUFFICIENT_SCOPE"), "{body}");
    let (got, body) = create(
        &gw,
        &maker,
        json!({"name": "x", "owner": "carol", "permissions": ["llm:chat"]}),
    )
    .await;
    assert_eq!(got, 422, "no other owner can be named: {body}");
    // A key without keys:write cannot call these at all.
    let (_, plain) = gw
        .key(json!({"name": "plain", "owner": "bob", "organization_id": "acme", "permissions": ["llm:chat"]}))
        .await;
    let (got, _, body) = gw
        .call(Method::GET, "/api/v1/me/keys", Some(&plain), None)
        .await;
    assert_eq!((got, code(&body)), (403, "INSUFFICIENT_SCOPE"));

    // Made: bob's, in acme, its creator recorded, the maker's model rules inherited; it works at once.
    let (got, made) = create(
        &gw,
        &maker,
        json!({"name": "laptop", "permissions": ["llm:chat"], "expires_in": "30d"}),
    )
    .await;
    assert_eq!(got, 201, "{made}");
    assert_eq!(made["owner"], "bob");
    assert_eq!(made["org"], "acme");
    assert_eq!(made["created_by"], maker_id.as_str());
    assert_eq!(made["allowed_models"], json!(["gpt-4o*"]));
    assert!(made.get("hash").is_none());
    let made_id = made["id"].as_str().unwrap().to_owned();
    let made_secret = made["secret"].as_str().unwrap().to_owned();
    let (got, _, _) = gw
        .call(Method::GET, "/v1/models", Some(&made_secret), None)
        .await;
    assert_eq!(got, 200);

    // Listed: bob's keys only.
    let (got, _, listed) = gw
        .call(Method::GET, "/api/v1/me/keys", Some(&maker), None)
        .await;
    assert_eq!(got, 200);
    let owners: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["bob", "bob", "bob", "bob"], "{listed}");

    // Another owner's key cannot see or touch it; the maker cannot touch a more powerful key of its own owner.
    let admin_id = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "bob's admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/me/keys/{made_id}");
    let (got, _, body) = gw
        .call(Method::DELETE, &path, Some(&other_owner), None)
        .await;
    assert_eq!((got, code(&body)), (404, "NOT_FOUND_ID"));
    for path in [
        format!("/api/v1/me/keys/{admin_id}"),
        format!("/api/v1/me/keys/{admin_id}/rotate"),
    ] {
        let method = if path.ends_with("rotate") {
            Method::POST
        } else {
            Method::DELETE
        };
        let (got, _, body) = gw.call(method, &path, Some(&maker), None).await;
        assert_eq!(
            (got, code(&body)),
            (403, "INSUFFICIENT_SCOPE"),
            "{path}: {body}"
        );
    }
    let (got, _, _) = gw
        .call(Method::GET, "/v1/models", Some(&admin_of_bob), None)
        .await;
    assert_eq!(got, 403, "bob's admin key still has its own scopes only");
    let (got, _, _) = gw
        .call(Method::GET, "/api/v1/api-keys", Some(&admin_of_bob), None)
        .await;
    assert_eq!(got, 200, "and was neither rotated nor revoked");

    // Rotated: the old secret stops (no grace), the new one works.
    let (got, _, rotated) = gw
        .call(
            Method::POST,
            &format!("/api/v1/me/keys/{made_id}/rotate"),
            Some(&maker),
            None,
        )
        .await;
    assert_eq!(got, 200, "{rotated}");
    assert_eq!(rotated["id"], made_id.as_str());
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    let (got, _, _) = gw
        .call(Method::GET, "/v1/models", Some(&made_secret), None)
        .await;
    assert_eq!(got, 401);
    let (got, _, _) = gw
        .call(Method::GET, "/v1/models", Some(&new_secret), None)
        .await;
    assert_eq!(got, 200);

    // A second made key; revoking the maker (through the admin API) revokes both made keys.
    let (_, second) = create(
        &gw,
        &maker,
        json!({"name": "ci", "permissions": ["reports"]}),
    )
    .await;
    let second_secret = second["secret"].as_str().unwrap().to_owned();
    let (got, _, _) = gw
        .call(Method::GET, "/api/v1/usage", Some(&second_secret), None)
        .await;
    assert_eq!(got, 200);
    let (got, _, _) = gw
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{maker_id}"),
            Some(&gw.admin),
            None,
        )
        .await;
    assert_eq!(got, 200);
    for secret in [&new_secret, &second_secret] {
        let (got, _, body) = gw
            .call(Method::GET, "/api/v1/key", Some(secret), None)
            .await;
        assert_eq!((got, code(&body)), (401, "REVOKED"), "{body}");
    }
    // Keys the maker did not create stay.
    let (got, _, _) = gw
        .call(Method::GET, "/api/v1/key", Some(&plain), None)
        .await;
    assert_eq!(got, 200);
}

#[tokio::test]
async fn a_made_key_never_outlives_its_maker_and_a_key_revokes_its_own() {
    let up = upstream().await;
    let gw = sqlite_gateway(&up).await;
    let (_, maker) = gw
        .key(
            json!({"name": "short", "owner": "dan", "permissions": ["keys:write", "llm:chat"],
            "expires_in": "1d", "allowed_ips": ["127.0.0.0/8"]}),
        )
        .await;
    let (got, made) = create(
        &gw,
        &maker,
        json!({"name": "long", "permissions": ["llm:chat"], "expires_in": "365d"}),
    )
    .await;
    assert_eq!(got, 201, "{made}");
    let (_, _, me) = gw
        .call(Method::GET, "/api/v1/key", Some(&maker), None)
        .await;
    assert_eq!(
        made["expires_at"], me["key"]["expires_at"],
        "capped at the maker's expiry"
    );
    assert_eq!(
        made["allowed_ips"],
        json!(["127.0.0.0/8"]),
        "the maker's networks inherited"
    );
    let (got, body) = create(
        &gw,
        &maker,
        json!({"name": "wide", "permissions": ["llm:chat"], "allowed_ips": ["0.0.0.0/0"]}),
    )
    .await;
    assert_eq!((got, code(&body)), (403, "INSUFFICIENT_SCOPE"), "{body}");
    // Revoked through me/keys: the answer is the revoked record.
    let id = made["id"].as_str().unwrap();
    let (got, _, revoked) = gw
        .call(
            Method::DELETE,
            &format!("/api/v1/me/keys/{id}"),
            Some(&maker),
            None,
        )
        .await;
    assert_eq!(got, 200);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let (got, _, body) = gw
        .call(
            Method::DELETE,
            "/api/v1/me/keys/AAAAAAAAAAAA",
            Some(&maker),
            None,
        )
        .await;
    assert_eq!((got, code(&body)), (404, "NOT_FOUND_ID"));
}

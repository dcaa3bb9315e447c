//! Inbound keys end to end on the memory store: every verdict, every hash scheme, import and upgrade, scopes,
//! IP rules, expiry, concurrency and redaction.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use keymeter::clock::{Clock, ManualClock};
use keymeter::keys::hash::Argon2Config;
use keymeter::keys::record::parse_networks;
use keymeter::keys::token::{self, KeyEnv};
use keymeter::keys::{
    HashScheme, IssuedKey, KeyFilter, KeyHasher, KeyIssuer, KeyStore, NewKey, Pepper, PepperRing,
    Requirement, Scope, ScopeRequirement, VerdictCode, Verifier, VerifierConfig,
};
use keymeter::random::SeededRandom;
use keymeter::store::MemoryStore;
use secrecy::ExposeSecret;

const SMALL_ARGON2: Argon2Config = Argon2Config {
    m_cost: 1024,
    t_cost: 1,
    p_cost: 1,
};

struct Fixture {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    hasher: Arc<KeyHasher>,
    issuer: KeyIssuer,
    verifier: Verifier,
}

fn pepper(id: &str, seed: u64) -> Pepper {
    Pepper::generate(id, &SeededRandom::new(seed)).unwrap()
}

fn fixture_with(peppers: Vec<Pepper>, config: VerifierConfig) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap(),
    ));
    let hasher = Arc::new(
        KeyHasher::new(PepperRing::new(peppers).unwrap())
            .with_argon2(SMALL_ARGON2)
            .unwrap()
            .with_random(Arc::new(SeededRandom::new(99))),
    );
    let issuer = KeyIssuer::new(store.clone(), hasher.clone())
        .with_clock(clock.clone())
        .with_random(Arc::new(SeededRandom::new(1)));
    let verifier = Verifier::new(store.clone(), hasher.clone(), config)
        .unwrap()
        .with_clock(clock.clone())
        .with_random(Arc::new(SeededRandom::new(2)))
        .unwrap();
    Fixture {
        store,
        clock,
        hasher,
        issuer,
        verifier,
    }
}

fn fixture() -> Fixture {
    fixture_with(vec![pepper("p1", 10)], VerifierConfig::default())
}

fn scopes(list: &str) -> Vec<Scope> {
    Scope::parse_list(list).unwrap()
}

fn need_all(list: &[&str]) -> Requirement {
    Requirement::new().scopes(ScopeRequirement::all(list.iter().copied()).unwrap())
}

async fn issue(f: &Fixture, new: NewKey) -> IssuedKey {
    f.issuer.issue(new).await.unwrap()
}

async fn code(f: &Fixture, token: &str, req: &Requirement) -> VerdictCode {
    f.verifier.verify(token, req).await.unwrap().code()
}

/// The same id with another secret and a correct checksum: well-formed, but the wrong key.
fn wrong_secret(token: &str) -> String {
    let body_len = token.len() - token::CHECKSUM_LEN;
    let mut body = token[..body_len].to_owned();
    let last = body.pop().unwrap();
    body.push(if last == 'a' { 'b' } else { 'a' });
    let sum = token::checksum(body.as_bytes());
    body.push_str(std::str::from_utf8(&sum).unwrap());
    body
}

#[tokio::test]
async fn every_verdict_code() {
    let f = fixture();
    let key = issue(&f, NewKey::new("ci", "alice").scopes(scopes("read"))).await;
    let token = key.token.expose_secret();
    let none = Requirement::new();

    let valid = f.verifier.verify(token, &none).await.unwrap();
    assert_eq!(valid.code(), VerdictCode::Valid);
    assert_eq!(valid.valid_key().unwrap().id, key.record.id);

    // MALFORMED: a typo, a truncation, garbage characters, an empty string.
    let mut typo = token.to_owned();
    typo.replace_range(20..21, if &token[20..21] == "x" { "y" } else { "x" });
    assert_eq!(code(&f, &typo, &none).await, VerdictCode::Malformed);
    assert_eq!(
        code(&f, &token[..token.len() - 1], &none).await,
        VerdictCode::Malformed
    );
    assert_eq!(code(&f, "", &none).await, VerdictCode::Malformed);
    assert_eq!(
        code(&f, "km_live_ bad", &none).await,
        VerdictCode::Malformed
    );
    assert_eq!(code(&f, "km_live_abc", &none).await, VerdictCode::Malformed);

    // NOT_FOUND: the wrong secret for a real id, and an id nobody has.
    assert_eq!(
        code(&f, &wrong_secret(token), &none).await,
        VerdictCode::NotFound
    );
    let (_, stranger) = token::generate("km", KeyEnv::Live, &SeededRandom::new(1234)).unwrap();
    assert_eq!(
        code(&f, stranger.expose_secret(), &none).await,
        VerdictCode::NotFound
    );
    assert!(
        f.verifier
            .verify(stranger.expose_secret(), &none)
            .await
            .unwrap()
            .key()
            .is_none()
    );
    assert_eq!(
        code(&f, "sk-something-else-entirely", &none).await,
        VerdictCode::NotFound
    );

    // INSUFFICIENT_SCOPE
    assert_eq!(
        code(&f, token, &need_all(&["write"])).await,
        VerdictCode::InsufficientScope
    );

    // IP_NOT_ALLOWED
    let fenced = issue(
        &f,
        NewKey::new("fenced", "alice").allowed_ips(parse_networks(["192.0.2.0/24"]).unwrap()),
    )
    .await;
    let outside = Requirement::new().client_ip("198.51.100.1".parse().unwrap());
    assert_eq!(
        code(&f, fenced.token.expose_secret(), &outside).await,
        VerdictCode::IpNotAllowed
    );

    // EXPIRED, with the injected clock.
    let expiring = issue(
        &f,
        NewKey::new("short", "alice").expires_at(f.clock.now_plus(Duration::hours(1))),
    )
    .await;
    assert_eq!(
        code(&f, expiring.token.expose_secret(), &none).await,
        VerdictCode::Valid
    );
    f.clock.advance(Duration::hours(1));
    assert_eq!(
        code(&f, expiring.token.expose_secret(), &none).await,
        VerdictCode::Expired
    );

    // DISABLED, then enabled again.
    f.verifier.disable(&key.record.id).await.unwrap();
    assert_eq!(code(&f, token, &none).await, VerdictCode::Disabled);
    f.verifier.enable(&key.record.id).await.unwrap();
    assert_eq!(code(&f, token, &none).await, VerdictCode::Valid);

    // REVOKED wins over everything after it (disabled, expired, scope).
    f.verifier.disable(&key.record.id).await.unwrap();
    f.verifier.revoke(&key.record.id).await.unwrap();
    let revoked = f
        .verifier
        .verify(token, &need_all(&["admin"]))
        .await
        .unwrap();
    assert_eq!(revoked.code(), VerdictCode::Revoked);
    assert_eq!(revoked.key().unwrap().id, key.record.id);
    assert!(revoked.valid_key().is_none());
}

#[tokio::test]
async fn wrong_environment_is_checked_before_the_store() {
    let config = VerifierConfig {
        environments: vec![KeyEnv::Live],
        ..VerifierConfig::default()
    };
    let f = fixture_with(vec![pepper("p1", 10)], config);
    let test_key = issue(&f, NewKey::new("t", "alice").env(KeyEnv::Test)).await;
    let live_key = issue(&f, NewKey::new("l", "alice")).await;
    let none = Requirement::new();
    assert_eq!(
        code(&f, test_key.token.expose_secret(), &none).await,
        VerdictCode::WrongEnvironment
    );
    assert_eq!(
        code(&f, live_key.token.expose_secret(), &none).await,
        VerdictCode::Valid
    );
    // A test-tagged token that does not even exist is still WRONG_ENVIRONMENT: no lookup is made.
    let (_, ghost) = token::generate("km", KeyEnv::Test, &SeededRandom::new(5)).unwrap();
    assert_eq!(
        code(&f, ghost.expose_secret(), &none).await,
        VerdictCode::WrongEnvironment
    );
}

#[tokio::test]
async fn verdict_codes_have_stable_strings_and_statuses() {
    let table = [
        (VerdictCode::Valid, "VALID", 200),
        (VerdictCode::Malformed, "MALFORMED", 401),
        (VerdictCode::WrongEnvironment, "WRONG_ENVIRONMENT", 401),
        (VerdictCode::NotFound, "NOT_FOUND", 401),
        (VerdictCode::Revoked, "REVOKED", 401),
        (VerdictCode::Disabled, "DISABLED", 403),
        (VerdictCode::Expired, "EXPIRED", 401),
        (VerdictCode::IpNotAllowed, "IP_NOT_ALLOWED", 403),
        (VerdictCode::InsufficientScope, "INSUFFICIENT_SCOPE", 403),
        (VerdictCode::RateLimited, "RATE_LIMITED", 429),
        (VerdictCode::BudgetExceeded, "BUDGET_EXCEEDED", 402),
    ];
    for (code, text, status) in table {
        assert_eq!(code.as_str(), text);
        assert_eq!(code.http_status(), status);
        assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{text}\""));
    }
}

#[tokio::test]
async fn headers_carry_keys() {
    let f = fixture();
    let key = issue(&f, NewKey::new("h", "alice")).await;
    let token = key.token.expose_secret();
    let none = Requirement::new();
    for (name, value) in [
        ("Authorization", format!("Bearer {token}")),
        ("authorization", format!("bearer   {token}")),
        ("x-api-key", token.to_owned()),
        ("X-API-Key", format!(" {token} ")),
    ] {
        let verdict = f.verifier.verify_header(name, &value, &none).await.unwrap();
        assert_eq!(verdict.code(), VerdictCode::Valid, "{name}");
    }
    for (name, value) in [
        ("Authorization", format!("Basic {token}")),
        ("Authorization", token.to_owned()),
        ("Authorization", "Bearer ".to_owned()),
        ("Authorization", format!("Bearer {token} extra")),
        ("Cookie", token.to_owned()),
    ] {
        let verdict = f.verifier.verify_header(name, &value, &none).await.unwrap();
        assert_eq!(verdict.code(), VerdictCode::Malformed, "{name}: {value:?}");
    }
}

#[tokio::test]
async fn scopes_and_wildcards() {
    let f = fixture();
    let star = issue(&f, NewKey::new("root", "alice").scopes(scopes("*"))).await;
    let files = issue(
        &f,
        NewKey::new("files", "alice").scopes(scopes("read,files:*")),
    )
    .await;
    let (star, files) = (star.token.expose_secret(), files.token.expose_secret());

    assert_eq!(
        code(&f, star, &need_all(&["admin", "billing", "x:y"])).await,
        VerdictCode::Valid
    );
    assert_eq!(
        code(&f, files, &need_all(&["read", "files:delete"])).await,
        VerdictCode::Valid
    );
    assert_eq!(
        code(&f, files, &need_all(&["files:*"])).await,
        VerdictCode::Valid
    );
    assert_eq!(
        code(&f, files, &need_all(&["read", "write"])).await,
        VerdictCode::InsufficientScope
    );
    // `files:*` is not `filesystem:read`, and `admin` does not imply `read`.
    assert_eq!(
        code(&f, files, &need_all(&["filesystem:read"])).await,
        VerdictCode::InsufficientScope
    );
    let any = Requirement::new().scopes(ScopeRequirement::any(["write", "files:upload"]).unwrap());
    assert_eq!(code(&f, files, &any).await, VerdictCode::Valid);
    let any = Requirement::new().scopes(ScopeRequirement::any(["write", "billing"]).unwrap());
    assert_eq!(code(&f, files, &any).await, VerdictCode::InsufficientScope);

    for bad in ["", "Read", "files:", ":x", "files:a:b", "a b", "files:*x"] {
        assert!(Scope::new(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[tokio::test]
async fn ip_networks_v4_v6_and_mapped() {
    let f = fixture();
    let nets = parse_networks(["10.1.0.0/16", "2001:db8::/32", "203.0.113.7"]).unwrap();
    let key = issue(&f, NewKey::new("ips", "alice").allowed_ips(nets)).await;
    let token = key.token.expose_secret();
    let at = |ip: &str| Requirement::new().client_ip(ip.parse::<IpAddr>().unwrap());
    for ok in ["10.1.2.3", "2001:db8::1", "203.0.113.7", "::ffff:10.1.9.9"] {
        assert_eq!(code(&f, token, &at(ok)).await, VerdictCode::Valid, "{ok}");
    }
    for no in ["10.2.0.1", "2001:db9::1", "203.0.113.8", "::1"] {
        assert_eq!(
            code(&f, token, &at(no)).await,
            VerdictCode::IpNotAllowed,
            "{no}"
        );
    }
    // With IP rules, an unknown client address is refused.
    assert_eq!(
        code(&f, token, &Requirement::new()).await,
        VerdictCode::IpNotAllowed
    );
    assert!(parse_networks(["10.0.0.0/33"]).is_err());
    assert!(parse_networks(["not-an-ip"]).is_err());

    // An entry written in IPv4-mapped form means the IPv4 network, and `::/0` covers IPv4 clients too: no entry
    // silently never matches.
    assert_eq!(
        parse_networks(["::ffff:10.0.0.0/104"]).unwrap(),
        parse_networks(["10.0.0.0/8"]).unwrap()
    );
    let mapped = issue(
        &f,
        NewKey::new("mapped", "alice")
            .allowed_ips(parse_networks(["::ffff:10.0.0.0/104"]).unwrap()),
    )
    .await;
    let mapped = mapped.token.expose_secret();
    assert_eq!(code(&f, mapped, &at("10.9.8.7")).await, VerdictCode::Valid);
    assert_eq!(
        code(&f, mapped, &at("::ffff:10.9.8.7")).await,
        VerdictCode::Valid
    );
    assert_eq!(
        code(&f, mapped, &at("11.0.0.1")).await,
        VerdictCode::IpNotAllowed
    );
    let any6 = issue(
        &f,
        NewKey::new("any6", "alice").allowed_ips(parse_networks(["::/0"]).unwrap()),
    )
    .await;
    let any6 = any6.token.expose_secret();
    for ok in ["192.0.2.1", "::1", "2001:db8::5"] {
        assert_eq!(code(&f, any6, &at(ok)).await, VerdictCode::Valid, "{ok}");
    }
}

fn foreign() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/foreign_hashes.json")).unwrap()
}

#[tokio::test]
async fn imported_sha256_is_found_by_digest() {
    let f = fixture();
    let fx = foreign();
    let (key, hash) = (
        fx["sha256"]["key"].as_str().unwrap(),
        fx["sha256"]["hash"].as_str().unwrap(),
    );
    let record = f
        .issuer
        .import(
            NewKey::new("legacy", "bob").scopes(scopes("read")),
            hash,
            None,
        )
        .await
        .unwrap();
    assert_eq!(record.hash.scheme(), HashScheme::Sha256);
    let verdict = f.verifier.verify(key, &need_all(&["read"])).await.unwrap();
    assert_eq!(verdict.code(), VerdictCode::Valid);
    assert_eq!(verdict.key().unwrap().id, record.id);
    assert_eq!(
        code(
            &f,
            "sk-legacy-sha256-aaaabbbbccccddddEEG",
            &Requirement::new()
        )
        .await,
        VerdictCode::NotFound
    );
    // The same digest twice is refused.
    assert!(
        f.issuer
            .import(NewKey::new("again", "bob"), hash, None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn imported_argon2id_from_argon2_cffi_verifies_and_upgrades() {
    let f = fixture();
    let fx = foreign();
    let (key, hash) = (
        fx["argon2id"]["key"].as_str().unwrap(),
        fx["argon2id"]["hash"].as_str().unwrap(),
    );
    // A slow hash needs a hint of the configured length.
    assert!(
        f.issuer
            .import(NewKey::new("a", "bob"), hash, None)
            .await
            .is_err()
    );
    assert!(
        f.issuer
            .import(NewKey::new("a", "bob"), hash, Some("sk-leg"))
            .await
            .is_err()
    );
    let record = f
        .issuer
        .import(NewKey::new("a", "bob"), hash, Some(&key[..8]))
        .await
        .unwrap();
    // Neither the display hint, nor Debug, nor the JSON, nor the stored lookup holds the key's first characters.
    assert!(!record.hint.contains("sk-legac"), "{}", record.hint);
    assert!(!format!("{record:?}").contains("sk-legac"));
    assert!(!serde_json::to_string(&record).unwrap().contains("sk-legac"));
    match &record.lookup {
        keymeter::keys::KeyLookup::Hint(digest) => {
            assert!(
                digest.starts_with("p1:") && !digest.contains("sk-legac"),
                "{digest}"
            );
        }
        other => panic!("expected a hint lookup, got {other:?}"),
    }
    assert!(f.store.find_by_hint(&key[..8]).await.unwrap().is_empty());

    let verdict = f.verifier.verify(key, &Requirement::new()).await.unwrap();
    assert_eq!(verdict.code(), VerdictCode::Valid);
    // Made with m=8192,t=3,p=2; ours is m=1024,t=1,p=1: the verify re-hashed it under ours.
    let stored = f.store.get(&record.id).await.unwrap().unwrap();
    assert_eq!(stored.hash.scheme(), HashScheme::Argon2id);
    assert!(
        stored.hash.as_str().contains("m=1024,t=1,p=1"),
        "{:?}",
        stored.hash.as_str()
    );
    assert_eq!(code(&f, key, &Requirement::new()).await, VerdictCode::Valid);
    // A wrong key with the same hint is NOT_FOUND.
    assert_eq!(
        code(
            &f,
            "sk-legacy-argon2-0123456789abcdefXYW",
            &Requirement::new()
        )
        .await,
        VerdictCode::NotFound
    );
}

#[cfg(feature = "bcrypt")]
#[tokio::test]
async fn imported_bcrypt_from_python_verifies_and_moves_to_argon2id() {
    let f = fixture();
    let fx = foreign();
    let (key, hash) = (
        fx["bcrypt"]["key"].as_str().unwrap(),
        fx["bcrypt"]["hash"].as_str().unwrap(),
    );
    let record = f
        .issuer
        .import(NewKey::new("b", "bob"), hash, Some(&key[..8]))
        .await
        .unwrap();
    assert_eq!(record.hash.scheme(), HashScheme::Bcrypt);
    assert_eq!(
        code(
            &f,
            "sk-legacy-bcrypt-9876543210fedcbaQRT",
            &Requirement::new()
        )
        .await,
        VerdictCode::NotFound
    );
    assert_eq!(code(&f, key, &Requirement::new()).await, VerdictCode::Valid);
    let stored = f.store.get(&record.id).await.unwrap().unwrap();
    assert_eq!(stored.hash.scheme(), HashScheme::Argon2id);
    assert_eq!(code(&f, key, &Requirement::new()).await, VerdictCode::Valid);
}

#[cfg(not(feature = "bcrypt"))]
#[tokio::test]
async fn bcrypt_import_needs_the_feature() {
    let f = fixture();
    let hash = foreign()["bcrypt"]["hash"].as_str().unwrap().to_owned();
    let err = f
        .issuer
        .import(NewKey::new("b", "bob"), &hash, Some("sk-legac"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bcrypt"), "{err}");
}

#[tokio::test]
async fn keys_sharing_a_hint_are_told_apart() {
    let f = fixture();
    let fx = foreign();
    // The argon2id and bcrypt fixtures both start with "sk-legac".
    let a = fx["argon2id"]["key"].as_str().unwrap();
    f.issuer
        .import(
            NewKey::new("a", "bob"),
            fx["argon2id"]["hash"].as_str().unwrap(),
            Some(&a[..8]),
        )
        .await
        .unwrap();
    let other = f
        .hasher
        .hash_argon2(b"sk-legacy-other-key-000000000000")
        .unwrap();
    let rec = f
        .issuer
        .import(NewKey::new("o", "carol"), other.as_str(), Some("sk-legac"))
        .await
        .unwrap();
    let verdict = f
        .verifier
        .verify("sk-legacy-other-key-000000000000", &Requirement::new())
        .await
        .unwrap();
    assert_eq!(verdict.key().unwrap().id, rec.id);
    assert_eq!(verdict.key().unwrap().owner, "carol");
    assert_eq!(
        f.verifier
            .verify(a, &Requirement::new())
            .await
            .unwrap()
            .key()
            .unwrap()
            .owner,
        "bob"
    );
}

#[tokio::test]
async fn pepper_rotation_rehashes_under_the_active_pepper() {
    let old = fixture_with(vec![pepper("p1", 10)], VerifierConfig::default());
    let key = issue(&old, NewKey::new("k", "alice")).await;
    let token = key.token.expose_secret().to_owned();
    assert_eq!(key.record.hash.pepper_id(), Some("p1"));

    // Same store, a new ring whose active pepper is p2 and which still knows p1.
    let ring = PepperRing::new(vec![pepper("p2", 20), pepper("p1", 10)]).unwrap();
    let hasher = Arc::new(KeyHasher::new(ring));
    let verifier = Verifier::new(old.store.clone(), hasher, VerifierConfig::default()).unwrap();
    assert_eq!(
        verifier
            .verify(&token, &Requirement::new())
            .await
            .unwrap()
            .code(),
        VerdictCode::Valid
    );
    let stored = old.store.get(&key.record.id).await.unwrap().unwrap();
    assert_eq!(stored.hash.pepper_id(), Some("p2"));

    // p1 can now be retired.
    let only_p2 = Arc::new(KeyHasher::new(
        PepperRing::new(vec![pepper("p2", 20)]).unwrap(),
    ));
    let verifier = Verifier::new(old.store.clone(), only_p2, VerifierConfig::default()).unwrap();
    assert_eq!(
        verifier
            .verify(&token, &Requirement::new())
            .await
            .unwrap()
            .code(),
        VerdictCode::Valid
    );
}

#[tokio::test]
async fn unknown_pepper_is_an_error_not_a_verdict() {
    let f = fixture();
    let key = issue(&f, NewKey::new("k", "alice")).await;
    let stranger = Arc::new(KeyHasher::new(
        PepperRing::new(vec![pepper("p9", 90)]).unwrap(),
    ));
    let verifier = Verifier::new(f.store.clone(), stranger, VerifierConfig::default()).unwrap();
    let err = verifier
        .verify(key.token.expose_secret(), &Requirement::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("p1"), "{err}");
}

#[tokio::test]
async fn slow_hash_cache_is_used_and_cleared_by_revoke() {
    let f = fixture();
    let secret = "admin-chosen-password-1";
    let hash = f.hasher.hash_argon2(secret.as_bytes()).unwrap();
    let rec = f
        .issuer
        .import(
            NewKey::new("pw", "alice"),
            hash.as_str(),
            Some(&secret[..8]),
        )
        .await
        .unwrap();
    assert!(f.verifier.cache().is_empty());
    assert_eq!(
        code(&f, secret, &Requirement::new()).await,
        VerdictCode::Valid
    );
    assert_eq!(f.verifier.cache().len(), 1);
    assert_eq!(
        code(&f, secret, &Requirement::new()).await,
        VerdictCode::Valid
    );
    f.verifier.revoke(&rec.id).await.unwrap();
    assert!(f.verifier.cache().is_empty());
    assert_eq!(
        code(&f, secret, &Requirement::new()).await,
        VerdictCode::Revoked
    );
}

#[tokio::test]
async fn cache_entries_expire_after_their_ttl() {
    let config = VerifierConfig {
        cache_ttl: Duration::minutes(1),
        ..VerifierConfig::default()
    };
    let f = fixture_with(vec![pepper("p1", 10)], config);
    let secret = "admin-chosen-password-2";
    let hash = f.hasher.hash_argon2(secret.as_bytes()).unwrap();
    let rec = f
        .issuer
        .import(
            NewKey::new("pw", "alice"),
            hash.as_str(),
            Some(&secret[..8]),
        )
        .await
        .unwrap();
    let now = f.clock.now_plus(Duration::zero());
    assert_eq!(
        code(&f, secret, &Requirement::new()).await,
        VerdictCode::Valid
    );
    assert!(
        f.verifier
            .cache()
            .contains(secret.as_bytes(), &rec.id, hash.as_str(), now)
    );
    assert!(!f.verifier.cache().contains(
        secret.as_bytes(),
        &rec.id,
        hash.as_str(),
        now + Duration::minutes(1)
    ));
    assert!(
        !f.verifier
            .cache()
            .contains(b"other", &rec.id, hash.as_str(), now)
    );
}

#[tokio::test]
async fn last_used_is_written_at_most_once_a_minute() {
    let f = fixture();
    let key = issue(&f, NewKey::new("k", "alice")).await;
    let token = key.token.expose_secret();
    let t0 = f.clock.now_plus(Duration::zero());
    let last = || async {
        f.store
            .get(&key.record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
    };
    assert_eq!(last().await, None);
    code(&f, token, &Requirement::new()).await;
    assert_eq!(last().await, Some(t0));
    f.clock.advance(Duration::seconds(30));
    code(&f, token, &Requirement::new()).await;
    assert_eq!(last().await, Some(t0), "coalesced");
    f.clock.advance(Duration::seconds(31));
    code(&f, token, &Requirement::new()).await;
    assert_eq!(last().await, Some(t0 + Duration::seconds(61)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issues_never_share_an_id() {
    let f = Arc::new(fixture());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let f = f.clone();
        tasks.spawn(async move {
            f.issuer
                .issue(NewKey::new(format!("k{i}"), "alice"))
                .await
                .unwrap()
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(issued) = tasks.join_next().await {
        assert!(ids.insert(issued.unwrap().record.id));
    }
    assert_eq!(ids.len(), 200);
    assert_eq!(
        f.store.list(&KeyFilter::default()).await.unwrap().len(),
        200
    );
}

#[tokio::test]
async fn an_id_collision_is_retried() {
    // Two issuers drawing the same random stream produce the same first id; the second retries.
    let f = fixture();
    let twin = KeyIssuer::new(f.store.clone(), f.hasher.clone())
        .with_random(Arc::new(SeededRandom::new(1)));
    let a = issue(&f, NewKey::new("a", "alice")).await;
    let b = twin.issue(NewKey::new("b", "alice")).await.unwrap();
    assert_ne!(a.record.id, b.record.id);
}

#[tokio::test]
async fn no_secret_in_debug_display_errors_or_serde() {
    let f = fixture();
    let key = issue(&f, NewKey::new("k", "alice").scopes(scopes("read"))).await;
    let token = key.token.expose_secret().to_owned();
    let secret_part = &token[token.len() - 38..token.len() - 6];
    let pepper = pepper("p7", 70);
    let pepper_b64 = keymeter::secret::RingKey::to_env_entry(&pepper)
        .expose_secret()
        .split_once(':')
        .unwrap()
        .1
        .to_owned();
    let hmac_digest = key
        .record
        .hash
        .as_str()
        .rsplit('$')
        .next()
        .unwrap()
        .to_owned();
    let verdict = f
        .verifier
        .verify(&token, &Requirement::new())
        .await
        .unwrap();
    let typo_err = token::parse(&token[..token.len() - 1]).unwrap_err();
    let header_err =
        keymeter::keys::credential_from_header("Authorization", &format!("Basic {token}"))
            .unwrap_err();
    let config_err = Pepper::from_base64("x", "not base64 but secret-ish").unwrap_err();

    let outputs = [
        format!("{key:?}"),
        format!("{:?}", key.token),
        format!("{:?}", key.record),
        serde_json::to_string(&key.record).unwrap(),
        format!("{verdict:?}"),
        format!("{pepper:?}"),
        format!("{:?}", f.hasher),
        format!("{:?}", f.verifier),
        format!("{:?}", PepperRing::new(vec![pepper]).unwrap()),
        format!("{typo_err} {typo_err:?}"),
        format!("{header_err} {header_err:?}"),
        format!("{config_err} {config_err:?}"),
    ];
    for out in &outputs {
        assert!(!out.contains(secret_part), "secret leaked: {out}");
        assert!(!out.contains(&pepper_b64), "pepper leaked: {out}");
        assert!(!out.contains(&hmac_digest), "hash leaked: {out}");
        assert!(!out.contains("secret-ish"), "input echoed: {out}");
    }
    let json = serde_json::to_value(&key.record).unwrap();
    assert_eq!(json["hash_scheme"], "hmac-sha256");
    assert!(json.get("hash").is_none());
}

trait NowPlus {
    fn now_plus(&self, d: Duration) -> chrono::DateTime<Utc>;
}

impl NowPlus for ManualClock {
    fn now_plus(&self, d: Duration) -> chrono::DateTime<Utc> {
        keymeter::clock::Clock::now(self) + d
    }
}

/// An Argon2id PHC string with the given parameters (its salt and hash are well-formed; it matches nothing).
fn argon2_with(m: u32, t: u32, p: u32) -> String {
    format!(
        "$argon2id$v=19$m={m},t={t},p={p}$c29tZXNhbHRzb21lc2FsdA$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE"
    )
}

#[tokio::test]
async fn a_hint_that_matches_nothing_still_costs_one_kdf() {
    let f = fixture();
    let unknown = "sk-nobody-has-this-prefix-0123456789";
    // No hinted key at all: nothing to hide, no KDF (so garbage tokens cannot make the server hash).
    assert_eq!(
        code(&f, unknown, &Requirement::new()).await,
        VerdictCode::NotFound
    );
    assert_eq!(f.verifier.kdf_runs(), 0);
    let fx = foreign();
    let (key, hash) = (
        fx["argon2id"]["key"].as_str().unwrap(),
        fx["argon2id"]["hash"].as_str().unwrap(),
    );
    f.issuer
        .import(NewKey::new("a", "bob"), hash, Some(&key[..8]))
        .await
        .unwrap();
    // Now a hint that matches no key runs one dummy KDF, as a hint that matches one runs one real KDF.
    assert_eq!(
        code(&f, unknown, &Requirement::new()).await,
        VerdictCode::NotFound
    );
    assert_eq!(f.verifier.kdf_runs(), 1);
    assert_eq!(
        code(
            &f,
            "sk-legacy-argon2-0123456789abcdefXYW",
            &Requirement::new()
        )
        .await,
        VerdictCode::NotFound
    );
    assert_eq!(f.verifier.kdf_runs(), 2);
}

#[tokio::test]
async fn imports_over_the_kdf_ceilings_or_under_an_unknown_pepper_are_refused() {
    let f = fixture();
    for (hash, what) in [
        (argon2_with(4 * 1024 * 1024, 100, 1), "m=4194304"),
        (argon2_with(19_456, 11, 1), "t=11"),
        (argon2_with(19_456, 2, 16), "p=16"),
    ] {
        let err = f
            .issuer
            .import(NewKey::new("a", "bob"), &hash, Some("abcdefgh"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                keymeter::Error::Hash(keymeter::keys::HashError::TooCostly { .. })
            ),
            "{what}: {err}"
        );
        assert!(err.to_string().contains(what), "{err}");
    }
    assert!(
        f.issuer
            .import(
                NewKey::new("a", "bob"),
                &argon2_with(65_536, 10, 4),
                Some("abcdefgh")
            )
            .await
            .is_ok()
    );
    let foreign_pepper = format!("$hmac-sha256$v=1,p=elsewhere${}", "A".repeat(43));
    let err = f
        .issuer
        .import(NewKey::new("h", "bob"), &foreign_pepper, Some("km_live_"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            keymeter::Error::Hash(keymeter::keys::HashError::UnknownPepper(_))
        ),
        "{err}"
    );
    assert!(
        f.store.list(&KeyFilter::default()).await.unwrap().len() == 1,
        "nothing else was stored"
    );
}

#[cfg(feature = "bcrypt")]
#[tokio::test]
async fn bcrypt_over_the_cost_ceiling_is_refused() {
    let f = fixture();
    let expensive = format!("$2b$31${}", "a".repeat(53));
    let err = f
        .issuer
        .import(NewKey::new("b", "bob"), &expensive, Some("abcdefgh"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            keymeter::Error::Hash(keymeter::keys::HashError::TooCostly { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn digests_and_hints_stay_out_of_debug_and_errors() {
    let f = fixture();
    let secret = "legacy-gateway-key-000111222333";
    let hex: String = {
        use sha2::Digest;
        sha2::Sha256::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let record = f
        .issuer
        .import(NewKey::new("s", "bob"), &format!("$sha256${hex}"), None)
        .await
        .unwrap();
    assert!(!format!("{record:?}").contains(&hex[..16]));
    assert!(!format!("{:?}", f.store).contains(&hex[..16]));
    assert!(!format!("{:?}", f.verifier).contains(&hex[..16]));
    let dup = f
        .issuer
        .import(NewKey::new("s2", "bob"), &format!("$sha256${hex}"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(dup, keymeter::Error::AlreadyExists { .. }),
        "{dup}"
    );
    assert!(
        !dup.to_string().contains(&hex[..16]) && !format!("{dup:?}").contains(&hex[..16]),
        "{dup}"
    );
    let hash = argon2_with(1024, 1, 1);
    for i in 0..keymeter::keys::MAX_KEYS_PER_HINT {
        f.issuer
            .import(NewKey::new(format!("h{i}"), "bob"), &hash, Some("adm1n-pa"))
            .await
            .unwrap();
    }
    let full = f
        .issuer
        .import(NewKey::new("h", "bob"), &hash, Some("adm1n-pa"))
        .await
        .unwrap_err();
    assert!(matches!(full, keymeter::Error::HintFull { .. }), "{full}");
    assert!(
        !full.to_string().contains("adm1n") && !format!("{full:?}").contains("adm1n"),
        "{full}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdf_work_is_bounded_and_overload_is_a_typed_error() {
    let f = fixture_with(
        vec![pepper("p1", 10)],
        VerifierConfig {
            kdf_concurrency: 1,
            kdf_wait: Duration::zero(),
            cache_capacity: 0,
            ..VerifierConfig::default()
        },
    );
    let fx = foreign();
    let (key, hash) = (
        fx["argon2id"]["key"].as_str().unwrap(),
        fx["argon2id"]["hash"].as_str().unwrap(),
    );
    f.issuer
        .import(NewKey::new("a", "bob"), hash, Some(&key[..8]))
        .await
        .unwrap();
    // Polled in turn by one task: the first takes the only slot and its KDF runs for milliseconds, so the others
    // find no slot and, not allowed to wait, are refused at once.
    let need = Requirement::new();
    let results = futures_join(
        (0..4)
            .map(|_| f.verifier.verify(key, &need))
            .collect::<Vec<_>>(),
    )
    .await;
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(keymeter::Error::Overloaded)))
        .count();
    let valid = results
        .iter()
        .filter(|r| matches!(r, Ok(v) if v.code() == VerdictCode::Valid))
        .count();
    assert_eq!((valid, overloaded), (1, 3), "{results:?}");
    // Once the slot is free again, verification works.
    assert_eq!(code(&f, key, &need).await, VerdictCode::Valid);
}

/// Polls every future in turn until all are done (a tiny `join_all`, to avoid a dependency).
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("done")).collect()
}

#[tokio::test]
async fn rotation_keeps_the_id_and_the_old_secret_until_the_grace_ends() {
    let config = VerifierConfig {
        prefixes: vec!["km".into(), "acme".into()],
        ..VerifierConfig::default()
    };
    let f = fixture_with(vec![pepper("p1", 10)], config);
    let req = Requirement::new();
    let first = issue(&f, NewKey::new("ci", "alice").prefix("acme")).await;
    let old = first.token.expose_secret().to_owned();
    let rotated = f
        .verifier
        .rotate(&f.issuer, &first.record.id, Duration::hours(24))
        .await
        .unwrap();
    let new = rotated.token.expose_secret().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated.id, first.record.id);
    assert!(
        new.starts_with(&format!("acme_live_{}_", first.record.id)),
        "{new}"
    );
    assert_eq!(
        rotated.grace_until,
        Some(Utc.with_ymd_and_hms(2026, 5, 2, 9, 0, 0).unwrap())
    );
    assert!(
        !format!("{rotated:?}").contains(&new),
        "the token is redacted"
    );
    // Both work during the grace period, under the same id; a wrong secret still does not.
    for token in [&old, &new] {
        let verdict = f.verifier.verify(token, &req).await.unwrap();
        assert_eq!(verdict.code(), VerdictCode::Valid);
        assert_eq!(verdict.key().unwrap().id, first.record.id);
    }
    assert_eq!(
        code(&f, &wrong_secret(&new), &req).await,
        VerdictCode::NotFound
    );
    // The grace period ends: the old secret is refused, the new one is not.
    f.clock.advance(Duration::hours(24));
    assert_eq!(code(&f, &old, &req).await, VerdictCode::NotFound);
    assert_eq!(code(&f, &new, &req).await, VerdictCode::Valid);

    // Zero grace: the old secret stops at once. Rotating again drops the older previous secret.
    let zero = f
        .issuer
        .rotate(&first.record.id, Duration::zero())
        .await
        .unwrap();
    assert_eq!(zero.grace_until, None);
    assert_eq!(code(&f, &new, &req).await, VerdictCode::NotFound);
    let a = f
        .issuer
        .rotate(&first.record.id, Duration::hours(1))
        .await
        .unwrap();
    let b = f
        .issuer
        .rotate(&first.record.id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        code(&f, zero.token.expose_secret(), &req).await,
        VerdictCode::NotFound
    );
    for token in [&a.token, &b.token] {
        assert_eq!(
            code(&f, token.expose_secret(), &req).await,
            VerdictCode::Valid
        );
    }

    // A revoked key cannot rotate, and its secrets stay refused.
    f.verifier.revoke(&first.record.id).await.unwrap();
    let err = f
        .issuer
        .rotate(&first.record.id, Duration::hours(1))
        .await
        .unwrap_err();
    assert!(matches!(err, keymeter::Error::InvalidInput { .. }), "{err}");
    assert_eq!(
        code(&f, b.token.expose_secret(), &req).await,
        VerdictCode::Revoked
    );
    // An imported key cannot rotate (its token does not carry its id); an unknown id is NotFound.
    let imported = f
        .issuer
        .import(
            NewKey::new("legacy", "bob"),
            KeyHasher::sha256(b"sk-legacy-0123456789").as_str(),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        f.issuer.rotate(&imported.id, Duration::hours(1)).await,
        Err(keymeter::Error::InvalidInput { .. })
    ));
    assert!(matches!(
        f.issuer.rotate("ZZZZZZZZZZZZ", Duration::hours(1)).await,
        Err(keymeter::Error::NotFound { .. })
    ));
    let _ = &f.store;
    let _ = &f.hasher;
}

fn limited(f: &Fixture) -> Verifier {
    Verifier::new(f.store.clone(), f.hasher.clone(), VerifierConfig::default())
        .unwrap()
        .with_clock(f.clock.clone())
        .with_limits(f.store.clone(), f.store.clone())
}

#[tokio::test]
async fn rate_limits_of_the_key_its_owner_and_its_org_are_charged_all_or_none() {
    use keymeter::limits::{LimitScope, LimitStore, Limits};
    let f = fixture();
    let verifier = limited(&f);
    let req = Requirement::new();
    // The record's own limit (keys create --rate-limit) counts.
    let a = issue(
        &f,
        NewKey::new("a", "alice")
            .org("acme")
            .rate_limit("3/min".parse().unwrap()),
    )
    .await;
    let b = issue(&f, NewKey::new("b", "alice").org("acme")).await;
    let (ta, tb) = (a.token.expose_secret(), b.token.expose_secret());
    for left in [2, 1, 0] {
        let v = verifier.verify(ta, &req).await.unwrap();
        assert_eq!(v.code(), VerdictCode::Valid);
        assert_eq!(v.limit().unwrap().remaining, left);
    }
    let v = verifier.verify(ta, &req).await.unwrap();
    assert_eq!(v.code(), VerdictCode::RateLimited);
    assert_eq!(v.code().http_status(), 429);
    let status = v.limit().unwrap();
    assert_eq!(
        (status.limit, status.remaining, status.retry_after_secs()),
        (3, 0, 20)
    );
    assert_eq!(v.key().unwrap().id, a.record.id);
    // 20 s later one more.
    f.clock.advance(Duration::seconds(20));
    assert_eq!(
        verifier.verify(ta, &req).await.unwrap().code(),
        VerdictCode::Valid
    );

    // An owner limit is shared by all the owner's keys; a refusal by it charges none of the others.
    f.store
        .set_limits(
            &LimitScope::Owner("alice".into()),
            &Limits {
                requests: vec!["2/h".parse().unwrap()],
                ..Limits::default()
            },
        )
        .await
        .unwrap();
    f.clock.advance(Duration::minutes(5));
    assert_eq!(
        verifier.verify(ta, &req).await.unwrap().code(),
        VerdictCode::Valid
    );
    assert_eq!(
        verifier.verify(tb, &req).await.unwrap().code(),
        VerdictCode::Valid
    );
    let refused = verifier.verify(tb, &req).await.unwrap();
    assert_eq!(refused.code(), VerdictCode::RateLimited);
    assert_eq!(refused.limit().unwrap().limit, 2);
    // Other checks come first: a revoked key is REVOKED, not RATE_LIMITED.
    f.store
        .set_limits(&LimitScope::Owner("alice".into()), &Limits::default())
        .await
        .unwrap();
    verifier.revoke(&b.record.id).await.unwrap();
    assert_eq!(
        verifier.verify(tb, &req).await.unwrap().code(),
        VerdictCode::Revoked
    );
}

#[tokio::test]
async fn token_limits_are_charged_after_the_response_and_delay_the_next_request() {
    use keymeter::limits::{LimitScope, LimitStore, Limits};
    let f = fixture();
    let verifier = limited(&f);
    let req = Requirement::new();
    let key = issue(&f, NewKey::new("a", "alice").org("acme")).await;
    f.store
        .set_limits(
            &LimitScope::Org("acme".into()),
            &Limits {
                tokens: vec!["10000/min".parse().unwrap()],
                ..Limits::default()
            },
        )
        .await
        .unwrap();
    let t = key.token.expose_secret();
    let v = verifier.verify(t, &req).await.unwrap();
    assert_eq!(v.code(), VerdictCode::Valid);
    // 25,000 tokens used: 15,000 of debt beyond the burst, 90 s to pay back.
    verifier.charge_tokens(&key.record, 25_000).await.unwrap();
    let v = verifier.verify(t, &req).await.unwrap();
    assert_eq!(v.code(), VerdictCode::RateLimited);
    assert_eq!(v.limit().unwrap().retry_after_secs(), 90);
    f.clock.advance(Duration::seconds(90));
    assert_eq!(
        verifier.verify(t, &req).await.unwrap().code(),
        VerdictCode::Valid
    );
}

/// A limiter that cannot be reached.
#[derive(Debug)]
struct Unreachable;

#[async_trait::async_trait]
impl keymeter::limits::RateLimiter for Unreachable {
    async fn check(
        &self,
        _: &[keymeter::limits::Charge],
        _: i64,
    ) -> keymeter::Result<keymeter::limits::Decision> {
        Err(keymeter::Error::Config("limiter down".into()))
    }
    async fn charge(&self, _: &[keymeter::limits::Charge], _: i64) -> keymeter::Result<()> {
        Err(keymeter::Error::Config("limiter down".into()))
    }
    async fn refund(&self, _: &[keymeter::limits::Charge], _: i64) -> keymeter::Result<()> {
        Err(keymeter::Error::Config("limiter down".into()))
    }
}

#[tokio::test]
async fn an_unreachable_limiter_fails_closed_unless_configured_to_fail_open() {
    let f = fixture();
    let key = issue(
        &f,
        NewKey::new("a", "alice").rate_limit("10/min".parse().unwrap()),
    )
    .await;
    let t = key.token.expose_secret();
    let closed = Verifier::new(f.store.clone(), f.hasher.clone(), VerifierConfig::default())
        .unwrap()
        .with_limits(f.store.clone(), Arc::new(Unreachable));
    assert!(closed.verify(t, &Requirement::new()).await.is_err());
    let open_config = VerifierConfig {
        limits_fail_open: true,
        ..VerifierConfig::default()
    };
    let open = Verifier::new(f.store.clone(), f.hasher.clone(), open_config)
        .unwrap()
        .with_limits(f.store.clone(), Arc::new(Unreachable));
    let v = open.verify(t, &Requirement::new()).await.unwrap();
    assert_eq!((v.code(), v.limit()), (VerdictCode::Valid, None));
    // A key without limits never asks the limiter.
    let free = issue(&f, NewKey::new("b", "bob")).await;
    assert!(
        closed
            .verify(free.token.expose_secret(), &Requirement::new())
            .await
            .unwrap()
            .is_valid()
    );
}

/// A statistics store that fails while `down` is set.
#[derive(Debug)]
struct Flaky {
    inner: Arc<MemoryStore>,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl keymeter::stats::StatsStore for Flaky {
    async fn add_stats(&self, deltas: &[keymeter::stats::StatsDelta]) -> keymeter::Result<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(keymeter::Error::Config("store down".into()));
        }
        self.inner.add_stats(deltas).await
    }
    async fn key_stats(
        &self,
        key_id: &str,
        since: chrono::NaiveDate,
    ) -> keymeter::Result<Vec<(chrono::NaiveDate, keymeter::stats::Counts)>> {
        self.inner.key_stats(key_id, since).await
    }
}

#[tokio::test]
async fn statistics_are_counted_in_memory_and_survive_a_failed_flush() {
    use keymeter::stats::{StatsRecorder, StatsStore};
    let f = fixture();
    let flaky = Arc::new(Flaky {
        inner: f.store.clone(),
        down: std::sync::atomic::AtomicBool::new(true),
    });
    let recorder = Arc::new(StatsRecorder::new(flaky.clone()));
    let verifier = Verifier::new(f.store.clone(), f.hasher.clone(), VerifierConfig::default())
        .unwrap()
        .with_clock(f.clock.clone())
        .with_stats(recorder.clone());
    let key = issue(&f, NewKey::new("a", "alice").scopes(scopes("read"))).await;
    let t = key.token.expose_secret();
    for _ in 0..3 {
        assert!(
            verifier
                .verify(t, &Requirement::new())
                .await
                .unwrap()
                .is_valid()
        );
    }
    assert_eq!(
        verifier
            .verify(&wrong_secret(t), &Requirement::new())
            .await
            .unwrap()
            .code(),
        VerdictCode::NotFound
    );
    assert_eq!(
        verifier
            .verify(t, &need_all(&["write"]))
            .await
            .unwrap()
            .code(),
        VerdictCode::InsufficientScope
    );
    // Nothing written per verify: not even last_used_at.
    assert!(
        f.store
            .key_stats(&key.record.id, chrono::NaiveDate::MIN)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.store
            .get(&key.record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        None
    );
    // A failed flush keeps every count; the next day's counts stay apart.
    assert!(recorder.flush().await.is_err());
    assert_eq!(recorder.pending_keys(), 1);
    f.clock.advance(Duration::days(1));
    assert!(
        verifier
            .verify(t, &Requirement::new())
            .await
            .unwrap()
            .is_valid()
    );
    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    recorder.flush().await.unwrap();
    assert_eq!(recorder.pending_keys(), 0);
    let days = f
        .store
        .key_stats(&key.record.id, chrono::NaiveDate::MIN)
        .await
        .unwrap();
    assert_eq!(days.len(), 2);
    let first = days[0].1;
    assert_eq!(
        (
            first[VerdictCode::Valid.index()],
            first[VerdictCode::NotFound.index()],
            first[VerdictCode::InsufficientScope.index()]
        ),
        (3, 1, 1)
    );
    assert_eq!(days[1].1[VerdictCode::Valid.index()], 1);
    assert_eq!(
        f.store
            .get(&key.record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(f.clock.now())
    );
    // Dropping the recorder inside a runtime writes what is left.
    assert!(
        verifier
            .verify(t, &Requirement::new())
            .await
            .unwrap()
            .is_valid()
    );
    drop(verifier);
    drop(recorder);
    tokio::task::yield_now().await;
    for _ in 0..100 {
        let days = f
            .store
            .key_stats(&key.record.id, chrono::NaiveDate::MIN)
            .await
            .unwrap();
        if days[1].1[VerdictCode::Valid.index()] == 2 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the dropped recorder's counts were not written");
}

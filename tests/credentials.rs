//! Provider credentials: vault (against a vector from Python's `cryptography`), every resolution path,
//! concurrency isolation, rewrap, the `.env` tier, and environment detection.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use keymeter::Error;
use keymeter::credentials::vault::associated_data;
use keymeter::credentials::{
    CredentialResolver, CredentialScope, CredentialSource, CredentialStore, MasterKey,
    MasterKeyRing, Provider, ResolverPolicy, SealedCredential, Vault, VaultError, rewrap, set_key,
};
use keymeter::env::{Environment, detect, detect_strict};
use keymeter::random::SeededRandom;
use keymeter::store::MemoryStore;
use secrecy::ExposeSecret;
use serde_json::Value;

const ALICE_KEY: &str = "sk-ant-api03-alice-personal-key-0123456789abcdef";
const SYSTEM_KEY: &str = "sk-ant-api03-operator-system-key-fedcba9876543210";

fn vector() -> Value {
    serde_json::from_str(include_str!("fixtures/vault_vector.json")).unwrap()
}

fn key(id: &str, seed: u64) -> MasterKey {
    MasterKey::generate(id, &SeededRandom::new(seed)).unwrap()
}

fn vault(keys: Vec<MasterKey>) -> Arc<Vault> {
    Arc::new(
        Vault::new(MasterKeyRing::new(keys).unwrap()).with_random(Arc::new(SeededRandom::new(77))),
    )
}

fn user(owner: &str) -> CredentialScope {
    CredentialScope::user(owner).unwrap()
}

#[test]
fn decrypts_and_reproduces_the_python_cryptography_vector() {
    let v = vector();
    let ring = MasterKeyRing::from_env_value(&format!(
        "{}:{}",
        v["master_key"]["id"].as_str().unwrap(),
        v["master_key"]["base64"].as_str().unwrap()
    ))
    .unwrap();
    let vault = Vault::new(ring);
    let anthropic = Provider::anthropic();
    let alice = user("alice");
    assert_eq!(
        hex(&associated_data(&alice, &anthropic, "k2026")),
        v["user"]["aad_hex"].as_str().unwrap()
    );
    let sealed = SealedCredential::from_str(v["user"]["sealed"].as_str().unwrap()).unwrap();
    let opened = vault.open(&alice, &anthropic, &sealed).unwrap();
    assert_eq!(
        opened.expose_secret(),
        v["user"]["plaintext"].as_str().unwrap()
    );
    let system = SealedCredential::from_str(v["system"]["sealed"].as_str().unwrap()).unwrap();
    assert_eq!(
        hex(&associated_data(
            &CredentialScope::System,
            &Provider::openai(),
            "k2026"
        )),
        v["system"]["aad_hex"].as_str().unwrap()
    );
    assert_eq!(
        vault
            .open(&CredentialScope::System, &Provider::openai(), &system)
            .unwrap()
            .expose_secret(),
        v["system"]["plaintext"].as_str().unwrap()
    );

    // With the vector's nonce, our encryption is byte-for-byte Python's.
    struct Fixed([u8; 12]);
    impl std::fmt::Debug for Fixed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Fixed")
        }
    }
    impl keymeter::random::RandomSource for Fixed {
        fn fill(&self, dest: &mut [u8]) -> keymeter::Result<()> {
            dest.copy_from_slice(&self.0[..dest.len()]);
            Ok(())
        }
    }
    let ring = MasterKeyRing::from_env_value(&format!(
        "k2026:{}",
        v["master_key"]["base64"].as_str().unwrap()
    ))
    .unwrap();
    let nonce: [u8; 12] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
    ];
    let ours = Vault::new(ring).with_random(Arc::new(Fixed(nonce)));
    let resealed = ours
        .seal(&alice, &anthropic, v["user"]["plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(resealed.to_text(), v["user"]["sealed"].as_str().unwrap());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tampering_moving_and_wrong_keys_fail_with_typed_errors() {
    let vault = vault(vec![key("k1", 1)]);
    let (alice, anthropic) = (user("alice"), Provider::anthropic());
    let sealed = vault.seal(&alice, &anthropic, ALICE_KEY).unwrap();
    let text = sealed.to_text();

    // Every single flipped character of the ciphertext part fails authentication (or parsing).
    let ct_start = text.rfind(':').unwrap() + 1;
    for i in ct_start..text.len() {
        let mut t = text.clone().into_bytes();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        if let Ok(tampered) = SealedCredential::from_str(&t) {
            assert_eq!(
                vault.open(&alice, &anthropic, &tampered).unwrap_err(),
                VaultError::Decrypt,
                "at {i}"
            );
        }
    }
    // A row copied to another owner, to another provider, or to the system scope.
    assert_eq!(
        vault.open(&user("bob"), &anthropic, &sealed).unwrap_err(),
        VaultError::Decrypt
    );
    assert_eq!(
        vault
            .open(&alice, &Provider::openai(), &sealed)
            .unwrap_err(),
        VaultError::Decrypt
    );
    assert_eq!(
        vault
            .open(&CredentialScope::System, &anthropic, &sealed)
            .unwrap_err(),
        VaultError::Decrypt
    );
    // The wrong master key under the same id, and an unknown id.
    let impostor = Vault::new(MasterKeyRing::new(vec![key("k1", 2)]).unwrap());
    assert_eq!(
        impostor.open(&alice, &anthropic, &sealed).unwrap_err(),
        VaultError::Decrypt
    );
    let other = Vault::new(MasterKeyRing::new(vec![key("k9", 1)]).unwrap());
    assert_eq!(
        other.open(&alice, &anthropic, &sealed).unwrap_err(),
        VaultError::UnknownKey("k1".into())
    );
    // A sealed text claiming another key id fails too: the id is in the associated data.
    let relabelled = SealedCredential::from_str(&text.replacen(":k1:", ":k2:", 1)).unwrap();
    let both = Vault::new(MasterKeyRing::new(vec![key("k2", 1), key("k1", 1)]).unwrap());
    assert_eq!(
        both.open(&alice, &anthropic, &relabelled).unwrap_err(),
        VaultError::Decrypt
    );
    for bad in [
        "",
        "kmv1",
        "kmv2:k1:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA",
        "kmv1:k1:short:AAAAAAAAAAAAAAAAAAAAAA",
        "kmv1:k1:AAAAAAAAAAAAAAAA:AA",
    ] {
        assert!(
            matches!(
                SealedCredential::from_str(bad),
                Err(VaultError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
    // Each encryption draws a fresh nonce.
    let again = vault.seal(&alice, &anthropic, ALICE_KEY).unwrap();
    assert_ne!(again.to_text()[..24], text[..24]);
}

async fn setup(environment: Environment) -> (Arc<MemoryStore>, Arc<Vault>, CredentialResolver) {
    let store = Arc::new(MemoryStore::new());
    let vault = vault(vec![key("k1", 1)]);
    let resolver = CredentialResolver::new(store.clone(), vault.clone(), environment);
    (store, vault, resolver)
}

#[tokio::test]
async fn user_then_system_then_nothing() {
    let (store, vault, resolver) = setup(Environment::Production).await;
    let anthropic = Provider::anthropic();
    match resolver.resolve("alice", &anthropic).await {
        Err(Error::NoCredential { provider }) => assert_eq!(provider, "anthropic"),
        other => panic!("{other:?}"),
    }
    set_key(
        &*store,
        &vault,
        &CredentialScope::System,
        &anthropic,
        SYSTEM_KEY,
    )
    .await
    .unwrap();
    let r = resolver.resolve("alice", &anthropic).await.unwrap();
    assert_eq!(
        (r.source, r.key.expose_secret()),
        (CredentialSource::System, SYSTEM_KEY)
    );
    set_key(&*store, &vault, &user("alice"), &anthropic, ALICE_KEY)
        .await
        .unwrap();
    let r = resolver.resolve("alice", &anthropic).await.unwrap();
    assert_eq!(
        (r.source, r.key.expose_secret()),
        (CredentialSource::User, ALICE_KEY)
    );
    assert_eq!(r.masked(), "sk-ant-…cdef");
    // Bob still gets the system key.
    assert_eq!(
        resolver.resolve("bob", &anthropic).await.unwrap().source,
        CredentialSource::System
    );

    // A policy that requires users to bring their own key for this provider.
    let strict = CredentialResolver::new(store.clone(), vault.clone(), Environment::Production)
        .with_policy(ResolverPolicy {
            user_key_required: [anthropic.clone()].into(),
            ..ResolverPolicy::default()
        });
    assert_eq!(
        strict.resolve("alice", &anthropic).await.unwrap().source,
        CredentialSource::User
    );
    assert!(matches!(
        strict.resolve("bob", &anthropic).await,
        Err(Error::NoCredential { .. })
    ));
    let status = strict.status("bob").await.unwrap();
    assert!(!status[&anthropic].system && !status[&anthropic].user);

    // Status never returns a key; resolve_all gives one value per request.
    let status = resolver.status("alice").await.unwrap();
    assert!(status[&anthropic].user && status[&anthropic].system);
    assert!(!status[&Provider::openai()].user && !status[&Provider::openai()].system);
    let all = resolver.resolve_all("alice").await.unwrap();
    assert_eq!(all.get(&anthropic).unwrap().source, CredentialSource::User);
    assert!(all.get(&Provider::openai()).is_err());
    // Deleting the user's key falls back again.
    assert!(store.delete(&user("alice"), &anthropic).await.unwrap());
    assert_eq!(
        resolver.resolve("alice", &anthropic).await.unwrap().source,
        CredentialSource::System
    );
}

#[tokio::test]
async fn malformed_and_placeholder_keys_are_refused_without_echo() {
    let (store, vault, _) = setup(Environment::Development).await;
    for (provider, bad) in [
        (
            Provider::anthropic(),
            "sk-proj-looks-like-openai-0000000000000",
        ),
        (Provider::anthropic(), "your_key_here"),
        (Provider::openai(), "sk-..."),
        (Provider::openai(), "changeme"),
        (Provider::openai(), ""),
        (Provider::openai(), "   "),
        (Provider::openai(), "sk-real-looking but spaced 0000000000"),
        (Provider::google(), "AIzaTooShort"),
        (Provider::google(), "<your-google-key>"),
        (Provider::new("acme").unwrap(), "sk-xxxxxxxxxxxxxxxx"),
    ] {
        let err = set_key(&*store, &vault, &user("alice"), &provider, bad)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidCredential { .. }),
            "{bad:?}: {err:?}"
        );
        if bad.trim().len() > 3 {
            assert!(
                !err.to_string().contains(bad.trim()),
                "echoed {bad:?}: {err}"
            );
        }
    }
    assert!(store.list().await.unwrap().is_empty());
    set_key(
        &*store,
        &vault,
        &user("alice"),
        &Provider::google(),
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
    )
    .await
    .unwrap();
    set_key(
        &*store,
        &vault,
        &user("alice"),
        &Provider::openai(),
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    )
    .await
    .unwrap();
    assert!(Provider::new("Bad Name").is_err());
    assert_eq!(Provider::new("Gemini").unwrap(), Provider::google());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_resolutions_never_cross_owners() {
    let (store, vault, resolver) = setup(Environment::Production).await;
    let resolver = Arc::new(resolver);
    let providers = [Provider::anthropic(), Provider::openai()];
    let key_of = |owner: usize, p: &Provider| match p.as_str() {
        "anthropic" => format!("sk-ant-api03-owner{owner:03}-secret-abcdefghijkl"),
        _ => format!("sk-proj-owner{owner:03}-secret-abcdefghijklmnop"),
    };
    for owner in 0..50 {
        for p in &providers {
            set_key(
                &*store,
                &vault,
                &user(&format!("owner-{owner}")),
                p,
                &key_of(owner, p),
            )
            .await
            .unwrap();
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let resolver = resolver.clone();
        let p = providers[i % 2].clone();
        let owner = (i * 7) % 50;
        tasks.spawn(async move {
            tokio::task::yield_now().await;
            let r = resolver
                .resolve(&format!("owner-{owner}"), &p)
                .await
                .unwrap();
            (owner, p, r)
        });
    }
    let mut n = 0;
    while let Some(done) = tasks.join_next().await {
        let (owner, p, r) = done.unwrap();
        assert_eq!(r.source, CredentialSource::User);
        assert_eq!(
            r.key.expose_secret(),
            key_of(owner, &p),
            "owner {owner} saw another owner's key"
        );
        n += 1;
    }
    assert_eq!(n, 1000);
    assert!(
        std::env::var("ANTHROPIC_API_KEY").is_err()
            || std::env::var("ANTHROPIC_API_KEY").unwrap() != key_of(0, &providers[0])
    );
}

#[tokio::test]
async fn rewrap_moves_everything_to_the_active_key_and_loses_nothing() {
    let store = Arc::new(MemoryStore::new());
    let old = vault(vec![key("old", 1)]);
    let mut expected = HashMap::new();
    for owner in ["alice", "bob", "carol"] {
        let k = format!("sk-ant-api03-{owner}-0000000000000000000000");
        set_key(&*store, &old, &user(owner), &Provider::anthropic(), &k)
            .await
            .unwrap();
        expected.insert(owner, k);
    }
    set_key(
        &*store,
        &old,
        &CredentialScope::System,
        &Provider::anthropic(),
        SYSTEM_KEY,
    )
    .await
    .unwrap();

    // The new key is active; the old one stays in the ring until rewrap is done.
    let both = vault(vec![key("new", 2), key("old", 1)]);
    // Simulate an interrupted run: one row rewrapped by hand first.
    let first = store.list().await.unwrap().remove(0);
    let plain = both
        .open(&first.scope, &first.provider, &first.sealed)
        .unwrap();
    let fresh = both
        .seal(&first.scope, &first.provider, plain.expose_secret())
        .unwrap();
    assert!(
        store
            .replace(&first.scope, &first.provider, &first.sealed, &fresh)
            .await
            .unwrap()
    );

    let report = rewrap(&*store, &both).await.unwrap();
    assert_eq!((report.total, report.rewrapped, report.skipped), (4, 3, 0));
    assert!(
        store
            .list()
            .await
            .unwrap()
            .iter()
            .all(|c| c.sealed.key_id() == "new")
    );
    assert_eq!(rewrap(&*store, &both).await.unwrap().rewrapped, 0);

    // The old key can now go.
    let only_new = vault(vec![key("new", 2)]);
    let resolver = CredentialResolver::new(store.clone(), only_new, Environment::Production);
    for (owner, k) in expected {
        assert_eq!(
            resolver
                .resolve(owner, &Provider::anthropic())
                .await
                .unwrap()
                .key
                .expose_secret(),
            k
        );
    }
    assert_eq!(
        resolver
            .resolve("dave", &Provider::anthropic())
            .await
            .unwrap()
            .key
            .expose_secret(),
        SYSTEM_KEY
    );
}

#[test]
fn no_secret_in_debug_or_errors() {
    let vault = vault(vec![key("k1", 1)]);
    let ring_text = vault.keys().to_env_value().expose_secret().to_owned();
    let key_b64 = ring_text.split(':').nth(1).unwrap().to_owned();
    let sealed = vault
        .seal(&user("alice"), &Provider::anthropic(), ALICE_KEY)
        .unwrap();
    let resolved = keymeter::credentials::ResolvedCredential {
        provider: Provider::anthropic(),
        source: CredentialSource::User,
        key: ALICE_KEY.into(),
    };
    let err = MasterKeyRing::from_env_value("k1:not-base64-secretish").unwrap_err();
    let outputs = [
        format!("{vault:?}"),
        format!("{:?}", vault.keys()),
        format!("{sealed:?}"),
        format!("{resolved:?}"),
        resolved.masked(),
        format!("{err} {err:?}"),
        format!("{:?}", vault.keys().active()),
    ];
    for out in outputs {
        assert!(
            !out.contains(ALICE_KEY) && !out.contains("personal-key"),
            "{out}"
        );
        assert!(!out.contains(&key_b64), "{out}");
        assert!(!out.contains("secretish"), "{out}");
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creds.db");
    let store = Arc::new(
        keymeter::store::SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap(),
    );
    let vault = vault(vec![key("k1", 1)]);
    set_key(
        &*store,
        &vault,
        &user("alice"),
        &Provider::anthropic(),
        ALICE_KEY,
    )
    .await
    .unwrap();
    set_key(
        &*store,
        &vault,
        &CredentialScope::System,
        &Provider::anthropic(),
        SYSTEM_KEY,
    )
    .await
    .unwrap();
    let resolver = CredentialResolver::new(store.clone(), vault.clone(), Environment::Production);
    assert_eq!(
        resolver
            .resolve("alice", &Provider::anthropic())
            .await
            .unwrap()
            .key
            .expose_secret(),
        ALICE_KEY
    );
    store.close().await;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for secret in [ALICE_KEY, SYSTEM_KEY, "personal-key", "system-key"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plaintext on disk"
            );
        }
    }
}

#[cfg(feature = "env-file")]
mod env_file {
    use super::*;
    use keymeter::store::EnvFile;
    use keymeter::store::env_file::{parse, remove_var, set_var};

    const FILE: &str = "# local development keys\nexport DATABASE_URL=\"postgres://localhost/dev\"\n\n\
                        OPENAI_API_KEY=sk-old # rotate me\nMULTI=\"line one\nline two\"\nZED=last";

    #[test]
    fn writes_keep_the_rest_of_the_file_byte_for_byte() {
        let updated = set_var(FILE, "OPENAI_API_KEY", "sk-proj-new").unwrap();
        assert_eq!(
            updated,
            FILE.replace(
                "OPENAI_API_KEY=sk-old # rotate me",
                "OPENAI_API_KEY=sk-proj-new"
            )
        );
        let added = set_var(FILE, "ANTHROPIC_API_KEY", "sk-ant-x").unwrap();
        assert_eq!(added, format!("{FILE}\nANTHROPIC_API_KEY=sk-ant-x\n"));
        let vars = parse(&added).unwrap();
        assert_eq!(vars["MULTI"].as_str(), "line one\nline two");
        assert_eq!(vars["ANTHROPIC_API_KEY"].as_str(), "sk-ant-x");
        // A variable inside a multi-line value is not an assignment.
        let tricky = "A=\"x\nB=inside\"\nB=real\n";
        assert_eq!(
            set_var(tricky, "B", "new").unwrap(),
            "A=\"x\nB=inside\"\nB=new\n"
        );
        let (removed, any) = remove_var(FILE, "MULTI").unwrap();
        assert!(any);
        assert_eq!(removed, FILE.replace("MULTI=\"line one\nline two\"\n", ""));
        // Values that need quoting survive a parse.
        for value in [
            "has space",
            "it's",
            "quote\"and'both$HOME\\",
            "#hash",
            "$VAR",
        ] {
            let text = set_var("", "K", value).unwrap();
            assert_eq!(parse(&text).unwrap()["K"].as_str(), value, "{text}");
        }
        for evil in ["x\nEVIL=1", "x\rEVIL=1", "x\0"] {
            assert!(set_var(FILE, "OPENAI_API_KEY", evil).is_err());
        }
        assert!(set_var(FILE, "BAD NAME", "x").is_err());
    }

    #[test]
    fn parse_errors_do_not_echo_the_line() {
        let err = parse("GOOD=1\nBAD LINE sk-ant-secret-value\n").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn a_planted_temporary_file_or_symlink_is_never_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "OTHER=1\n").unwrap();
        // Every name the old writer used, and a few more, planted as symlinks to a file the attacker reads.
        let loot = dir.path().join("loot");
        std::fs::write(&loot, "").unwrap();
        for name in [
            format!("..env.tmp-{}", std::process::id()),
            ".env.tmp".to_owned(),
            ".keymeter-.tmp".to_owned(),
        ] {
            std::os::unix::fs::symlink(&loot, dir.path().join(name)).unwrap();
        }
        EnvFile::new(&path, Environment::Development)
            .write_key(&Provider::anthropic(), SYSTEM_KEY)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&loot).unwrap(),
            "",
            "the key never reaches a planted link"
        );
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), ".env stays a regular file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with(".keymeter-")
                    && e.file_type().unwrap().is_file()
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn sourcing_the_file_in_a_shell_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let values = [
            "$(touch pwned1)",
            "`touch pwned2`",
            "it's $(touch pwned3)",
            "back\\slash $(touch pwned4) \"quoted\"",
            "plain-value_1.2",
        ];
        let mut text = String::new();
        for (i, v) in values.iter().enumerate() {
            text = set_var(&text, &format!("V{i}"), v).unwrap();
        }
        // A value needing double quotes that holds a backtick cannot be made safe for both readers: refused.
        assert!(set_var(&text, "BAD", "it's `touch pwned5`").is_err());
        let parsed = parse(&text).unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(
                parsed[&format!("V{i}")].as_str(),
                *v,
                "dotenvy reads V{i} back exactly"
            );
        }
        std::fs::write(dir.path().join(".env"), &text).unwrap();
        let script = (0..values.len())
            .map(|i| format!("printf '%s\\n' \"$V{i}\";"))
            .collect::<String>();
        let out = std::process::Command::new("sh")
            .current_dir(dir.path())
            .arg("-c")
            .arg(format!(". ./.env; {script}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            printed.lines().collect::<Vec<_>>(),
            values,
            "the shell reads the same values"
        );
        for n in 1..=5 {
            assert!(
                !dir.path().join(format!("pwned{n}")).exists(),
                "sourcing ran pwned{n}"
            );
        }
    }

    #[tokio::test]
    async fn the_test_environment_never_reads_or_writes_env_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "ANTHROPIC_API_KEY=sk-ant-api03-from-the-file-0000000000\n",
        )
        .unwrap();
        let file = EnvFile::new(&path, Environment::Test);
        let resolver = CredentialResolver::new(
            Arc::new(MemoryStore::new()),
            vault(vec![key("k1", 1)]),
            Environment::Test,
        )
        .with_env_file(Arc::new(file.clone()));
        assert!(matches!(
            resolver.resolve("alice", &Provider::anthropic()).await,
            Err(Error::NoCredential { .. })
        ));
        assert!(
            file.write_key(&Provider::openai(), "sk-proj-abcdefghijklmnopqrstuvwxyz")
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_env_tier_is_for_development_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "# mine\nOTHER=1\nGEMINI_API_KEY=AIzaSyA-abcdefghijklmnopqrstuvwxyz01234\n",
        )
        .unwrap();
        let dev = EnvFile::new(&path, Environment::Development);
        dev.write_key(&Provider::anthropic(), SYSTEM_KEY).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\nOTHER=1\nGEMINI_API_KEY="));
        assert!(dev.write_key(&Provider::anthropic(), "changeme").is_err());

        let (store, vault) = (Arc::new(MemoryStore::new()), vault(vec![key("k1", 1)]));
        let resolver =
            CredentialResolver::new(store.clone(), vault.clone(), Environment::Development)
                .with_env_file(Arc::new(dev.clone()));
        let r = resolver
            .resolve("alice", &Provider::anthropic())
            .await
            .unwrap();
        assert_eq!(
            (r.source, r.key.expose_secret()),
            (CredentialSource::EnvFile, SYSTEM_KEY)
        );
        assert_eq!(
            resolver
                .resolve("alice", &Provider::google())
                .await
                .unwrap()
                .source,
            CredentialSource::EnvFile
        );
        assert!(resolver.status("alice").await.unwrap()[&Provider::anthropic()].system);
        // The store's system key wins over the file.
        set_key(
            &*store,
            &vault,
            &CredentialScope::System,
            &Provider::anthropic(),
            "sk-ant-api03-stored-system-key-0000",
        )
        .await
        .unwrap();
        assert_eq!(
            resolver
                .resolve("alice", &Provider::anthropic())
                .await
                .unwrap()
                .source,
            CredentialSource::System
        );

        // Production never reads it, and never writes it.
        let prod_file = EnvFile::new(&path, Environment::Production);
        let prod = CredentialResolver::new(
            Arc::new(MemoryStore::new()),
            vault.clone(),
            Environment::Production,
        )
        .with_env_file(Arc::new(prod_file.clone()));
        assert!(matches!(
            prod.resolve("alice", &Provider::anthropic()).await,
            Err(Error::NoCredential { .. })
        ));
        assert!(!prod.status("alice").await.unwrap()[&Provider::anthropic()].system);
        let before = std::fs::read(&path).unwrap();
        assert!(
            prod_file
                .write_key(&Provider::openai(), "sk-proj-abcdefghijklmnopqrstuvwxyz")
                .is_err()
        );
        assert!(prod_file.remove_key(&Provider::anthropic()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // ...unless configured explicitly.
        let explicit =
            CredentialResolver::new(Arc::new(MemoryStore::new()), vault, Environment::Production)
                .with_env_file(Arc::new(prod_file))
                .with_policy(ResolverPolicy {
                    env_file_outside_development: true,
                    ..ResolverPolicy::default()
                });
        assert_eq!(
            explicit
                .resolve("alice", &Provider::anthropic())
                .await
                .unwrap()
                .source,
            CredentialSource::EnvFile
        );

        assert!(dev.remove_key(&Provider::anthropic()).unwrap());
        assert!(
            !std::fs::read_to_string(&path)
                .unwrap()
                .contains("ANTHROPIC")
        );
    }
}

#[test]
fn environment_detection_rules() {
    let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    type Case<'a> = (&'a [(&'a str, &'a str)], Environment, &'a str);
    let cases: &[Case] = &[
        (
            &[("KEYMETER_ENV", "production"), ("DEBUG", "true")],
            Environment::Production,
            "KEYMETER_ENV=production",
        ),
        (
            &[("KEYMETER_ENV", "Prod")],
            Environment::Production,
            "KEYMETER_ENV=prod",
        ),
        (
            &[("KEYMETER_ENV", "staging")],
            Environment::Staging,
            "KEYMETER_ENV=staging",
        ),
        (
            &[("KEYMETER_ENV", "test")],
            Environment::Test,
            "KEYMETER_ENV=test",
        ),
        (
            &[("KEYMETER_ENV", "dev")],
            Environment::Development,
            "KEYMETER_ENV=dev",
        ),
        (
            &[("DEBUG", "True"), ("DEPLOY_ENV", "production")],
            Environment::Production,
            "DEPLOY_ENV=production",
        ),
        (
            &[("DEBUG", "1"), ("DEPLOY_ENV", "staging")],
            Environment::Staging,
            "DEPLOY_ENV=staging",
        ),
        (&[("DEBUG", "True")], Environment::Development, "DEBUG=True"),
        (&[("DEBUG", "yes")], Environment::Development, "DEBUG=yes"),
        (&[("DEPLOY_ENV", "ci")], Environment::Test, "DEPLOY_ENV=ci"),
        (
            &[("DEPLOY_ENV", "test")],
            Environment::Test,
            "DEPLOY_ENV=test",
        ),
        (
            &[("DEPLOY_ENV", "preview")],
            Environment::Staging,
            "DEPLOY_ENV=preview",
        ),
        (
            &[("DEBUG", "false"), ("DEPLOY_ENV", "production")],
            Environment::Production,
            "DEPLOY_ENV=production",
        ),
        (
            &[("DEPLOY_ENV", "prod")],
            Environment::Production,
            "DEPLOY_ENV=prod",
        ),
        (
            &[("DEPLOY_ENV", "render")],
            Environment::Production,
            "DEPLOY_ENV=render",
        ),
        (
            &[("DEPLOY_ENV", "staging")],
            Environment::Staging,
            "DEPLOY_ENV=staging",
        ),
        (
            &[("DEPLOY_ENV", "local")],
            Environment::Development,
            "DEPLOY_ENV=local",
        ),
        (
            &[("DEPLOY_ENV", "dev")],
            Environment::Development,
            "DEPLOY_ENV=dev",
        ),
        (
            &[("DEPLOY_ENV", "mars")],
            Environment::Production,
            "DEPLOY_ENV=mars (unrecognised, treated as production)",
        ),
    ];
    for (vars, expected, reason) in cases {
        let found = detect(&env(vars)).unwrap();
        assert_eq!(
            (found.environment, found.reason.as_str()),
            (*expected, *reason),
            "{vars:?}"
        );
        assert!(detect_strict(&env(vars)).is_ok());
    }
    let nothing = detect(&env(&[])).unwrap();
    assert_eq!(nothing.environment, Environment::Development);
    assert!(nothing.defaulted && nothing.reason.contains("nothing set"));
    assert!(detect_strict(&env(&[])).is_err());
    assert!(detect(&env(&[("KEYMETER_ENV", "moon")])).is_err());
    assert!(!Environment::Test.is_development() && !Environment::Staging.is_development());
    // Set but empty is an error, not "unset"; so is a value that is not UTF-8 (through an EnvSource that
    // reports it as set without a value, as the process environment does).
    let err = detect(&env(&[("KEYMETER_ENV", " ")])).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    struct NotUtf8;
    impl keymeter::env::EnvSource for NotUtf8 {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn is_set(&self, name: &str) -> bool {
            name == "KEYMETER_ENV"
        }
    }
    let err = detect(&NotUtf8).unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
    // A DEBUG flag beside a production signal is a warning, never development.
    let found = detect(&env(&[("DEBUG", "true"), ("DEPLOY_ENV", "render")])).unwrap();
    assert_eq!(found.environment, Environment::Production);
    assert!(found.warning.unwrap().contains("DEBUG"));
    // DEBUG values outside the list are not truthy.
    assert!(detect(&env(&[("DEBUG", "on")])).unwrap().defaulted);
}

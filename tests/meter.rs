//! The metering facade: reserve a payer's worst case, settle from a provider's usage object, exactly, with the
//! clock and ids injected.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use keymeter::Error;
use keymeter::clock::ManualClock;
use keymeter::credentials::CredentialSource;
use keymeter::ledger::{
    Budget, BudgetPeriod, BudgetScope, EventFilter, Ledger, Meter, MeteredRequest, Payer,
};
use keymeter::pricing::{PriceCatalog, Usage, UsageFormat};
use keymeter::random::SeededRandom;
use keymeter::store::MemoryStore;
use rust_decimal::Decimal;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct Fixture {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    meter: Meter,
}

impl Fixture {
    /// Sets a budget of `limit` on `scope` over `period`.
    async fn budget(&self, scope: &BudgetScope, limit: &str, period: BudgetPeriod) {
        self.store
            .set_budget(&Budget::new(scope.clone(), d(limit), period).unwrap())
            .await
            .unwrap();
    }
}

fn fixture(seed: u64) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(t0()));
    let meter = Meter::new(store.clone(), Arc::new(PriceCatalog::bundled()))
        .with_clock(clock.clone())
        .with_random(Arc::new(SeededRandom::new(seed)))
        .with_hold_ttl(Duration::minutes(5));
    Fixture {
        store,
        clock,
        meter,
    }
}

fn alice() -> Payer {
    Payer::owner("alice").key("k1").org("acme")
}

// claude-sonnet-4-5 in the bundled snapshot: input $3/M, output $15/M, cache read $0.30/M, 5-minute writes $3.75/M.
const ANTHROPIC: &str = r#"{"id": "msg_01", "usage": {"input_tokens": 2100, "output_tokens": 850,
    "cache_read_input_tokens": 9000, "cache_creation_input_tokens": 900,
    "cache_creation": {"ephemeral_5m_input_tokens": 900, "ephemeral_1h_input_tokens": 0}}}"#;

#[tokio::test]
async fn reserve_and_settle_exactly_against_every_scope_of_the_key() {
    let f = fixture(1);
    for scope in alice().scopes() {
        f.store
            .set_budget(&Budget::new(scope, d("1"), BudgetPeriod::Daily).unwrap())
            .await
            .unwrap();
    }
    let request = MeteredRequest::new(alice(), "claude-sonnet-4-5")
        .request_id("msg_01")
        .credential_source(CredentialSource::User);
    let worst = Usage::tokens(12_000, 4_096);
    let hold = f.meter.reserve(request, &worst).await.unwrap();
    // 12,000 × 0.000003 + 4,096 × 0.000015 = 0.036 + 0.06144
    assert_eq!(hold.amount(), d("0.09744"));
    assert_eq!(hold.reservation().scopes.len(), 3);
    for scope in alice().scopes() {
        let status = f.store.budget_status(&scope, t0()).await.unwrap().unwrap();
        assert_eq!(status.reserved, d("0.09744"), "{scope}");
    }

    f.clock.advance(Duration::seconds(3));
    let metered = f
        .meter
        .settle(hold, (UsageFormat::Anthropic, ANTHROPIC))
        .await
        .unwrap();
    // 2,100 × 0.000003 + 9,000 × 0.0000003 + 900 × 0.00000375 + 850 × 0.000015
    // = 0.0063 + 0.0027 + 0.003375 + 0.01275 = 0.025125
    assert_eq!(metered.cost.total, d("0.025125"));
    assert!(!metered.duplicate);
    assert_eq!(metered.request_id, "msg_01");
    for scope in alice().scopes() {
        let status = f
            .store
            .budget_status(&scope, f.clock_now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (status.spent, status.reserved),
            (d("0.025125"), Decimal::ZERO),
            "{scope}"
        );
    }
    let events = f.store.events(&EventFilter::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (
            e.key_id.as_deref(),
            e.owner.as_str(),
            e.org.as_deref(),
            e.model.as_str(),
            e.provider.as_str()
        ),
        (
            Some("k1"),
            "alice",
            Some("acme"),
            "claude-sonnet-4-5",
            "anthropic"
        )
    );
    assert_eq!(
        e.at,
        t0() + Duration::seconds(3),
        "the event is stamped by the meter's clock"
    );
    assert_eq!(e.credential_source, Some(CredentialSource::User));
    assert_eq!(
        (
            e.usage.input,
            e.usage.cache_read,
            e.usage.cache_write_5m,
            e.usage.output
        ),
        (2100, 9000, 900, 850)
    );
}

impl Fixture {
    fn clock_now(&self) -> DateTime<Utc> {
        keymeter::clock::Clock::now(&*self.clock)
    }
}

#[tokio::test]
async fn a_worst_case_past_the_limit_is_refused_and_holds_nothing() {
    let f = fixture(2);
    let org = BudgetScope::Org("acme".into());
    f.budget(&org, "0.05", BudgetPeriod::Monthly).await;
    let worst = Usage::tokens(12_000, 4_096);
    let err = f
        .meter
        .reserve(MeteredRequest::new(alice(), "claude-sonnet-4-5"), &worst)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BudgetExceeded { ref scope, .. } if scope == "org:acme"),
        "{err}"
    );
    let status = f.store.budget_status(&org, t0()).await.unwrap().unwrap();
    assert_eq!(status.reserved, Decimal::ZERO);
    // An unknown model is an error before anything is reserved, never a zero.
    let err = f
        .meter
        .reserve(MeteredRequest::new(alice(), "no-such-model"), &worst)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownModel { .. }), "{err}");
}

#[tokio::test]
async fn release_returns_the_hold_and_a_retried_request_id_records_once() {
    let f = fixture(3);
    let owner = BudgetScope::Owner("alice".into());
    f.budget(&owner, "1", BudgetPeriod::Total).await;
    let worst = Usage::tokens(1_000, 1_000);
    let hold = f
        .meter
        .reserve(MeteredRequest::new(alice(), "claude-sonnet-4-5"), &worst)
        .await
        .unwrap();
    assert!(f.meter.release(hold).await.unwrap());
    assert_eq!(
        f.store
            .budget_status(&owner, t0())
            .await
            .unwrap()
            .unwrap()
            .reserved,
        Decimal::ZERO
    );

    let usage = Usage {
        input: 1_000,
        ..Usage::default()
    };
    let first = f
        .meter
        .record(
            MeteredRequest::new(alice(), "claude-sonnet-4-5").request_id("sdk-1"),
            usage,
        )
        .await
        .unwrap();
    let again = f
        .meter
        .record(
            MeteredRequest::new(alice(), "claude-sonnet-4-5").request_id("sdk-1"),
            usage,
        )
        .await
        .unwrap();
    assert_eq!(first.cost.total, d("0.003"));
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.event_id, again.event_id);
    assert_eq!(
        f.store
            .budget_status(&owner, t0())
            .await
            .unwrap()
            .unwrap()
            .spent,
        d("0.003")
    );
}

#[tokio::test]
async fn ids_come_from_the_injected_random_source() {
    let run = |seed| async move {
        let f = fixture(seed);
        let m = f
            .meter
            .record(
                MeteredRequest::new(alice(), "gpt-4o"),
                Usage {
                    input: 10,
                    ..Usage::default()
                },
            )
            .await
            .unwrap();
        (m.event_id, m.request_id)
    };
    assert_eq!(run(9).await, run(9).await);
    assert_ne!(run(9).await, run(10).await);
}

/// Waits (at most 1 s) until `check` holds: a dropped hold ends in a background task.
async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("never happened");
}

/// A hold dropped unsettled ends as a crash recovery would: before it was forwarded its room comes back at once;
/// after, it is billed at its reservation as an `estimated` event. A settle that fails (here: a usage that
/// contradicts itself) ends the hold the same way, and `try_settle` gives it back instead.
#[tokio::test]
async fn a_dropped_hold_gives_its_room_back_or_bills_its_reservation() {
    let f = fixture(7);
    let scope = BudgetScope::Owner("alice".into());
    f.budget(&scope, "10", BudgetPeriod::Monthly).await;
    let worst = Usage::tokens(1_000, 1_000);
    let reserved = || {
        let store = f.store.clone();
        let scope = scope.clone();
        async move {
            store
                .budget_status(&scope, t0())
                .await
                .unwrap()
                .unwrap()
                .reserved
        }
    };
    let request = |id: &str| MeteredRequest::new(alice(), "gpt-4o").request_id(id);

    // Dropped before forwarding: given back, the request id freed.
    let hold = f.meter.reserve(request("r1"), &worst).await.unwrap();
    assert!(reserved().await > Decimal::ZERO);
    drop(hold);
    eventually(async || reserved().await == Decimal::ZERO).await;
    f.meter.reserve(request("r1"), &worst).await.unwrap(); // claimable again; dropped in turn
    eventually(async || reserved().await == Decimal::ZERO).await;

    // Dropped after forwarding: billed at the reservation, marked estimated.
    let hold = f.meter.reserve(request("r2"), &worst).await.unwrap();
    let amount = hold.amount();
    f.meter.forwarded(&hold).unwrap();
    drop(hold);
    eventually(async || reserved().await == Decimal::ZERO).await;
    let events = f.store.events(&EventFilter::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].estimated);
    assert_eq!(
        (events[0].request_id.as_str(), events[0].cost),
        ("r2", amount)
    );

    // A failed settle: try_settle keeps the hold, settle ends it.
    let bad = r#"{"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 99}}"#;
    let hold = f.meter.reserve(request("r3"), &worst).await.unwrap();
    f.meter.forwarded(&hold).unwrap();
    let unsettled = f
        .meter
        .try_settle(hold, (UsageFormat::OpenAi, bad))
        .await
        .unwrap_err();
    assert!(reserved().await > Decimal::ZERO, "still held");
    assert!(matches!(
        f.meter
            .settle(unsettled.hold, (UsageFormat::OpenAi, bad))
            .await,
        Err(Error::InvalidUsage(_))
    ));
    eventually(async || reserved().await == Decimal::ZERO).await;
    eventually(async || {
        f.store
            .event("r3")
            .await
            .unwrap()
            .is_some_and(|e| e.estimated)
    })
    .await;
}

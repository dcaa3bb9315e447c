//! The journal (DESIGN §13): what a process that dies leaves behind is settled, billed as estimated or released
//! at the next start; torn tails are cut; one process per directory; finished segments are deleted; a journal
//! past its bound refuses new holds.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keymeter::ledger::journal::{Journal, JournalConfig, SyncPolicy, frame};
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, Meter, MeteredRequest, Payer};
use keymeter::pricing::{PriceCatalog, Usage};
use keymeter::random::OsRandom;
use keymeter::store::MemoryStore;
use keymeter::{Dependency, Error};
use proptest::prelude::*;
use rust_decimal::Decimal;

fn worst() -> Usage {
    Usage {
        input: 1_000,
        output: 500,
        ..Usage::default()
    }
}

fn used() -> Usage {
    Usage {
        input: 400,
        output: 100,
        ..Usage::default()
    }
}

async fn store_with_budget() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    store
        .set_budget(
            &Budget::new(
                BudgetScope::Owner("alice".into()),
                Decimal::from(10),
                BudgetPeriod::Monthly,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    store
}

fn meter(store: &Arc<MemoryStore>, journal: &Journal) -> Meter {
    Meter::new(store.clone(), Arc::new(PriceCatalog::bundled())).with_journal(journal.clone())
}

fn request(id: &str) -> MeteredRequest {
    MeteredRequest::new(Payer::owner("alice").key("k1"), "gpt-4o")
        .request_id(id)
        .at(Utc::now())
}

async fn reserved(store: &MemoryStore) -> Decimal {
    store
        .budget_status(&BudgetScope::Owner("alice".into()), Utc::now())
        .await
        .unwrap()
        .unwrap()
        .reserved
}

#[tokio::test]
async fn a_dead_process_holds_are_settled_estimated_or_released_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_budget().await;
    let catalog = PriceCatalog::bundled();
    let worst_cost = catalog
        .cost(
            "gpt-4o",
            &worst(),
            Utc::now(),
            keymeter::pricing::ServiceTier::Standard,
        )
        .unwrap()
        .total;
    let used_cost = catalog
        .cost(
            "gpt-4o",
            &used(),
            Utc::now(),
            keymeter::pricing::ServiceTier::Standard,
        )
        .unwrap()
        .total;
    {
        // The first process: its drain never runs (it "dies" before the store hears of anything).
        let (journal, recovery) =
            Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
        assert_eq!(recovery, Default::default());
        let meter = meter(&store, &journal);
        // Forwarded, never settled: billed at the reservation, estimated.
        let forwarded = meter.reserve(request("forwarded"), &worst()).await.unwrap();
        meter.forwarded(&forwarded).unwrap();
        // The process dies with its holds: nothing ends them now.
        forwarded.abandon();
        // Never forwarded: released.
        meter
            .reserve(request("held"), &worst())
            .await
            .unwrap()
            .abandon();
        // Settled in the journal only: recorded with its exact usage.
        let settled = meter.reserve(request("settled"), &worst()).await.unwrap();
        meter.forwarded(&settled).unwrap();
        meter.settle(settled, used()).await.unwrap();
        assert_eq!(reserved(&store).await, worst_cost * Decimal::from(3));
        assert!(store.events(&Default::default()).await.unwrap().is_empty());
        journal.sync().unwrap();
    }
    let (journal, recovery) =
        Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
    assert_eq!(
        (recovery.settled, recovery.estimated, recovery.released),
        (1, 1, 1)
    );
    journal.start(store.clone());
    assert!(journal.flush(Duration::from_secs(5)).await);
    let events = store.events(&Default::default()).await.unwrap();
    assert_eq!(events.len(), 2);
    let by_id = |id: &str| events.iter().find(|e| e.request_id == id).unwrap().clone();
    let estimated = by_id("forwarded");
    assert!(estimated.estimated);
    assert_eq!(estimated.cost, worst_cost);
    assert_eq!(estimated.usage, worst());
    assert_eq!(estimated.key_id.as_deref(), Some("k1"));
    let exact = by_id("settled");
    assert!(!exact.estimated);
    assert_eq!(exact.cost, used_cost);
    assert_eq!(reserved(&store).await, Decimal::ZERO, "nothing stays held");
    // The estimated flag survives export and import.
    let line = serde_json::to_string(&estimated).unwrap();
    assert!(line.contains("\"estimated\":true"), "{line}");
    let back: keymeter::ledger::UsageEvent = line.parse().unwrap();
    assert_eq!(back, estimated);
    let plain = serde_json::to_string(&exact).unwrap();
    assert!(
        !plain.contains("estimated"),
        "exact events export as before: {plain}"
    );
    // Replayed records are gone from disk once the store has them; a third start finds nothing.
    drop(journal);
    let (_, again) = Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
    assert_eq!(again, Default::default());
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_what_precedes_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_budget().await;
    {
        let (journal, _) =
            Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
        let meter = meter(&store, &journal);
        let hold = meter.reserve(request("whole"), &worst()).await.unwrap();
        meter.forwarded(&hold).unwrap();
        meter.settle(hold, used()).await.unwrap();
        journal.sync().unwrap();
    }
    // A crash in the middle of a write: half a frame at the end of the segment.
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let torn = frame::encode(
        99,
        &frame::Record::Forwarded {
            request_id: "torn".into(),
        },
    )
    .unwrap();
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&segment, &bytes).unwrap();

    let (journal, recovery) =
        Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
    assert_eq!(recovery.cut_bytes, (torn.len() / 2) as u64);
    assert_eq!(recovery.settled, 1);
    journal.start(store.clone());
    assert!(journal.flush(Duration::from_secs(5)).await);
    let events = store.events(&Default::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].request_id, "whole");
}

#[tokio::test]
async fn one_process_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
    let second = Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom));
    assert!(
        matches!(&second, Err(Error::Config(m)) if m.contains("in use")),
        "{second:?}"
    );
    let id = first.instance_id().to_owned();
    drop(first);
    let (again, _) = Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
    assert_eq!(again.instance_id(), id, "the instance id is kept");
}

#[tokio::test]
async fn finished_segments_are_deleted_and_a_full_journal_refuses_new_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_budget().await;
    let config = JournalConfig::new(dir.path())
        .segment_bytes(2_000)
        .sync(SyncPolicy::Always);
    let (journal, _) = Journal::open(config, Arc::new(OsRandom)).unwrap();
    journal.start(store.clone());
    let metered = meter(&store, &journal);
    for i in 0..40 {
        let hold = metered
            .reserve(request(&format!("r{i}")), &worst())
            .await
            .unwrap();
        metered.forwarded(&hold).unwrap();
        metered.settle(hold, used()).await.unwrap();
    }
    assert!(journal.flush(Duration::from_secs(5)).await);
    let segments = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count()
    };
    assert_eq!(segments(), 1, "only the active segment is left");
    assert!(journal.bytes() <= 2_000 + 1_000, "{}", journal.bytes());
    assert_eq!(store.events(&Default::default()).await.unwrap().len(), 40);

    // A journal whose store never drains it: past its bound, new holds are refused and given back.
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_budget().await;
    let (journal, _) = Journal::open(
        JournalConfig::new(dir.path()).max_bytes(3_000),
        Arc::new(OsRandom),
    )
    .unwrap();
    let full = meter(&store, &journal);
    let mut refused = None;
    for i in 0..40 {
        match full.reserve(request(&format!("r{i}")), &worst()).await {
            Ok(hold) => {
                full.forwarded(&hold).unwrap();
                full.settle(hold, used()).await.unwrap();
            }
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, e) = refused.expect("the journal filled up");
    assert!(at > 0);
    assert_eq!(e.unavailable(), Some(Dependency::Journal), "{e}");
    assert_eq!(Dependency::Journal.code(), "JOURNAL_FULL");
    assert_eq!(
        reserved(&store).await,
        PriceCatalog::bundled()
            .cost(
                "gpt-4o",
                &worst(),
                Utc::now(),
                keymeter::pricing::ServiceTier::Standard
            )
            .unwrap()
            .total
            * Decimal::from(at),
        "the refused hold's reservation was given back; the settled ones wait for the drain"
    );
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics_and_keeps_whole_frames(
        noise in proptest::collection::vec(any::<u8>(), 0..512),
        cut in 0usize..64,
    ) {
        let decoded = frame::decode(&noise);
        prop_assert!(decoded.valid_len <= noise.len());
        // Whole frames before a tail of noise are all read back.
        let mut bytes = Vec::new();
        for seq in 0..3u64 {
            bytes.extend(frame::encode(seq, &frame::Record::Forwarded { request_id: format!("r{seq}") }).unwrap());
        }
        let whole = bytes.len();
        bytes.extend_from_slice(&noise[..cut.min(noise.len())]);
        let decoded = frame::decode(&bytes);
        prop_assert!(decoded.records.len() >= 3);
        prop_assert!(decoded.valid_len >= whole);
    }
}

proptest! {
    /// Bodies that pass the CRC but not the format: each v2 seed frame with bytes of its body overwritten and
    /// its CRC made right again, so the decoder reads into the record's fields. Never a panic; whatever decodes
    /// encodes back to the same records (the fuzz target's property, on the binary reader's paths).
    #[test]
    fn corrupt_binary_bodies_with_good_crcs_never_panic(
        frame_index in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let seed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/journal_frames/segment-v2.log"
        ))
        .unwrap();
        // Find the frame: 4-byte length, 4-byte CRC, body.
        let mut at = 0;
        for _ in 0..frame_index {
            at += 8 + u32::from_le_bytes(seed[at..at + 4].try_into().unwrap()) as usize;
        }
        let len = u32::from_le_bytes(seed[at..at + 4].try_into().unwrap()) as usize;
        let mut bytes = seed[at..at + 8 + len].to_vec();
        // Past version, sequence number and kind: the record's fields.
        for (index, byte) in edits {
            let i = 8 + 10 + index.index(len - 10);
            bytes[i] = byte;
        }
        let crc = crc32c::crc32c(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        let decoded = frame::decode(&bytes);
        let mut again = Vec::new();
        for (seq, record) in &decoded.records {
            again.extend(frame::encode(*seq, record).unwrap());
        }
        prop_assert_eq!(frame::decode(&again).records, decoded.records);
    }
}

/// The fuzz seeds are written by independent implementations of the documented format, version 1 (JSON, what
/// earlier releases wrote) and version 2 (binary), four frames each: hold, forwarded, settle, release. The decoder
/// must read both whole.
#[test]
fn the_documented_format_reads_back() {
    let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/journal_frames");
    let v1 = read_seed(&std::fs::read(format!("{seeds}/segment.log")).unwrap());
    assert_eq!(v1.cost, Decimal::new(2, 3));
    let v2 = read_seed(&std::fs::read(format!("{seeds}/segment-v2.log")).unwrap());
    assert_eq!(
        (
            v2.cost,
            v2.usage.output,
            v2.usage.tier,
            v2.end_user.as_deref()
        ),
        (
            Decimal::new(3, 3),
            300,
            Some(keymeter::pricing::ServiceTier::Priority),
            Some("user-1")
        )
    );
    assert_eq!(
        (v2.at.timestamp(), v2.tags.as_slice(), v2.org.as_deref()),
        (1_796_000_001, ["batch".to_owned()].as_slice(), Some("acme"))
    );
}

/// The settle's event of a seed segment read whole.
fn read_seed(bytes: &[u8]) -> keymeter::ledger::UsageEvent {
    let decoded = frame::decode(bytes);
    assert_eq!(decoded.valid_len, bytes.len());
    let kinds: Vec<_> = decoded
        .records
        .iter()
        .map(|(seq, r)| {
            (
                *seq,
                match r {
                    frame::Record::Hold(_) => "hold",
                    frame::Record::Forwarded { .. } => "forwarded",
                    frame::Record::Settle { .. } => "settle",
                    frame::Record::Release { .. } => "release",
                },
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [(1, "hold"), (2, "forwarded"), (3, "settle"), (4, "release")]
    );
    let frame::Record::Settle { event, .. } = &decoded.records[2].1 else {
        unreachable!()
    };
    (**event).clone()
}

/// Waits (at most 5 s) until `check` holds.
async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1_000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened");
}

/// With the journal, a hold dropped unsettled ends there as it would without: before forwarding its room comes
/// back at once and the journal records the release; after, it is billed at its reservation as `estimated`. A
/// restart then finds nothing left to settle, bill or release: neither is counted twice.
#[tokio::test]
async fn a_dropped_hold_ends_in_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_budget().await;
    let (journal, _) = Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
    journal.start(store.clone());
    let meter = meter(&store, &journal);

    let hold = meter.reserve(request("dropped"), &worst()).await.unwrap();
    assert!(reserved(&store).await > Decimal::ZERO);
    drop(hold);
    eventually(async || reserved(&store).await == Decimal::ZERO).await;
    assert!(store.events(&Default::default()).await.unwrap().is_empty());

    let hold = meter.reserve(request("gone"), &worst()).await.unwrap();
    let amount = hold.amount();
    meter.forwarded(&hold).unwrap();
    drop(hold);
    eventually(async || reserved(&store).await == Decimal::ZERO).await;
    assert!(journal.flush(Duration::from_secs(5)).await);
    let events = store.events(&Default::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].request_id.as_str(),
            events[0].estimated,
            events[0].cost
        ),
        ("gone", true, amount)
    );

    journal.sync().unwrap();
    drop(meter);
    drop(journal);
    let (journal, recovery) =
        Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom)).unwrap();
    assert_eq!(recovery, Default::default(), "nothing left open");
    journal.start(store.clone());
    assert!(journal.flush(Duration::from_secs(5)).await);
    assert_eq!(store.events(&Default::default()).await.unwrap().len(), 1);
    assert_eq!(reserved(&store).await, Decimal::ZERO);
}

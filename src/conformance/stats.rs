//! Checks of [`crate::stats::StatsStore`] (with the [`crate::keys::KeyStore`] whose `last_used_at` it moves).

use std::sync::Arc;

use chrono::{NaiveDate, TimeZone, Utc};

use crate::keys::{KeyStore, VerdictCode};
use crate::stats::{StatsDelta, StatsStore};

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, d).expect("date")
}

fn delta(key: &str, d: u32, valid: u64, rejected: u64, used_hour: Option<u32>) -> StatsDelta {
    let mut counts = [0; VerdictCode::ALL.len()];
    counts[VerdictCode::Valid.index()] = valid;
    counts[VerdictCode::NotFound.index()] = rejected;
    StatsDelta {
        key_id: key.to_owned(),
        day: day(d),
        counts,
        last_used_at: used_hour.map(|h| {
            Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0)
                .single()
                .expect("time")
        }),
    }
}

/// Deltas add up per key and day; `key_stats` returns the days from `since`, oldest first; `last_used_at` only
/// moves forward.
pub async fn stats_add_up_and_move_last_used_forward(
    stats: Arc<dyn StatsStore>,
    keys: Arc<dyn KeyStore>,
) {
    let mut record = crate::conformance::keys::sample("SSSSSSSSSSS1");
    record.previous = None;
    keys.create(&record).await.expect("create");
    stats
        .add_stats(&[
            delta("SSSSSSSSSSS1", 2, 5, 1, Some(10)),
            delta("SSSSSSSSSSS1", 3, 7, 0, Some(9)),
            delta("SSSSSSSSSSS2", 3, 1, 0, None),
        ])
        .await
        .expect("add");
    stats
        .add_stats(&[delta("SSSSSSSSSSS1", 3, 3, 2, Some(8))])
        .await
        .expect("add again");
    let got = stats
        .key_stats("SSSSSSSSSSS1", day(1))
        .await
        .expect("stats");
    let mut d2 = [0; VerdictCode::ALL.len()];
    d2[VerdictCode::Valid.index()] = 5;
    d2[VerdictCode::NotFound.index()] = 1;
    let mut d3 = [0; VerdictCode::ALL.len()];
    d3[VerdictCode::Valid.index()] = 10;
    d3[VerdictCode::NotFound.index()] = 2;
    assert_eq!(got, vec![(day(2), d2), (day(3), d3)]);
    assert_eq!(
        stats
            .key_stats("SSSSSSSSSSS1", day(3))
            .await
            .expect("stats"),
        vec![(day(3), d3)]
    );
    assert!(
        stats
            .key_stats("nobody", day(1))
            .await
            .expect("stats")
            .is_empty()
    );
    let used = keys
        .get("SSSSSSSSSSS1")
        .await
        .expect("get")
        .expect("present")
        .last_used_at;
    // The latest use of every delta (09:00 on the 3rd), not the last one written (08:00).
    assert_eq!(
        used,
        Some(
            Utc.with_ymd_and_hms(2026, 3, 3, 9, 0, 0)
                .single()
                .expect("time")
        )
    );
}

//! Opening a journal: its lock, its instance id, and the recovery of what an earlier process left (settles the
//! store lacks queued again, forwarded holds billed as estimated events, the rest released).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::{
    HoldRecord, Inner, Journal, JournalConfig, Record, Recovery, Segment, State, frame,
    instance_id, io, new_segment, segment_path, sync_dir,
};
use crate::error::{Error, Result};
use crate::ledger::UsageEvent;
use crate::random::RandomSource;

/// What one request left in the journal, gathered during recovery.
#[derive(Debug, Default)]
struct Replayed {
    hold: Option<HoldRecord>,
    forwarded: bool,
    settled: Option<(String, UsageEvent)>,
    released: Option<String>,
}

impl Journal {
    /// Opens (creating) the journal in `config.dir`, takes its lock, and recovers what an earlier process left:
    /// the returned [`Recovery`] says what was queued for the store. Call [`Journal::start`] to drain it.
    ///
    /// # Errors
    /// [`Error::Config`] when another process holds the directory; [`Error::Unavailable`] (journal) when it
    /// cannot be created, read or written.
    pub fn open(
        config: JournalConfig,
        random: Arc<dyn RandomSource>,
    ) -> Result<(Journal, Recovery)> {
        Journal::open_as(config, None, random)
    }

    /// [`Journal::open`] with a given instance id (`KEYMETER_INSTANCE_ID`) instead of the one kept in the
    /// directory.
    ///
    /// # Errors
    /// As [`Journal::open`].
    pub fn open_as(
        config: JournalConfig,
        instance: Option<String>,
        random: Arc<dyn RandomSource>,
    ) -> Result<(Journal, Recovery)> {
        let dir = config.dir.clone();
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .map_err(|e| io("cannot create", &dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("cannot open", &lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(Error::Config(format!(
                "the journal {} is in use by another process (one process per journal directory)",
                dir.display()
            )));
        }
        let instance_id = instance_id(&dir, instance, random.as_ref())?;

        // Read every segment in order.
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io("cannot read", &dir, e))? {
            let entry = entry.map_err(|e| io("cannot read", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut recovery = Recovery::default();
        let mut max_seq = 0;
        let mut requests: BTreeMap<String, Replayed> = BTreeMap::new();
        for &id in &ids {
            let path = segment_path(&dir, id);
            let bytes = std::fs::read(&path).map_err(|e| io("cannot read", &path, e))?;
            let decoded = frame::decode(&bytes);
            if decoded.valid_len < bytes.len() {
                let cut = (bytes.len() - decoded.valid_len) as u64;
                tracing::warn!(
                    segment = %path.display(),
                    bytes = cut,
                    "journal: torn or corrupt tail cut off"
                );
                recovery.cut_bytes += cut;
            }
            for (seq, record) in decoded.records {
                max_seq = max_seq.max(seq);
                let entry = requests.entry(record.request_id().to_owned()).or_default();
                match record {
                    Record::Hold(h) => entry.hold = Some(*h),
                    Record::Forwarded { .. } => entry.forwarded = true,
                    Record::Settle {
                        reservation_id,
                        event,
                    } => entry.settled = Some((reservation_id, *event)),
                    Record::Release { reservation_id, .. } => entry.released = Some(reservation_id),
                }
            }
        }

        // Resolve every request and write the outcome to a fresh segment.
        // Past every sequence number and every segment seen (an empty segment has no records to say its id).
        let active = max_seq.max(ids.last().copied().unwrap_or(0)) + 1;
        let file = new_segment(&dir, active)?;
        let (drain, drain_rx) = mpsc::unbounded_channel();
        let journal = Journal {
            inner: Arc::new(Inner {
                config,
                claimant: format!(
                    "{instance_id}.{}",
                    crate::ledger::event::random_id(random.as_ref())?
                ),
                instance_id,
                state: Mutex::new(State {
                    file,
                    active,
                    active_len: 0,
                    next_seq: active,
                    segments: BTreeMap::from([(
                        active,
                        Segment {
                            path: segment_path(&dir, active),
                            bytes: 0,
                            pending: 0,
                        },
                    )]),
                    holds: HashMap::new(),
                    draws: HashMap::new(),
                    total_bytes: 0,
                    queued: 0,
                    queued_at: std::collections::VecDeque::new(),
                }),
                dirty: AtomicBool::new(false),
                drain,
                drain_rx: Mutex::new(Some(drain_rx)),
                drained: Notify::new(),
                leases: std::sync::OnceLock::new(),
                _lock: lock,
            }),
        };
        for (request_id, r) in requests {
            if let Some((reservation_id, event)) = r.settled {
                recovery.settled += 1;
                journal.append_and_queue(Record::Settle {
                    reservation_id,
                    event: Box::new(event),
                })?;
            } else if let Some(reservation_id) = r.released {
                recovery.released += 1;
                journal.append_and_queue(Record::Release {
                    request_id,
                    reservation_id,
                })?;
            } else if let Some(hold) = r.hold {
                if r.forwarded {
                    let event = hold.estimated_event(random.as_ref())?;
                    tracing::warn!(
                        request_id = %hold.request_id,
                        amount = %hold.amount,
                        "journal replay: forwarded but never settled; billing the reservation as estimated"
                    );
                    recovery.estimated += 1;
                    journal.append_and_queue(Record::Settle {
                        reservation_id: hold.reservation_id,
                        event: Box::new(event),
                    })?;
                } else {
                    recovery.released += 1;
                    journal.append_and_queue(Record::Release {
                        request_id,
                        reservation_id: hold.reservation_id,
                    })?;
                }
            }
        }
        {
            let state = journal.lock();
            state
                .file
                .sync_data()
                .map_err(|e| io("cannot sync", &dir, e))?;
        }
        for id in ids {
            let path = segment_path(&dir, id);
            std::fs::remove_file(&path).map_err(|e| io("cannot delete", &path, e))?;
        }
        sync_dir(&dir)?;
        if recovery != Recovery::default() {
            tracing::info!(
                settled = recovery.settled,
                estimated = recovery.estimated,
                released = recovery.released,
                cut_bytes = recovery.cut_bytes,
                "journal replayed"
            );
        }
        Ok((journal, recovery))
    }
}

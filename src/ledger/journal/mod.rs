//! The journal: a local write-ahead log of holds and settles, so an answer a client received is billed even when
//! the process is killed or the store is down.
//!
//! A [`Meter`](crate::ledger::Meter) with a journal writes, for each request, a `hold` record after the
//! reservation, a `forwarded` record before the request goes upstream, then a `settle` (the priced event) or a
//! `release`. [`Meter::settle`](crate::ledger::Meter::settle) returns once its record is written (`write(2)`
//! returned: a process crash loses nothing); the **drain**, a background task, then records the event in the
//! store, retrying while the store cannot be reached. Records reach the disk (`fsync`) at least every
//! [`SyncPolicy::Every`] interval (default 10 ms), or before the call returns with [`SyncPolicy::Always`]; a
//! *machine* crash (power loss) can lose at most that interval of records.
//!
//! **Recovery** ([`Journal::open`]) reads every segment, cuts a torn or corrupt tail, and resolves each request:
//! a settle the store may lack is recorded again (idempotent by request id); a hold that was `forwarded` but
//! never settled is billed at its reservation as an `estimated` event; a hold never forwarded is released. The
//! outcome is written to a fresh segment, drained like any other, and the old segments are deleted.
//!
//! **Segments** (the format is in [`frame`]) rotate at [`JournalConfig::segment_bytes`]; one is deleted once
//! every hold in it is settled or released and the store has confirmed its settles. Past
//! [`JournalConfig::max_bytes`] on disk (a store that stays down) new holds are refused with
//! [`Error::Unavailable`] ([`Dependency::Journal`], `JOURNAL_FULL`); settles and releases are always written.
//!
//! One process per directory: [`Journal::open`] takes an exclusive lock on `LOCK`, held until the journal is
//! dropped.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::ledger::journal::{Journal, JournalConfig};
//! use keymeter::ledger::{Meter, MeteredRequest, Payer};
//! use keymeter::pricing::{PriceCatalog, Usage};
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Arc::new(MemoryStore::new());
//! let (journal, recovered) = Journal::open(JournalConfig::new(dir.path()), Arc::new(OsRandom))?;
//! assert_eq!(recovered.estimated, 0);
//! journal.start(store.clone());
//! let meter = Meter::new(store.clone(), Arc::new(PriceCatalog::bundled())).with_journal(journal.clone());
//!
//! let hold = meter.reserve(MeteredRequest::new(Payer::owner("alice"), "gpt-4o"), &Usage { input: 100, output: 50, ..Usage::default() }).await?;
//! meter.forwarded(&hold)?;
//! let metered = meter.settle(hold, Usage { input: 80, output: 20, ..Usage::default() }).await?; // in the journal
//! journal.flush(std::time::Duration::from_secs(5)).await;                                       // in the store
//! # use keymeter::ledger::Ledger;
//! assert_eq!(store.events(&Default::default()).await?.len(), 1);
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

mod body;
mod carve;
mod drain;
pub mod frame;
mod heartbeat;
mod hold;
mod recovery;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::error::{Dependency, Error, Result};
use crate::ledger::{Ledger, UsageEvent};
use crate::random::RandomSource;

pub use frame::Record;
pub use heartbeat::{CLAIM_TTL, HEARTBEAT, spawn_sweeper};
pub use hold::HoldRecord;

/// When records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fsync` before every append returns: nothing is lost even to a power cut, at the cost of a disk flush per
    /// record.
    Always,
    /// `fsync` at least this often (a background task); a process crash loses nothing, a power cut at most this
    /// interval of records.
    Every(Duration),
}

/// Where the journal lives and how it behaves.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory (created if missing, mode 0700).
    pub dir: PathBuf,
    /// When records reach the disk (default every 10 ms).
    pub sync: SyncPolicy,
    /// A segment rotates past this many bytes (default 16 MiB).
    pub segment_bytes: u64,
    /// Past this many bytes on disk new holds are refused with `JOURNAL_FULL` (default 1 GiB).
    pub max_bytes: u64,
    /// How long this instance's claims live without a heartbeat (default [`CLAIM_TTL`]); the heartbeat runs
    /// every third of it.
    pub claim_ttl: chrono::Duration,
}

impl JournalConfig {
    /// The defaults in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            sync: SyncPolicy::Every(Duration::from_millis(10)),
            segment_bytes: 16 << 20,
            max_bytes: 1 << 30,
            claim_ttl: CLAIM_TTL,
        }
    }

    /// Sets how long claims live without a heartbeat (at least one second).
    #[must_use]
    pub fn claim_ttl(mut self, ttl: chrono::Duration) -> Self {
        self.claim_ttl = ttl.max(chrono::Duration::seconds(1));
        self
    }

    /// Sets the sync policy.
    #[must_use]
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// Sets the segment size.
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes.max(1);
        self
    }

    /// Sets the size past which new holds are refused.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }
}

/// What recovery found and queued for the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Settles found in the journal, recorded again (idempotent).
    pub settled: usize,
    /// Holds forwarded but never settled, billed at their reservation as `estimated`.
    pub estimated: usize,
    /// Holds released or never forwarded, given back.
    pub released: usize,
    /// Bytes of torn or corrupt tails cut off.
    pub cut_bytes: u64,
}

/// The store work the drain does for one record.
#[derive(Debug)]
enum Op {
    Settle {
        reservation_id: String,
        event: Box<UsageEvent>,
    },
    Release {
        reservation_id: String,
    },
}

#[derive(Debug)]
struct Queued {
    segment: u64,
    op: Op,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Holds not yet settled or released, plus settles and releases the store has not confirmed.
    pending: usize,
}

#[derive(Debug)]
struct State {
    file: File,
    active: u64,
    active_len: u64,
    next_seq: u64,
    segments: BTreeMap<u64, Segment>,
    /// The segments holding each open hold's records (its `hold`, and its `forwarded` when that went to a later
    /// segment), by request id: they stay until the hold is settled or released.
    holds: HashMap<String, Vec<u64>>,
    /// The open holds drawn from budget leases, by request id: what the drain carves into reservations of their
    /// own now and then ([`carve`]), so a lost machine's are billed.
    draws: HashMap<String, HoldRecord>,
    total_bytes: u64,
    /// Records queued for the drain and not yet confirmed.
    queued: usize,
    /// When each of them was queued, oldest first (the drain confirms in order): the drain's lag.
    queued_at: std::collections::VecDeque<std::time::Instant>,
}

struct Inner {
    config: JournalConfig,
    instance_id: String,
    /// This run's name for its claims: the instance id and a fresh suffix, so a reservation an earlier run of
    /// the instance left without a journal record (a crash between the two) is never renewed, and lapses.
    claimant: String,
    state: Mutex<State>,
    dirty: AtomicBool,
    drain: mpsc::UnboundedSender<Queued>,
    drain_rx: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    drained: Notify,
    /// The meter's budget leases, told when the store holds a settle of one of their draws.
    leases: std::sync::OnceLock<crate::ledger::lease::Leases>,
    _lock: File,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.config.dir)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// The write-ahead journal (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Unavailable {
        dependency: Dependency::Journal,
        source: Box::new(Error::Internal(format!(
            "journal: {what} {}: {e}",
            path.display()
        ))),
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.log"))
}

fn new_segment(dir: &Path, id: u64) -> Result<File> {
    let path = segment_path(dir, id);
    let mut options = OpenOptions::new();
    options.append(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&path)
        .map_err(|e| io("cannot create", &path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))?;
    Ok(())
}

/// The instance id kept in `dir/instance` (made once, atomically), unless `given`.
fn instance_id(dir: &Path, given: Option<String>, random: &dyn RandomSource) -> Result<String> {
    if let Some(id) = given {
        return Ok(id);
    }
    let path = dir.join("instance");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let id = format!("inst_{}", crate::ledger::event::random_id(random)?);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io("cannot write", dir, e))?;
    tmp.write_all(id.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io("cannot write", &path, e))?;
    tmp.persist(&path)
        .map_err(|e| io("cannot write", &path, e.error))?;
    Ok(id)
}

impl Journal {
    /// Starts the background work: the drain into `ledger`, the heartbeat that renews this instance's claims
    /// and sweeps lapsed ones (see [`HEARTBEAT`]) and, with [`SyncPolicy::Every`], the periodic `fsync`. Needs a
    /// tokio runtime. Calling it again does nothing.
    pub fn start(&self, ledger: Arc<dyn Ledger>) {
        let Some(rx) = self
            .inner
            .drain_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        tokio::spawn(heartbeat::beat(
            Arc::downgrade(&self.inner),
            ledger.clone(),
            Some((self.inner.claimant.clone(), self.inner.config.claim_ttl)),
        ));
        tokio::spawn(drain::drain(Arc::downgrade(&self.inner), ledger, rx));
        if let SyncPolicy::Every(interval) = self.inner.config.sync {
            tokio::spawn(drain::syncer(Arc::downgrade(&self.inner), interval));
        }
    }

    /// How long this instance's claims live without a heartbeat ([`JournalConfig::claim_ttl`]).
    pub fn claim_ttl(&self) -> chrono::Duration {
        self.inner.config.claim_ttl
    }

    /// The name this run's claims carry ([`crate::ledger::Claim::instance`]): the instance id and a suffix fresh
    /// at each start. The heartbeat renews only these, so a reservation an earlier run left without a journal
    /// record lapses and is billed rather than renewed for ever.
    pub fn claimant(&self) -> &str {
        &self.inner.claimant
    }

    /// This instance's stable id (`KEYMETER_INSTANCE_ID`, else the one kept in the directory).
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Bytes of the segments on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// Records written but not yet confirmed by the store.
    pub fn backlog(&self) -> usize {
        self.lock().queued
    }

    /// How long the oldest record not yet confirmed by the store has waited (zero when none waits): the drain's
    /// lag behind the requests.
    pub fn lag(&self) -> Duration {
        self.lock()
            .queued_at
            .front()
            .map_or(Duration::ZERO, std::time::Instant::elapsed)
    }

    /// Waits until the store has confirmed every record queued so far, or `timeout` passes; returns whether it
    /// did. Also `fsync`s.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let done = loop {
            let notified = self.inner.drained.notified();
            {
                let mut state = self.lock();
                if state.queued == 0 {
                    empty_active_if_done(&mut state, 0);
                    break true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break self.lock().queued == 0;
            }
        };
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "journal: fsync failed");
        }
        done
    }

    /// `fsync`s the active segment now.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (journal) when the disk refuses.
    pub fn sync(&self) -> Result<()> {
        let file = {
            let state = self.lock();
            state.file.try_clone()
        }
        .map_err(|e| io("cannot sync", self.dir(), e))?;
        self.inner.dirty.store(false, Ordering::Relaxed);
        file.sync_data()
            .map_err(|e| io("cannot sync", self.dir(), e))
    }

    /// Tells `leases` each time the store has taken a settle of one of their draws ([`Leases::settled`]), so
    /// the draw's room leaves the lease in memory as it has in the store. The first leases given stay.
    ///
    /// [`Leases::settled`]: crate::ledger::lease::Leases::settled
    pub fn attach(&self, leases: crate::ledger::lease::Leases) {
        let _ = self.inner.leases.set(leases);
    }

    /// Writes a `hold` record; refuses with `JOURNAL_FULL` when the journal is past its size bound.
    ///
    /// # Errors
    /// [`Error::Unavailable`] ([`Dependency::Journal`]) when full or when the disk refuses.
    pub fn hold(&self, hold: HoldRecord) -> Result<()> {
        let drawn = crate::ledger::lease::drawn(&hold.reservation_id).is_some();
        let record = Record::Hold(Box::new(hold));
        let mut state = self.lock();
        if state.total_bytes >= self.inner.config.max_bytes {
            return Err(Error::Unavailable {
                dependency: Dependency::Journal,
                source: Box::new(Error::Internal(format!(
                    "journal: {} bytes waiting for the store, over the bound of {}",
                    state.total_bytes, self.inner.config.max_bytes
                ))),
            });
        }
        self.append_locked(&mut state, &record)?;
        // A drawn hold is kept until it ends, for the drain's carving ([`Ledger::carve`]).
        if drawn && let Record::Hold(hold) = record {
            state.draws.insert(hold.request_id.clone(), *hold);
        }
        Ok(())
    }

    /// Writes a `forwarded` record: the request is about to go upstream.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (journal) when the disk refuses.
    pub fn forwarded(&self, request_id: &str) -> Result<()> {
        self.append(Record::Forwarded {
            request_id: request_id.to_owned(),
        })
        .map(|_| ())
    }

    /// Writes a `settle` record and queues the event for the store.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (journal) when the disk refuses (nothing is queued then).
    pub fn settle(&self, reservation_id: &str, event: UsageEvent) -> Result<()> {
        self.append_and_queue(Record::Settle {
            reservation_id: reservation_id.to_owned(),
            event: Box::new(event),
        })
    }

    /// Writes a `release` record. The caller frees the reservation in the store itself, except a hold drawn
    /// from a lease ([`crate::ledger::lease`]): the drain frees it, in order after its carving ([`Ledger::carve`]).
    ///
    /// # Errors
    /// [`Error::Unavailable`] (journal) when the disk refuses.
    pub fn release(&self, request_id: &str, reservation_id: &str) -> Result<()> {
        let record = Record::Release {
            request_id: request_id.to_owned(),
            reservation_id: reservation_id.to_owned(),
        };
        if crate::ledger::lease::drawn(reservation_id).is_some() {
            return self.append_and_queue(record);
        }
        self.append(record).map(|_| ())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append_and_queue(&self, record: Record) -> Result<()> {
        let mut state = self.lock();
        let segment = self.append_locked(&mut state, &record)?;
        let op = match record {
            Record::Settle {
                reservation_id,
                event,
            } => Op::Settle {
                reservation_id,
                event,
            },
            Record::Release { reservation_id, .. } => Op::Release { reservation_id },
            Record::Hold(_) | Record::Forwarded { .. } => return Ok(()),
        };
        if let Some(s) = state.segments.get_mut(&segment) {
            s.pending += 1;
        }
        state.queued += 1;
        state.queued_at.push_back(std::time::Instant::now());
        drop(state);
        // The receiver lives as long as the journal's drain; without one started, records wait in the channel.
        let _ = self.inner.drain.send(Queued { segment, op });
        Ok(())
    }

    fn append(&self, record: Record) -> Result<u64> {
        let mut state = self.lock();
        self.append_locked(&mut state, &record)
    }

    /// Writes `record` to the active segment (rotating first when it is full) and keeps the accounting of open
    /// holds; returns the segment it went to.
    fn append_locked(&self, state: &mut State, record: &Record) -> Result<u64> {
        let dir = &self.inner.config.dir;
        let frame = frame::encode(state.next_seq, record)?;
        if state.active_len > 0
            && state.active_len + frame.len() as u64 > self.inner.config.segment_bytes
        {
            self.rotate(state)?;
        }
        if let Err(e) = state.file.write_all(&frame) {
            // Leave no partial frame before the next one.
            let _ = state.file.set_len(state.active_len);
            return Err(io("cannot write", dir, e));
        }
        if self.inner.config.sync == SyncPolicy::Always {
            state
                .file
                .sync_data()
                .map_err(|e| io("cannot sync", dir, e))?;
        } else {
            self.inner.dirty.store(true, Ordering::Relaxed);
        }
        let len = frame.len() as u64;
        state.next_seq += 1;
        state.active_len += len;
        state.total_bytes += len;
        let active = state.active;
        if let Some(s) = state.segments.get_mut(&active) {
            s.bytes += len;
        }
        match record {
            Record::Hold(h) => {
                if let Some(s) = state.segments.get_mut(&active) {
                    s.pending += 1;
                }
                state.holds.insert(h.request_id.clone(), vec![active]);
            }
            Record::Forwarded { request_id } => {
                // The marker that turns a crash's release into a bill must outlive its segment's other records.
                if let Some(segments) = state.holds.get_mut(request_id)
                    && !segments.contains(&active)
                {
                    segments.push(active);
                    if let Some(s) = state.segments.get_mut(&active) {
                        s.pending += 1;
                    }
                }
            }
            Record::Settle { event, .. } => close_hold(state, &event.request_id),
            Record::Release { request_id, .. } => close_hold(state, request_id),
        }
        Ok(active)
    }

    fn rotate(&self, state: &mut State) -> Result<()> {
        let dir = &self.inner.config.dir;
        state
            .file
            .sync_data()
            .map_err(|e| io("cannot sync", dir, e))?;
        let id = state.next_seq;
        state.file = new_segment(dir, id)?;
        let previous = state.active;
        state.active = id;
        state.active_len = 0;
        state.segments.insert(
            id,
            Segment {
                path: segment_path(dir, id),
                bytes: 0,
                pending: 0,
            },
        );
        delete_if_done(state, previous);
        Ok(())
    }

    /// Counts the records of `segments` (one entry per record) as in the store, under one lock for the batch.
    fn confirm(&self, segments: impl Iterator<Item = u64>) {
        let mut state = self.lock();
        for segment in segments {
            state.queued = state.queued.saturating_sub(1);
            state.queued_at.pop_front();
            if let Some(s) = state.segments.get_mut(&segment) {
                s.pending = s.pending.saturating_sub(1);
            }
            delete_if_done(&mut state, segment);
        }
        drop(state);
        self.inner.drained.notify_waiters();
    }
}

fn close_hold(state: &mut State, request_id: &str) {
    state.draws.remove(request_id);
    for segment in state.holds.remove(request_id).unwrap_or_default() {
        if let Some(s) = state.segments.get_mut(&segment) {
            s.pending = s.pending.saturating_sub(1);
        }
        delete_if_done(state, segment);
    }
}

/// The active segment is emptied in place once nothing in it is pending and it has grown past this (or at a
/// flush that drained everything), so a quiet journal stays small without rotating.
const EMPTY_ACTIVE_PAST: u64 = 1 << 20;

/// Deletes `segment` once it is not the active one and nothing in it is pending; empties the active one in
/// place under the same condition when it has grown past [`EMPTY_ACTIVE_PAST`] (`always`: at any size).
fn delete_if_done(state: &mut State, segment: u64) {
    if segment == state.active {
        empty_active_if_done(state, EMPTY_ACTIVE_PAST);
        return;
    }
    let done = state.segments.get(&segment).is_some_and(|s| s.pending == 0);
    if !done {
        return;
    }
    if let Some(s) = state.segments.remove(&segment) {
        state.total_bytes = state.total_bytes.saturating_sub(s.bytes);
        if let Err(e) = std::fs::remove_file(&s.path) {
            tracing::warn!(segment = %s.path.display(), error = %e, "journal: cannot delete a finished segment");
        }
    }
}

fn empty_active_if_done(state: &mut State, past: u64) {
    let active = state.active;
    let Some(s) = state.segments.get_mut(&active) else {
        return;
    };
    if s.pending > 0 || state.active_len == 0 || state.active_len < past {
        return;
    }
    match state.file.set_len(0) {
        Ok(()) => {
            state.total_bytes = state.total_bytes.saturating_sub(s.bytes);
            s.bytes = 0;
            state.active_len = 0;
        }
        Err(e) => {
            tracing::warn!(segment = %s.path.display(), error = %e, "journal: cannot empty a finished segment")
        }
    }
}

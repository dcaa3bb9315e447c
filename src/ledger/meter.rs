//! The [`Meter`]: what a gateway calls around one provider request. It knows the budget scopes of the caller's
//! key (key, owner, org), prices the worst case from the catalog and reserves it, then prices the provider's own
//! usage object and settles, each in one call. Time and ids come from the clock and random source it was built
//! with.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, Meter, MeteredRequest, Payer};
//! use keymeter::pricing::{PriceCatalog, Usage, UsageFormat};
//! use keymeter::store::MemoryStore;
//! use rust_decimal::Decimal;
//!
//! let store = Arc::new(MemoryStore::new());
//! store.set_budget(&Budget::new(BudgetScope::Owner("alice".into()), Decimal::new(5, 0), BudgetPeriod::Monthly)?).await?;
//! let meter = Meter::new(store.clone(), Arc::new(PriceCatalog::bundled()));
//!
//! let request = MeteredRequest::new(Payer::owner("alice").org("acme"), "claude-sonnet-4-5").request_id("msg_01");
//! let hold = meter.reserve(request, &Usage { input: 2_000, output: 1_024, ..Usage::default() }).await?;
//! let body = r#"{"usage": {"input_tokens": 1500, "output_tokens": 300}}"#;
//! let metered = meter.settle(hold, (UsageFormat::Anthropic, body)).await?;
//! assert_eq!(metered.cost.total, Decimal::new(9, 3)); // 1500 × $3/M + 300 × $15/M
//! assert!(!metered.duplicate);
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::clock::{Clock, SystemClock};
use crate::credentials::CredentialSource;
use crate::error::{Error, Result};
use crate::keys::KeyRecord;
use crate::ledger::journal::{HoldRecord, Journal};
use crate::ledger::lease::{LeaseConfig, Leases};
use crate::ledger::{BudgetScope, Claim, Ledger, Recorded, Reservation, UsageEvent};
use crate::pricing::normalize::normalize;
use crate::pricing::{Cost, PriceCatalog, Region, ServiceTier, Terms, Usage, UsageFormat};
use crate::random::{BufferedOsRandom, RandomSource};

/// Who pays for a request: the key, owner and org whose budgets it counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payer {
    /// The inbound key, if the request came with one.
    pub key_id: Option<String>,
    /// The owner (user).
    pub owner: String,
    /// The organisation, if any.
    pub org: Option<String>,
    /// The tags of the key: every event of the key carries them, with the request's own.
    pub tags: Vec<String>,
}

impl Payer {
    /// An owner with no key and no org.
    pub fn owner(owner: impl Into<String>) -> Self {
        Payer {
            key_id: None,
            owner: owner.into(),
            org: None,
            tags: Vec::new(),
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Sets the organisation.
    #[must_use]
    pub fn org(mut self, org: impl Into<String>) -> Self {
        self.org = Some(org.into());
        self
    }

    /// The budget scopes this payer's spend counts against: key, owner, org (those present).
    pub fn scopes(&self) -> Vec<BudgetScope> {
        BudgetScope::of(self.key_id.as_deref(), &self.owner, self.org.as_deref())
    }
}

/// The key's id, owner and org, from the key as the axum extractor hands it over.
impl From<&Arc<KeyRecord>> for Payer {
    fn from(key: &Arc<KeyRecord>) -> Self {
        Payer::from(&**key)
    }
}

/// The key's id, owner, org and tags.
impl From<&KeyRecord> for Payer {
    fn from(key: &KeyRecord) -> Self {
        Payer {
            key_id: Some(key.id.clone()),
            owner: key.owner.clone(),
            org: key.org.clone(),
            tags: key.tags.clone(),
        }
    }
}

/// One request to meter: who pays, which model, and what the ledger should remember of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredRequest {
    payer: Payer,
    model: String,
    request_id: Option<String>,
    terms: Terms,
    credential_source: Option<CredentialSource>,
    at: Option<DateTime<Utc>>,
    tags: Vec<String>,
    end_user: Option<String>,
}

impl MeteredRequest {
    /// A request by `payer` to `model` (a catalog id, alias or `provider/id`), at the standard tier.
    pub fn new(payer: impl Into<Payer>, model: impl Into<String>) -> Self {
        MeteredRequest {
            payer: payer.into(),
            model: model.into(),
            request_id: None,
            terms: Terms::default(),
            credential_source: None,
            at: None,
            tags: Vec::new(),
            end_user: None,
        }
    }

    /// The request's tags (at most 16 of 64 characters: [`crate::ledger::event::check_tags`]), kept on its
    /// event for reports by tag.
    #[must_use]
    pub fn tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// The event's tags: the payer's key's, then the request's own not already among them.
    fn event_tags(&self) -> Vec<String> {
        let mut tags = self.payer.tags.clone();
        for t in &self.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags
    }

    /// Whom the request was made for, in the caller's own terms, kept on its event for reports by end user.
    #[must_use]
    pub fn end_user(mut self, end_user: impl Into<String>) -> Self {
        self.end_user = Some(end_user.into());
        self
    }

    /// The idempotency key: the same request id is recorded once however often it is settled or sent (default:
    /// a fresh random one).
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// The service tier priced (default standard) unless the provider's usage names flex, priority or batch.
    #[must_use]
    pub fn tier(mut self, tier: ServiceTier) -> Self {
        self.terms.tier = tier;
        self
    }

    /// Where the request is processed (default global) unless the provider's usage names a region.
    #[must_use]
    pub fn region(mut self, region: Region) -> Self {
        self.terms.region = region;
        self
    }

    /// Whose provider key paid (recorded with the event).
    #[must_use]
    pub fn credential_source(mut self, source: CredentialSource) -> Self {
        self.credential_source = Some(source);
        self
    }

    /// When the request happened (default: the meter's clock at settle or record time). Prices are those in
    /// force then.
    #[must_use]
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = Some(at);
        self
    }

    /// Who pays.
    pub fn payer(&self) -> &Payer {
        &self.payer
    }
}

/// A usage as a provider reported it, or already canonical. A provider's usage object (or a whole response
/// holding one) comes with its format, as text in whatever form the host has it:
///
/// ```
/// use keymeter::ledger::ReportedUsage;
/// use keymeter::pricing::UsageFormat::OpenAi;
///
/// let text = r#"{"prompt_tokens": 10, "completion_tokens": 2}"#;
/// let _: ReportedUsage = (OpenAi, text).into();
/// let _: ReportedUsage = (OpenAi, text.to_owned()).into();
/// let _: ReportedUsage = (OpenAi, bytes::Bytes::from(text)).into();
/// let _: ReportedUsage = (OpenAi, serde_json::json!({"prompt_tokens": 10, "completion_tokens": 2})).into();
/// ```
#[derive(Debug, Clone)]
pub enum ReportedUsage<'a> {
    /// A provider's usage object (or a whole response holding one), normalised inside.
    Provider(UsageFormat, std::borrow::Cow<'a, str>),
    /// Canonical, disjoint classes.
    Canonical(Usage),
}

impl<'a> From<(UsageFormat, &'a str)> for ReportedUsage<'a> {
    fn from((format, text): (UsageFormat, &'a str)) -> Self {
        ReportedUsage::Provider(format, text.into())
    }
}

impl<'a> From<(UsageFormat, &'a String)> for ReportedUsage<'a> {
    fn from((format, text): (UsageFormat, &'a String)) -> Self {
        ReportedUsage::Provider(format, text.as_str().into())
    }
}

impl From<(UsageFormat, String)> for ReportedUsage<'_> {
    fn from((format, text): (UsageFormat, String)) -> Self {
        ReportedUsage::Provider(format, text.into())
    }
}

/// A body as it came off the wire; bytes that are not UTF-8 fail as a usage that does not parse.
impl From<(UsageFormat, bytes::Bytes)> for ReportedUsage<'_> {
    fn from((format, body): (UsageFormat, bytes::Bytes)) -> Self {
        ReportedUsage::Provider(format, String::from_utf8_lossy(&body).into_owned().into())
    }
}

impl<'a> From<(UsageFormat, &'a [u8])> for ReportedUsage<'a> {
    fn from((format, body): (UsageFormat, &'a [u8])) -> Self {
        ReportedUsage::Provider(format, String::from_utf8_lossy(body))
    }
}

impl From<(UsageFormat, serde_json::Value)> for ReportedUsage<'_> {
    fn from((format, value): (UsageFormat, serde_json::Value)) -> Self {
        ReportedUsage::Provider(format, value.to_string().into())
    }
}

impl From<(UsageFormat, &serde_json::Value)> for ReportedUsage<'_> {
    fn from((format, value): (UsageFormat, &serde_json::Value)) -> Self {
        ReportedUsage::Provider(format, value.to_string().into())
    }
}

impl From<Usage> for ReportedUsage<'_> {
    fn from(usage: Usage) -> Self {
        ReportedUsage::Canonical(usage)
    }
}

impl ReportedUsage<'_> {
    fn canonical(self) -> Result<Usage> {
        match self {
            ReportedUsage::Provider(format, text) => normalize(format, &text),
            ReportedUsage::Canonical(usage) => Ok(usage),
        }
    }
}

/// A reservation held for a request in flight: settle it with [`Meter::settle`] or give it back with
/// [`Meter::release`]; both consume it.
///
/// A hold dropped unsettled (a `?` between reserve and settle, a task cancelled) does what a crash recovery
/// would: before [`Meter::forwarded`] it gives its reservation back at once; after, the request may
/// have cost something, so it is billed at its reservation as an `estimated` event. Either runs in the
/// background on the current tokio runtime (and is journaled first when the meter has a journal); outside a
/// runtime the reservation lapses and the store's sweep bills it as `estimated` ([`Ledger::sweep`]).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, Meter, MeteredRequest, Payer};
/// use keymeter::pricing::{PriceCatalog, Usage};
/// use keymeter::store::MemoryStore;
///
/// let store = Arc::new(MemoryStore::new());
/// let alice = BudgetScope::Owner("alice".into());
/// store.set_budget(&Budget::new(alice.clone(), rust_decimal::Decimal::ONE, BudgetPeriod::Monthly)?).await?;
/// let meter = Meter::new(store.clone(), Arc::new(PriceCatalog::bundled()));
/// let worst = Usage { input: 1_000, output: 1_000, ..Usage::default() };
/// let hold = meter.reserve(MeteredRequest::new(Payer::owner("alice"), "gpt-4o"), &worst).await?;
/// drop(hold); // an error path that never settles
/// tokio::task::yield_now().await;
/// let status = store.budget_status(&alice, chrono::Utc::now()).await?.unwrap();
/// assert_eq!(status.reserved, rust_decimal::Decimal::ZERO);
/// # Ok::<(), keymeter::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct Hold {
    request: MeteredRequest,
    request_id: String,
    reservation: Reservation,
    worst: Usage,
    forwarded: std::sync::atomic::AtomicBool,
    /// Ends the hold if it is dropped unsettled; `None` once settled or released.
    guard: Option<Meter>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some(meter) = self.guard.take() else {
            return;
        };
        let forwarded = self.forwarded.load(std::sync::atomic::Ordering::Acquire);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                request_id = %self.request_id,
                "a hold was dropped unsettled outside a tokio runtime: its reservation stays until it expires"
            );
            return;
        };
        // A disarmed copy, ended by the meter as if the caller had done it.
        let hold = Hold {
            request: self.request.clone(),
            request_id: self.request_id.clone(),
            reservation: self.reservation.clone(),
            worst: self.worst,
            forwarded: std::sync::atomic::AtomicBool::new(forwarded),
            guard: None,
        };
        runtime.spawn(async move {
            let request_id = hold.request_id.clone();
            let worst = hold.worst;
            if forwarded {
                tracing::warn!(%request_id, amount = %hold.reservation.amount,
                    "a forwarded request's hold was dropped unsettled: billing its reservation as estimated");
                if let Err(e) = meter.settle_estimated(hold, worst).await {
                    tracing::error!(%request_id, error = %e, "could not bill a dropped hold; its reservation expires");
                }
            } else {
                tracing::info!(%request_id, "a hold was dropped before forwarding: its reservation is given back");
                if let Err(e) = meter.release(hold).await {
                    tracing::warn!(%request_id, error = %e, "could not give back a dropped hold; it expires");
                }
            }
        });
    }
}

/// A settle that failed, with its hold, so the caller can retry it or settle it otherwise
/// ([`Meter::try_settle`]). Turned into an [`Error`] (`?`), the hold is dropped and ends as [`Hold`] says.
#[derive(Debug)]
pub struct Unsettled {
    /// Why the settle failed.
    pub error: Error,
    /// The hold, still held.
    pub hold: Hold,
}

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request {} not settled: {}",
            self.hold.request_id, self.error
        )
    }
}

impl std::error::Error for Unsettled {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<Unsettled> for Error {
    fn from(u: Unsettled) -> Self {
        u.error
    }
}

impl Hold {
    /// Settled or released: nothing left for the drop to do.
    fn disarm(&mut self) {
        self.guard = None;
    }

    /// Lets the hold go without ending it, as a crash would: its reservation stays until the journal's next
    /// start ends it, or until it lapses and the store's sweep bills it as `estimated` ([`Ledger::sweep`]). For tests of crash recovery, and hosts that end reservations
    /// themselves through the [`Ledger`].
    pub fn abandon(mut self) {
        self.disarm();
    }

    /// The reservation (its id, amount, expiry and the budgets it holds).
    pub fn reservation(&self) -> &Reservation {
        &self.reservation
    }

    /// The amount reserved: the worst case's price.
    pub fn amount(&self) -> Decimal {
        self.reservation.amount
    }

    /// The request's idempotency key.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Sets whose provider key paid, once it is known (after the reservation, before the settle).
    #[must_use]
    pub fn credential_source(mut self, source: CredentialSource) -> Self {
        self.request.credential_source = Some(source);
        self
    }
}

/// What a settle or record did: the cost, the usage priced and the event recorded (once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    /// The exact cost, line by line.
    pub cost: Cost,
    /// The canonical usage priced.
    pub usage: Usage,
    /// The event's id (the first one's, for a duplicate).
    pub event_id: String,
    /// The request id recorded.
    pub request_id: String,
    /// Whether the request id was already recorded (nothing was added).
    pub duplicate: bool,
    /// Whether this exact usage replaced the request's `estimated` event (an estimate gives way to the exact usage).
    pub replaced: bool,
}

impl Metered {
    fn new(event: UsageEvent, cost: Cost, recorded: Recorded) -> Self {
        Metered {
            cost,
            usage: event.usage,
            event_id: recorded.event_id,
            request_id: event.request_id,
            duplicate: recorded.duplicate,
            replaced: recorded.replaced,
        }
    }
}

/// Prices, reserves and records requests against a [`Ledger`] and a [`PriceCatalog`].
#[derive(Debug, Clone)]
pub struct Meter {
    ledger: Arc<dyn Ledger>,
    catalog: Arc<PriceCatalog>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    hold_ttl: Duration,
    journal: Option<Journal>,
    lease_config: Option<LeaseConfig>,
    /// Built at the first reservation (whatever the order of the builder's calls) and shared by clones.
    leases: Arc<std::sync::OnceLock<Leases>>,
}

impl Meter {
    /// A meter on `ledger` pricing from `catalog`, with the system clock, the OS random source and holds that
    /// expire after 10 minutes.
    pub fn new(ledger: Arc<dyn Ledger>, catalog: Arc<PriceCatalog>) -> Self {
        Meter {
            ledger,
            catalog,
            clock: Arc::new(SystemClock),
            random: Arc::new(BufferedOsRandom),
            hold_ttl: Duration::minutes(10),
            journal: None,
            lease_config: None,
            leases: Arc::default(),
        }
    }

    /// Reserves against budget leases (DESIGN §14, [`crate::ledger::lease`]) when the meter has a journal: a
    /// request without a caller's request id draws its hold from its scopes' lease in memory, and the journal's
    /// drain settles it in the store with the lease's share. A request the lease cannot cover, or one with its own
    /// request id (claimed in the store), is reserved in the store as without leases. Without a journal this
    /// does nothing: a hold in memory only would die unbilled with the process.
    #[must_use]
    pub fn with_leases(mut self, config: LeaseConfig) -> Self {
        self.lease_config = Some(config);
        self
    }

    /// The budget leases, once the first reservation has made them ([`Meter::with_leases`]).
    pub fn leases(&self) -> Option<&Leases> {
        self.leases.get()
    }

    /// The leases holds are drawn from, built (and attached to the journal) at the first call.
    fn lease_book(&self) -> Option<&Leases> {
        let (journal, config) = (self.journal.as_ref()?, self.lease_config?);
        Some(self.leases.get_or_init(|| {
            let leases = Leases::new(
                self.ledger.clone(),
                journal.claimant(),
                config.ttl(journal.claim_ttl()),
            )
            .with_clock(self.clock.clone());
            journal.attach(leases.clone());
            leases
        }))
    }

    /// Writes every hold, forward, settle and release to `journal` first: a settle then returns
    /// once its record is written, and the journal's drain records it in the store (start it with
    /// [`Journal::start`]). Without a journal a settle returns once the store committed it.
    #[must_use]
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The journal, if the meter writes one.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Injects the clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Injects the random source of event and request ids ([`BufferedOsRandom`] by default).
    #[must_use]
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.random = random;
        self
    }

    /// How long an unsettled hold keeps its reservation (default 10 minutes).
    #[must_use]
    pub fn with_hold_ttl(mut self, ttl: Duration) -> Self {
        self.hold_ttl = ttl;
        self
    }

    /// The catalog.
    pub fn catalog(&self) -> &PriceCatalog {
        &self.catalog
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Prices `worst` (the most the request can use: its prompt as fresh input plus its output cap) and reserves
    /// that amount against every budget of the payer, all or none.
    ///
    /// With a journal, the hold is written to it before this returns.
    ///
    /// # Errors
    /// [`crate::Error::BudgetExceeded`] when a budget has no room (nothing is reserved);
    /// [`crate::Error::DuplicateRequest`] when the request's own id is held by another reservation or recorded
    /// (see [`Ledger::reserve_request`]); pricing errors
    /// ([`crate::Error::UnknownModel`] and the like); backend failures; with a journal,
    /// [`crate::Error::Unavailable`] (`JOURNAL_FULL`) when it cannot take the hold (the reservation is given back).
    pub async fn reserve(&self, request: MeteredRequest, worst: &Usage) -> Result<Hold> {
        let now = self.clock.now();
        let cost = self.catalog.cost(
            &request.model,
            worst,
            request.at.unwrap_or(now),
            request.terms,
        )?;
        let request_id = self.request_id(&request)?;
        let scopes = request.payer.scopes();
        let ttl = match &self.journal {
            Some(journal) => self.hold_ttl.min(journal.claim_ttl()),
            None => self.hold_ttl,
        };
        // What the journal keeps of the hold, and what the store bills if it lapses unsettled (its process died
        // with its journal): checked before anything is held.
        let mut record = HoldRecord {
            request_id: request_id.clone(),
            reservation_id: String::new(),
            at: request.at.unwrap_or(now),
            key_id: request.payer.key_id.clone(),
            owner: request.payer.owner.clone(),
            org: request.payer.org.clone(),
            provider: cost.provider.to_string(),
            model: cost.model.to_string(),
            worst: *worst,
            amount: cost.total,
            credential_source: request.credential_source.map(|s| s.as_str().to_owned()),
            expires_at: now + ttl,
            tags: request.event_tags(),
            end_user: request.end_user.clone(),
        };
        record.validate()?;
        let drawn = match self.lease_book() {
            // A caller's request id is claimed in the store; a fresh one needs no claim.
            Some(leases) if request.request_id.is_none() => leases
                .draw(&scopes, cost.total)
                .await
                .map(|draw| Reservation {
                    id: draw.id,
                    amount: cost.total,
                    expires_at: record.expires_at,
                    scopes: draw.scopes,
                }),
            _ => None,
        };
        let reservation = match drawn {
            Some(reservation) => reservation,
            None => {
                // A caller's request id is claimed with the reservation (a fresh random one cannot collide).
                // With a journal the claim is the instance's, renewed by its heartbeat, and lapses soon after the
                // instance dies, billing its estimate.
                let estimate = record.estimated_event(self.random.as_ref())?;
                let claim = Claim {
                    request_id: request.request_id.as_deref(),
                    instance: self.journal.as_ref().map(Journal::claimant),
                    estimate: Some(&estimate),
                };
                self.ledger
                    .reserve_claim(claim, &scopes, cost.total, now, ttl)
                    .await?
            }
        };
        if let Some(journal) = &self.journal {
            record.reservation_id.clone_from(&reservation.id);
            record.expires_at = reservation.expires_at;
            if let Err(e) = journal.hold(record) {
                if let Err(release) = self.give_back(&reservation.id).await {
                    tracing::warn!(error = %release, "could not give back a reservation the journal refused");
                }
                return Err(e);
            }
        }
        Ok(Hold {
            request,
            request_id,
            reservation,
            worst: *worst,
            forwarded: std::sync::atomic::AtomicBool::new(false),
            guard: Some(self.clone()),
        })
    }

    /// Marks the hold's request as about to be sent to the provider (with a journal: a `forwarded` record, so
    /// a crash from here on bills the reservation instead of releasing it). Without a journal it does nothing.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] (journal) when the journal cannot be written: do not forward then.
    pub fn forwarded(&self, hold: &Hold) -> Result<()> {
        if let Some(journal) = &self.journal {
            journal.forwarded(&hold.request_id)?;
        }
        // From here a dropped hold is billed, not given back.
        hold.forwarded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Prices what the provider reported and settles the hold: the reservation ends and the event is recorded
    /// once, in one step. The actual cost is recorded even above the reservation (it was spent).
    ///
    /// `Ok` means the settle is durable: with a journal, its record is written (the drain records it in the
    /// store; `duplicate` is then always `false`, since the store has not been asked yet); without one, the
    /// store committed it. A journal that cannot be written falls back to the store.
    ///
    /// # Errors
    /// A usage that does not parse or contradicts itself, pricing errors, backend failures. The hold then ends as
    /// a dropped one does ([`Hold`]: billed at its reservation once forwarded, else given back); to keep it (to
    /// retry, or settle otherwise), use [`Meter::try_settle`].
    pub async fn settle<'a>(
        &self,
        hold: Hold,
        usage: impl Into<ReportedUsage<'a>>,
    ) -> Result<Metered> {
        Ok(self.try_settle(hold, usage).await?)
    }

    /// [`Meter::settle`], giving the hold back with the error when it fails.
    ///
    /// # Errors
    /// As [`Meter::settle`], as an [`Unsettled`] holding the hold.
    pub async fn try_settle<'a>(
        &self,
        hold: Hold,
        usage: impl Into<ReportedUsage<'a>>,
    ) -> std::result::Result<Metered, Unsettled> {
        match self.event(&hold.request, &hold.request_id, usage.into()) {
            Ok((event, cost)) => self.settle_event(hold, event, cost).await,
            Err(error) => Err(Unsettled { error, hold }),
        }
    }

    /// Settles `hold` with `worst`, the usage it reserved, as an `estimated` event: the provider's usage never
    /// arrived (it reported none, or what it reported cannot be priced). Priced at the request's time, as the
    /// reservation was, the event costs what was reserved.
    ///
    /// # Errors
    /// As [`Meter::settle`].
    pub async fn settle_estimated(&self, hold: Hold, worst: Usage) -> Result<Metered> {
        Ok(self.try_settle_estimated(hold, worst).await?)
    }

    /// [`Meter::settle_estimated`], giving the hold back with the error when it fails.
    ///
    /// # Errors
    /// As [`Meter::settle`], as an [`Unsettled`] holding the hold.
    pub async fn try_settle_estimated(
        &self,
        hold: Hold,
        worst: Usage,
    ) -> std::result::Result<Metered, Unsettled> {
        match self.event(&hold.request, &hold.request_id, worst.into()) {
            Ok((mut event, cost)) => {
                event.estimated = true;
                self.settle_event(hold, event, cost).await
            }
            Err(error) => Err(Unsettled { error, hold }),
        }
    }

    async fn settle_event(
        &self,
        mut hold: Hold,
        event: UsageEvent,
        cost: Cost,
    ) -> std::result::Result<Metered, Unsettled> {
        if let Some(journal) = &self.journal {
            match journal.settle(&hold.reservation.id, event.clone()) {
                Ok(()) => {
                    hold.disarm();
                    let recorded = Recorded {
                        event_id: event.event_id.clone(),
                        duplicate: false,
                        replaced: false,
                    };
                    return Ok(Metered::new(event, cost, recorded));
                }
                Err(e) => tracing::error!(
                    request_id = %hold.request_id,
                    error = %e,
                    "the journal refused a settle: writing it to the store directly"
                ),
            }
        }
        match self
            .ledger
            .settle(&hold.reservation.id, &event, self.clock.now())
            .await
        {
            Ok(recorded) => {
                hold.disarm();
                if let Some(leases) = self.leases() {
                    leases.settled(&hold.reservation.id);
                }
                Ok(Metered::new(event, cost, recorded))
            }
            Err(error) => Err(Unsettled { error, hold }),
        }
    }

    /// Gives a hold's reservation back (the request failed before anything was spent); returns whether it was
    /// still held.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn release(&self, mut hold: Hold) -> Result<bool> {
        hold.disarm();
        if let Some(journal) = &self.journal
            && let Err(e) = journal.release(&hold.request_id, &hold.reservation.id)
        {
            tracing::warn!(request_id = %hold.request_id, error = %e, "could not journal a release");
        }
        self.give_back(&hold.reservation.id).await
    }

    /// Frees reservation `id`: in its lease when it was drawn from one (the store holds nothing of it alone),
    /// else in the store.
    async fn give_back(&self, id: &str) -> Result<bool> {
        if let Some(leases) = self.leases()
            && leases.holds(id)
        {
            leases.released(id);
            return Ok(true);
        }
        self.ledger.release(id).await
    }

    /// Prices and records a request that had no reservation (usage reported after the fact, as by an SDK). A
    /// request id given by the caller is claimed first, as [`Meter::reserve`] claims it: recorded once, and never
    /// while a reservation holds it.
    ///
    /// # Errors
    /// [`crate::Error::DuplicateRequest`] when a reservation holds the request id (a request with it is in
    /// flight); otherwise as [`Meter::settle`].
    pub async fn record<'a>(
        &self,
        request: MeteredRequest,
        usage: impl Into<ReportedUsage<'a>>,
    ) -> Result<Metered> {
        let request_id = self.request_id(&request)?;
        let (event, cost) = self.event(&request, &request_id, usage.into())?;
        if request.request_id.is_none() {
            let recorded = self.ledger.record(&event).await?;
            return Ok(Metered::new(event, cost, recorded));
        }
        // A caller's id shares one space with the reservations' claims: claimed (with nothing reserved) and
        // settled, so it is never recorded while a request holding it is in flight.
        let now = self.clock.now();
        let recorded = match self
            .ledger
            .reserve_request(&request_id, &[], Decimal::ZERO, now, self.hold_ttl)
            .await
        {
            Ok(claim) => self.ledger.settle(&claim.id, &event, now).await?,
            // Recorded already: a duplicate, or the exact usage of an estimated event.
            Err(Error::DuplicateRequest {
                event_id: Some(_), ..
            }) => self.ledger.record(&event).await?,
            Err(e) => return Err(e),
        };
        Ok(Metered::new(event, cost, recorded))
    }

    /// Replaces the `estimated` event of `request_id` with the exact `usage` (found later, or by hand: `keymeter
    /// usage adjust`), priced for the event's model at the event's time. The event keeps its id, time and payer
    /// and is marked `estimated_first`; its budgets move by the difference.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no event of `request_id` is stored; [`Error::InvalidInput`] when it is exact
    /// already (only estimated events are replaced); pricing errors as [`Meter::settle`]; backend failures.
    pub async fn adjust<'a>(
        &self,
        request_id: &str,
        usage: impl Into<ReportedUsage<'a>>,
    ) -> Result<Metered> {
        let Some(stored) = self.ledger.event(request_id).await? else {
            return Err(Error::NotFound {
                what: "usage event of request",
                id: request_id.to_owned(),
            });
        };
        let not_estimated = || Error::InvalidInput {
            what: "adjustment",
            reason: format!(
                "the event of request {request_id:?} holds exact usage already; only an estimated event is replaced"
            ),
        };
        if !stored.estimated {
            return Err(not_estimated());
        }
        let mut payer = Payer::owner(stored.owner.clone());
        payer.key_id = stored.key_id.clone();
        payer.org = stored.org.clone();
        let model = format!("{}/{}", stored.provider, stored.model);
        let mut request = MeteredRequest::new(payer, model)
            .request_id(request_id)
            .at(stored.at);
        request.credential_source = stored.credential_source;
        let (event, cost) = self.event(&request, request_id, usage.into())?;
        let recorded = self.ledger.record(&event).await?;
        if !recorded.replaced {
            // Another writer replaced it between the read and this record.
            return Err(not_estimated());
        }
        Ok(Metered::new(event, cost, recorded))
    }

    fn request_id(&self, request: &MeteredRequest) -> Result<String> {
        match &request.request_id {
            Some(id) => Ok(id.clone()),
            None => Ok(format!(
                "req_{}",
                crate::ledger::event::random_id(self.random.as_ref())?
            )),
        }
    }

    fn event(
        &self,
        request: &MeteredRequest,
        request_id: &str,
        usage: ReportedUsage<'_>,
    ) -> Result<(UsageEvent, Cost)> {
        let usage = usage.canonical()?;
        // Before pricing: a count no event may hold is refused, not priced.
        usage.check_bounds()?;
        let at = request.at.unwrap_or_else(|| self.clock.now());
        let cost = self
            .catalog
            .cost(&request.model, &usage, at, request.terms)?;
        let mut event = UsageEvent::unchecked(
            Some(request_id),
            at,
            &request.payer.owner,
            &cost.provider,
            &cost.model,
            usage,
            cost.total,
            self.random.as_ref(),
        )?;
        event.key_id = request.payer.key_id.clone();
        event.org = request.payer.org.clone();
        event.credential_source = request.credential_source;
        event.tags = request.event_tags();
        event.end_user.clone_from(&request.end_user);
        event.validate()?;
        Ok((event, cost))
    }
}

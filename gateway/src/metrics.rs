//! `GET /metrics` (DESIGN §14): Prometheus' text format through `prometheus-client`. Labels are bounded — route
//! templates, methods, status codes, verdict codes, cache and dependency names — never a key id, owner or request
//! id. What other parts already count (verdicts, cache lookups, the journal) is read when a scrape asks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;
use keymeter::CacheLookups;
use keymeter::keys::VerdictTotals;
use keymeter::ledger::Meter;
use keymeter::ledger::journal::Journal;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The media type of Prometheus' text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One answered request's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// The gateway's metrics: what it counts itself, and what it reads from the library's parts at each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    overhead: Histogram,
    upstream: Histogram,
    settles_above: Counter,
    dependencies: Arc<Mutex<Vec<(&'static str, bool)>>>,
}

/// What the library's parts count, read at each scrape.
#[derive(Debug)]
struct Live {
    verdicts: Arc<VerdictTotals>,
    lookups: CacheLookups,
    journal: Option<Journal>,
    /// The meter, whose budget leases exist from its first reservation on.
    meter: Meter,
    dependencies: Arc<Mutex<Vec<(&'static str, bool)>>>,
}

impl Metrics {
    /// Metrics reading `verdicts`, `lookups` and `meter`'s journal and budget leases at each scrape.
    pub fn new(verdicts: Arc<VerdictTotals>, lookups: CacheLookups, meter: Meter) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "keymeter_http_requests",
            "Answered requests by method, route template and status",
            requests.clone(),
        );
        // The gateway's own time: 50 µs to 1 s.
        let overhead = Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0,
        ]);
        registry.register(
            "keymeter_overhead_seconds",
            "The gateway's own time per answer (arrival to answer headers, less the wait on the provider)",
            overhead.clone(),
        );
        let upstream = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ]);
        registry.register(
            "keymeter_upstream_seconds",
            "The wait on the provider per proxied answer (to its headers)",
            upstream.clone(),
        );
        let settles_above = Counter::default();
        registry.register(
            "keymeter_settles_above_reservation",
            "Settles that cost more than their reservation (the provider reported more than the worst case)",
            settles_above.clone(),
        );
        let dependencies = Arc::new(Mutex::new(Vec::new()));
        registry.register_collector(Box::new(Live {
            verdicts,
            lookups,
            journal: meter.journal().cloned(),
            meter,
            dependencies: dependencies.clone(),
        }));
        Metrics {
            registry,
            requests,
            overhead,
            upstream,
            settles_above,
            dependencies,
        }
    }

    /// Counts one answer: its method, route template (`None`: no route matched), status, the gateway's own time,
    /// and the provider's, if it was asked.
    pub fn answered(
        &self,
        method: &Method,
        route: Option<&str>,
        status: u16,
        own: Duration,
        upstream: Option<Duration>,
    ) {
        let labels = RequestLabels {
            method: method_label(method),
            route: route.unwrap_or("unmatched").to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.overhead.observe(own.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream.observe(upstream.as_secs_f64());
        }
    }

    /// Counts a settle above its reservation.
    pub fn settled_above(&self) {
        self.settles_above.inc();
    }

    /// The text a scrape gets, with each dependency `up` as `probed` says.
    pub fn render(&self, probed: Vec<(&'static str, bool)>) -> String {
        *self.dependencies.lock().unwrap_or_else(|e| e.into_inner()) = probed;
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric, not a reason to panic.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// A method as a label: the standard ones, else `other` (a client chooses the method).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Encodes one metric with one label set (or none).
fn one<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &M,
) -> Result<(), std::fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

/// Encodes one metric family from `(labels, metric)` pairs.
fn family<'a, L: EncodeLabelSet + 'a, M: EncodeMetric + 'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    members: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut members = members.into_iter().peekable();
    let Some((_, first)) = members.peek() else {
        return Ok(());
    };
    let mut family_encoder = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in members {
        metric.encode(family_encoder.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            &mut encoder,
            "keymeter_verdicts",
            "Key verifications by verdict code",
            self.verdicts
                .counts()
                .map(|(code, n)| ([("code", code.as_str())], ConstCounter::new(n))),
        )?;
        let mut lookups = Vec::new();
        for (cache, counts) in [
            ("keys", self.lookups.keys.as_ref()),
            ("credentials", Some(&self.lookups.credentials)),
            ("rate_limits", self.lookups.limits.as_ref()),
        ] {
            if let Some(counts) = counts {
                lookups.push(([("cache", cache), ("result", "hit")], counts.hits()));
                lookups.push(([("cache", cache), ("result", "miss")], counts.misses()));
            }
        }
        family(
            &mut encoder,
            "keymeter_cache_lookups",
            "Reads of the in-process caches (and checks of leased rate-limit slices), answered from memory (hit) \
             or by the store (miss)",
            lookups.into_iter().map(|(l, n)| (l, ConstCounter::new(n))),
        )?;
        if let Some(leases) = self.meter.leases() {
            let draws = [
                ("hit", leases.lookups().hits()),
                ("miss", leases.lookups().misses()),
                ("fallback", leases.fallbacks()),
            ];
            family(
                &mut encoder,
                "keymeter_lease_draws",
                "Holds drawn from budget leases: from a warm lease (hit), after waiting for the store to resize it \
                 (miss), or handed to the store's exact check because no lease could cover them (fallback)",
                draws
                    .into_iter()
                    .map(|(result, n)| ([("result", result)], ConstCounter::new(n))),
            )?;
        }
        if let Some(journal) = &self.journal {
            one(
                &mut encoder,
                "keymeter_journal_backlog",
                "Journal records the store has not yet confirmed",
                &ConstGauge::new(i64::try_from(journal.backlog()).unwrap_or(i64::MAX)),
            )?;
            one(
                &mut encoder,
                "keymeter_journal_bytes",
                "Bytes of the journal's segments on disk",
                &ConstGauge::new(i64::try_from(journal.bytes()).unwrap_or(i64::MAX)),
            )?;
            one(
                &mut encoder,
                "keymeter_journal_lag_seconds",
                "How long the oldest record the store has not confirmed has waited",
                &ConstGauge::new(journal.lag().as_secs_f64()),
            )?;
        }
        let dependencies = self
            .dependencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        family(
            &mut encoder,
            "keymeter_dependency_up",
            "Whether each dependency answered the scrape's probe (1) or not (0)",
            dependencies
                .into_iter()
                .map(|(name, up)| ([("dependency", name)], ConstGauge::new(i64::from(up)))),
        )
    }
}

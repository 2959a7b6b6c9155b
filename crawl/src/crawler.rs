//! The crawl loop: each worker starts the requests its partition of hosts allows, within its
//! concurrency, and each finished request sends its record and queues its links in the
//! partition that owns their host.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use streamrun_engine::{KEY_GROUPS, worker_key_groups};
use streamrun_operators::KeyedState;
use tokio::sync::mpsc;
use url::Url;

use crate::fetch::Fetcher;
use crate::frontier::{HostState, Next, Pushed, Queued};
use crate::{CrawlConfig, CrawlError, Frontier, PageRecord, error_kind, extract, host_key};

/// The longest a worker sleeps before looking again for work (links other workers queue).
const POLL: Duration = Duration::from_millis(10);
/// How long a crawl with nothing left to do waits for workers that have not started yet
/// (in a job, each worker opens the source in its turn).
const UNSTARTED_GRACE: Duration = Duration::from_secs(5);

/// What a crawl's workers share (in one process).
pub(crate) struct Shared {
    config: Arc<CrawlConfig>,
    /// The seeds, parsed and normalized.
    seeds: Vec<Url>,
    fetcher: Fetcher,
    frontiers: Vec<Mutex<Frontier>>,
    /// Partitions whose worker runs in this process.
    served: Vec<AtomicBool>,
    /// The worker that owns each key group.
    owner: Vec<usize>,
    allowed: HashSet<String>,
    in_flight: AtomicUsize,
    /// Moves on with every request started: a worker that saw every partition idle, and
    /// no request running, knows nothing started meanwhile.
    generation: AtomicU64,
    pages: AtomicU64,
    paused: AtomicBool,
    dropped_full: AtomicU64,
    clock: Instant,
    /// Since when the crawl has had nothing to do while some worker had not started.
    idle_since: Mutex<Option<Instant>>,
    /// Set once a worker found the crawl over: it stays over, so a worker that starts after
    /// the grace for late workers ends at once instead of crawling links into partitions
    /// whose workers are gone (and waiting for them for ever).
    over: AtomicBool,
}

/// Counts of a crawl so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrawlStats {
    /// Page requests started (the `max_pages` budget).
    pub pages: u64,
    /// URLs ever queued, over the partitions.
    pub urls: u64,
    /// Links dropped because a frontier held its maximum of URLs.
    pub dropped_full: u64,
}

impl Shared {
    pub(crate) fn new(config: CrawlConfig, workers: usize) -> Result<Arc<Shared>, CrawlError> {
        let seeds = config.validate()?;
        let workers = workers.max(1);
        let mut owner = vec![0; KEY_GROUPS as usize];
        for w in 0..workers {
            for g in worker_key_groups(w, workers) {
                owner[g as usize] = w;
            }
        }
        let allowed: HashSet<String> = if config.allowed_hosts.is_empty() {
            seeds.iter().map(authority).collect()
        } else {
            config.allowed_hosts.iter().cloned().collect()
        };
        Ok(Arc::new(Shared {
            fetcher: Fetcher::new(&config)?,
            frontiers: (0..workers)
                .map(|_| Mutex::new(Frontier::new(&config)))
                .collect(),
            served: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            owner,
            allowed,
            in_flight: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            dropped_full: AtomicU64::new(0),
            clock: Instant::now(),
            idle_since: Mutex::new(None),
            over: AtomicBool::new(false),
            seeds,
            config: Arc::new(config),
        }))
    }

    pub(crate) fn workers(&self) -> usize {
        self.frontiers.len()
    }

    fn frontier(&self, w: usize) -> MutexGuard<'_, Frontier> {
        self.frontiers[w].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn partition_of(&self, host: &str) -> usize {
        let group = KeyedState::<HostState>::group_of(host.as_bytes());
        self.owner.get(group as usize).copied().unwrap_or(0)
    }

    pub(crate) fn seed(&self) {
        for seed in &self.seeds {
            self.push(seed, 0, 0);
        }
    }

    /// Queues `url` in the partition of its host, unless the crawl's bounds leave it out.
    fn push(&self, url: &Url, depth: u32, hops: u32) {
        let text = url.as_str();
        if depth > self.config.max_depth
            || !self.allowed.contains(&authority(url))
            || self
                .config
                .deny_prefixes
                .iter()
                .any(|p| text.starts_with(p))
        {
            return;
        }
        let host = host_key(url);
        let pushed = self
            .frontier(self.partition_of(&host))
            .push_to(&host, url, depth, hops);
        if pushed == Pushed::Full {
            self.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Whether the crawl is over: no request runs, every partition whose worker started is
    /// idle, nothing started while that was checked, and every worker has started (or
    /// those that have not did not for `UNSTARTED_GRACE`: their partitions are left).
    fn finished(&self) -> bool {
        if self.over.load(Ordering::SeqCst) {
            return true;
        }
        let before = self.generation.load(Ordering::SeqCst);
        let idle = self.in_flight.load(Ordering::SeqCst) == 0
            && (0..self.workers())
                .filter(|w| self.served[*w].load(Ordering::SeqCst))
                .all(|w| self.frontier(w).is_idle())
            && self.generation.load(Ordering::SeqCst) == before;
        let mut idle_since = self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        if !idle {
            *idle_since = None;
            return false;
        }
        if !self.served.iter().all(|s| s.load(Ordering::SeqCst)) {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < UNSTARTED_GRACE {
                return false;
            }
            tracing::warn!(
                "a crawl ends with the partitions of workers that never started left uncrawled"
            );
        }
        self.over.store(true, Ordering::SeqCst);
        true
    }

    /// Counts every partition as served: their workers all start now.
    fn serve_all(&self) {
        for served in &self.served {
            served.store(true, Ordering::SeqCst);
        }
    }

    /// Takes one page of the budget, if any is left.
    fn reserve_page(&self) -> bool {
        self.pages
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p < self.config.max_pages).then_some(p + 1)
            })
            .is_ok()
    }

    pub(crate) fn stats(&self) -> CrawlStats {
        CrawlStats {
            pages: self.pages.load(Ordering::SeqCst),
            urls: (0..self.workers())
                .map(|w| self.frontier(w).urls() as u64)
                .sum(),
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
        }
    }

    /// Runs worker `index`'s share of the crawl until it is over (or paused), sending a
    /// record for every request.
    pub(crate) async fn run_worker(self: Arc<Self>, index: usize, out: mpsc::Sender<PageRecord>) {
        self.served[index].store(true, Ordering::SeqCst);
        if self.over.load(Ordering::SeqCst) {
            tracing::warn!(
                worker = index,
                "a crawl worker started after the crawl ended: its partition is left uncrawled"
            );
            return;
        }
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let mut wake = None;
            while !self.paused.load(Ordering::SeqCst) && tasks.len() < self.config.concurrency {
                // A page takes one of the budget when it comes out, under the partition's
                // lock: the budget never runs ahead of the requests made.
                let next = {
                    let mut frontier = self.frontier(index);
                    let mut next = frontier.next(self.now_ms());
                    if let Next::Page(host, queued) = &next
                        && !self.reserve_page()
                    {
                        frontier.done(host);
                        frontier.requeue(host, queued.clone());
                        next = Next::Empty;
                    }
                    if matches!(next, Next::Page(..) | Next::Robots { .. }) {
                        self.in_flight.fetch_add(1, Ordering::SeqCst);
                        self.generation.fetch_add(1, Ordering::SeqCst);
                    }
                    next
                };
                match next {
                    Next::Page(host, queued) => {
                        let slot = Slot::new(&self, index, &host);
                        let me = Arc::clone(&self);
                        let out = out.clone();
                        tasks.spawn(async move { me.page(slot, queued, out).await });
                    }
                    Next::Robots { host, origin } => {
                        let slot = Slot::new(&self, index, &host);
                        let me = Arc::clone(&self);
                        let out = out.clone();
                        tasks.spawn(async move { me.robots(slot, origin, out).await });
                    }
                    Next::Disallowed(_, queued) => {
                        let record = PageRecord {
                            error_kind: error_kind::ROBOTS.into(),
                            error: "disallowed by robots.txt".into(),
                            ..self.record(&queued)
                        };
                        if out.send(record).await.is_err() {
                            return;
                        }
                    }
                    Next::Wait(at) => {
                        wake = Some(at);
                        break;
                    }
                    Next::Empty => break,
                }
            }
            // Nobody reads the records any more: the crawl stops (the requests running are
            // dropped, their slots given back).
            if out.is_closed() {
                return;
            }
            if tasks.is_empty() {
                let out_of_budget = self.pages.load(Ordering::SeqCst) >= self.config.max_pages
                    && self.in_flight.load(Ordering::SeqCst) == 0;
                if self.paused.load(Ordering::SeqCst) || out_of_budget || self.finished() {
                    return;
                }
            }
            let pause = wake
                .map(|at| Duration::from_millis(at.saturating_sub(self.now_ms())))
                .unwrap_or(POLL)
                .min(POLL);
            tokio::select! {
                joined = tasks.join_next(), if !tasks.is_empty() => {
                    if let Some(Err(e)) = joined {
                        tracing::error!(error = %e, "a crawl request's task failed");
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn record(&self, queued: &Queued) -> PageRecord {
        PageRecord {
            url: queued.url.clone(),
            host: Url::parse(&queued.url)
                .map(|url| authority(&url))
                .unwrap_or_default(),
            depth: queued.depth,
            fetched_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            ..PageRecord::default()
        }
    }

    async fn robots(&self, slot: Slot, origin: String, out: mpsc::Sender<PageRecord>) {
        let queued = Queued {
            url: format!("{origin}/robots.txt"),
            depth: 0,
            hops: 0,
        };
        let mut record = self.record(&queued);
        // Redirects are followed, up to `ROBOTS_REDIRECTS` (RFC 9309, 2.3.1.2), wherever
        // they lead; past that the file counts as unavailable.
        let mut url = queued.url.clone();
        let mut fetched = self.fetch(&slot, &url, true).await;
        for _ in 0..ROBOTS_REDIRECTS {
            let Some(next) = fetched
                .location
                .as_deref()
                .zip(Url::parse(&url).ok())
                .and_then(|(location, base)| crate::normalize(&base, location))
            else {
                break;
            };
            url = next.to_string();
            record.redirect = url.clone();
            // The hops are requests too: they keep the host's delay.
            tokio::time::sleep(Duration::from_millis(self.config.per_host_delay_ms)).await;
            fetched = self.fetch(&slot, &url, true).await;
        }
        // A missing or unreadable robots.txt allows everything; one the server cannot give
        // (5xx, no answer) forbids everything, as RFC 9309 says, and so does one it refuses
        // with 429 (too many requests) after the retries. Past `ROBOTS_MAX` bytes,
        // the rest of the file is not read.
        let text = if fetched.status == 200 && fetched.error_kind.is_empty() {
            let end = fetched.body.len().min(ROBOTS_MAX);
            String::from_utf8_lossy(&fetched.body[..end]).into_owned()
        } else if fetched.status >= 500 || fetched.status == 0 || fetched.status == 429 {
            "User-agent: *\nDisallow: /\n".to_owned()
        } else {
            String::new()
        };
        fill(&mut record, &fetched);
        if record.error_kind.is_empty() || record.error_kind == error_kind::STATUS {
            record.error_kind = error_kind::ROBOTS_TXT.into();
        }
        self.frontier(slot.index)
            .robots_done(&slot.host, &origin, text);
        slot.release(false);
        let _ = out.send(record).await;
    }

    async fn page(&self, slot: Slot, queued: Queued, out: mpsc::Sender<PageRecord>) {
        let mut record = self.record(&queued);
        let fetched = self.fetch(&slot, &queued.url, false).await;
        fill(&mut record, &fetched);
        if let Ok(page) = Url::parse(&queued.url) {
            if let Some(location) = &fetched.location {
                match crate::normalize(&page, location) {
                    Some(target) if queued.hops < self.config.max_redirects => {
                        record.redirect = target.to_string();
                        self.push(&target, queued.depth, queued.hops + 1);
                    }
                    Some(target) => {
                        record.redirect = target.to_string();
                        record.error_kind = error_kind::REDIRECT_LIMIT.into();
                        record.error = format!(
                            "more than {} redirects from the first URL",
                            self.config.max_redirects
                        );
                    }
                    None => {
                        record.error_kind = error_kind::OTHER.into();
                        record.error = format!("a redirect to '{location}', not an http(s) URL");
                    }
                }
            } else if fetched.error_kind.is_empty() {
                // Parsing is work for a core, not for the threads that send requests.
                let body = fetched.body;
                let found = tokio::task::spawn_blocking(move || {
                    extract(&page, &String::from_utf8_lossy(&body))
                })
                .await
                .unwrap_or_default();
                for link in &found.links {
                    if let Ok(url) = Url::parse(link) {
                        self.push(&url, queued.depth + 1, 0);
                    }
                }
                record.title = found.title;
                record.text = found.text;
                record.links = found.links;
            }
        }
        // Links first, then the request's end: no worker sees the crawl over in between.
        slot.release(true);
        let _ = out.send(record).await;
    }

    /// Fetches `url` for the request holding `slot`. A `Retry-After` the server sends holds
    /// back every request of the slot's host until then, not only this one's retry.
    async fn fetch(&self, slot: &Slot, url: &str, any_type: bool) -> crate::fetch::Fetched {
        self.fetcher
            .fetch(url, any_type, |wait| {
                let until = self.now_ms().saturating_add(wait.as_millis() as u64);
                self.frontier(slot.index).hold(&slot.host, until);
            })
            .await
    }

    /// Every partition's state; taken once no request runs.
    pub(crate) fn snapshot(&self) -> Result<CrawlSnapshot, CrawlError> {
        let partitions = (0..self.workers())
            .map(|w| self.frontier(w).snapshot(0..KEY_GROUPS))
            .collect::<Result<_, _>>()?;
        Ok(CrawlSnapshot {
            partitions,
            pages: self.pages.load(Ordering::SeqCst),
        })
    }

    /// Takes in a snapshot, each host into the partition that owns it now (the snapshot
    /// may come from another number of workers).
    pub(crate) fn restore(&self, snapshot: &CrawlSnapshot) -> Result<(), CrawlError> {
        let mut all = Frontier::new(&self.config);
        for part in &snapshot.partitions {
            all.restore(part)?;
        }
        for w in 0..self.workers() {
            let mine = all.snapshot(worker_key_groups(w, self.workers()))?;
            self.frontier(w).restore(&mine)?;
        }
        self.pages.store(snapshot.pages, Ordering::SeqCst);
        Ok(())
    }
}

/// Redirects of a robots.txt followed at most (RFC 9309 asks for at least five).
const ROBOTS_REDIRECTS: usize = 5;

/// robots.txt bytes read at most (Google reads 500 KiB).
const ROBOTS_MAX: usize = 500 << 10;

/// A request's hold on its host and on the crawl's count of requests running: given back
/// when the request ends, or when its task is dropped or panics, so that a crawl never
/// waits for a request that is gone.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    index: usize,
    host: String,
    held: bool,
}

impl Slot {
    fn new(shared: &Arc<Shared>, index: usize, host: &str) -> Slot {
        Slot {
            shared: Arc::clone(shared),
            index,
            host: host.to_owned(),
            held: true,
        }
    }

    /// Gives the host back (`done`: its robots.txt path calls `robots_done` instead) and
    /// counts the request as ended.
    fn release(mut self, done: bool) {
        self.give_back(done);
    }

    fn give_back(&mut self, done: bool) {
        if std::mem::take(&mut self.held) {
            if done {
                self.shared.frontier(self.index).done(&self.host);
            }
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.give_back(true);
    }
}

/// `host[:port]` of a URL.
pub(crate) fn authority(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

fn fill(record: &mut PageRecord, fetched: &crate::fetch::Fetched) {
    record.status = fetched.status;
    record.elapsed_ms = fetched.elapsed.as_millis() as u64;
    record.bytes = fetched.bytes;
    record.error_kind = fetched.error_kind.to_owned();
    record.error = fetched.error.clone();
    record.content_type = fetched.content_type.clone();
}

/// A crawl's frontier, written out while no request ran: what [`Crawl::resume`] starts
/// from (with any number of workers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrawlSnapshot {
    /// Each partition's keyed state.
    pub partitions: Vec<Vec<u8>>,
    /// Page requests started before it.
    pub pages: u64,
}

/// What the bytes of a snapshot start with: its format and version. Version 2 keys the
/// frontier by host name, with a robots.txt per origin.
const SNAPSHOT_HEADER: &[u8] = b"streamrun crawl snapshot v2\n";

impl CrawlSnapshot {
    /// The snapshot as bytes, to keep: a line naming the format and its version
    /// (`streamrun crawl snapshot v2`), then the state.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CrawlError> {
        let mut bytes = SNAPSHOT_HEADER.to_vec();
        bincode::serialize_into(&mut bytes, self)
            .map_err(|e| CrawlError::Snapshot(e.to_string()))?;
        Ok(bytes)
    }

    /// A snapshot from [`to_bytes`](Self::to_bytes); bytes of another version (or not a
    /// snapshot) are refused, saying so.
    pub fn from_bytes(bytes: &[u8]) -> Result<CrawlSnapshot, CrawlError> {
        let Some(state) = bytes.strip_prefix(SNAPSHOT_HEADER) else {
            return Err(CrawlError::Snapshot(
                "not a crawl snapshot of this version (v2): written by another version of \
                 Streamrun, or not a snapshot"
                    .into(),
            ));
        };
        bincode::deserialize(state).map_err(|e| CrawlError::Snapshot(e.to_string()))
    }
}

/// Starts crawls outside a dataflow job (the job's source is [`crate::CrawlSource`]).
pub struct Crawl;

impl Crawl {
    /// Starts a crawl from its seeds on `workers` partitions of hosts.
    pub fn start(config: CrawlConfig, workers: usize) -> Result<CrawlRun, CrawlError> {
        let shared = Shared::new(config, workers)?;
        shared.seed();
        CrawlRun::launch(shared)
    }

    /// Resumes a crawl from `snapshot`, on `workers` partitions of hosts.
    pub fn resume(
        config: CrawlConfig,
        workers: usize,
        snapshot: &CrawlSnapshot,
    ) -> Result<CrawlRun, CrawlError> {
        let shared = Shared::new(config, workers)?;
        shared.restore(snapshot)?;
        CrawlRun::launch(shared)
    }
}

/// A running crawl: its records, as they come.
pub struct CrawlRun {
    shared: Arc<Shared>,
    records: mpsc::Receiver<PageRecord>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl CrawlRun {
    fn launch(shared: Arc<Shared>) -> Result<CrawlRun, CrawlError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(shared.workers().max(2))
            .thread_name("streamrun-crawl")
            .enable_all()
            .build()
            .map_err(|e| CrawlError::Start(format!("the crawl's runtime: {e}")))?;
        let (tx, records) = mpsc::channel(shared.config.buffer);
        shared.serve_all();
        let workers = (0..shared.workers())
            .map(|w| runtime.spawn(Arc::clone(&shared).run_worker(w, tx.clone())))
            .collect();
        Ok(CrawlRun {
            shared,
            records,
            workers,
            runtime,
        })
    }

    /// The next record, waiting for it; `None` once the crawl is over.
    pub fn next_record(&mut self) -> Option<PageRecord> {
        self.records.blocking_recv()
    }

    /// Every record until the crawl is over.
    pub fn records(mut self) -> impl Iterator<Item = PageRecord> {
        std::iter::from_fn(move || self.next_record())
    }

    /// Counts so far.
    pub fn stats(&self) -> CrawlStats {
        self.shared.stats()
    }

    /// Stops the crawl: no request starts any more, those running end (their records are
    /// returned), and the frontier is written out to resume from.
    pub fn stop(mut self) -> Result<(Vec<PageRecord>, CrawlSnapshot), CrawlError> {
        self.shared.paused.store(true, Ordering::SeqCst);
        // Read while they end (a worker may wait for room to send); the channel closes
        // once every worker and request has.
        let mut rest = Vec::new();
        while let Some(record) = self.records.blocking_recv() {
            rest.push(record);
        }
        for worker in std::mem::take(&mut self.workers) {
            let _ = self.runtime.block_on(worker);
        }
        Ok((rest, self.shared.snapshot()?))
    }
}

//! The URL frontier of one partition of hosts: a queue per host, de-duplication by URL
//! fingerprint, politeness (a delay between a host's requests and a cap on its concurrent
//! requests, raised by its robots.txt `Crawl-delay` and held back by `Retry-After`), and
//! robots.txt rules. Its state is keyed by host name in a [`KeyedState`], so it is
//! snapshotted and restored by key groups like any keyed state.
//!
//! Politeness goes by host name: `http://h/`, `https://h/` and `http://h:8080/` are one
//! host's requests. robots.txt goes by origin (scheme, host and port), as RFC 9309 says: each
//! origin of a host has its own, fetched before the first of its pages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use streamrun_operators::{KeyedState, Snapshot};
use texting_robots::Robot;
use url::Url;

use crate::{CrawlConfig, CrawlError};

/// Turns a link found on `base` into the URL it names, normalized: resolved against the page,
/// without its fragment, with the scheme and host lowercased and a default port dropped (by
/// the `url` crate). Only `http` and `https` URLs of at most [`MAX_URL_BYTES`] are kept.
pub fn normalize(base: &Url, href: &str) -> Option<Url> {
    if href.len() > MAX_URL_BYTES {
        return None;
    }
    let mut url = base.join(href.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.as_str().len() > MAX_URL_BYTES
    {
        return None;
    }
    url.set_fragment(None);
    if url.query() == Some("") {
        url.set_query(None);
    }
    Some(url)
}

/// What politeness, the frontier's state and partitioning go by: the URL's host name, for
/// all its schemes and ports.
pub fn host_key(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_owned()
}

/// What robots.txt goes by: the URL's origin (scheme, host and port).
pub fn origin_key(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// A robots.txt `Crawl-delay` above this many seconds counts as this many.
const MAX_CRAWL_DELAY_S: f64 = 60.0;

/// URLs longer than this are not followed.
pub const MAX_URL_BYTES: usize = 8 << 10;

fn fingerprint(url: &Url) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x5eed).hash_one(url.as_str())
}

/// A URL waiting in its host's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The URL.
    pub url: String,
    /// Links followed from a seed to reach it.
    pub depth: u32,
    /// Redirects followed to reach it.
    pub hops: u32,
}

/// What the frontier keeps of one host.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HostState {
    queue: VecDeque<Queued>,
    /// Fingerprints of every URL of the host ever queued.
    seen: HashSet<u64>,
    /// The robots.txt of each of its origins fetched (empty: none, or unreadable:
    /// everything allowed).
    robots: BTreeMap<String, String>,
    /// Requests of it started.
    fetched: u64,
}

/// What [`Frontier::push`] did with a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    New,
    /// Already seen: dropped.
    Seen,
    /// The frontier holds its maximum of URLs: dropped.
    Full,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Fetch the robots.txt of `origin`, of `host` (before any of the origin's pages).
    Robots {
        /// The host, as [`host_key`] names it.
        host: String,
        /// The origin, as [`origin_key`] names it.
        origin: String,
    },
    /// Fetch this page.
    Page(String, Queued),
    /// This page is disallowed by its host's robots.txt: record it, do not fetch it.
    Disallowed(String, Queued),
    /// Nothing may start before this time (milliseconds on the crawl's clock).
    Wait(u64),
    /// Nothing is queued.
    Empty,
}

/// One partition's frontier.
pub struct Frontier {
    hosts: KeyedState<HostState>,
    /// Hosts with queued URLs and room for a request, by the time their next may start.
    schedule: BTreeSet<(u64, String)>,
    /// Each scheduled host's entry in `schedule`.
    scheduled: HashMap<String, u64>,
    /// Not kept in snapshots: requests running, parsed robots (by origin), the longest
    /// `Crawl-delay` of a host's robots, when each host may go next.
    running: HashMap<String, u32>,
    robots: HashMap<String, Option<Robot>>,
    crawl_delay_ms: HashMap<String, u64>,
    robots_pending: HashSet<String>,
    not_before: HashMap<String, u64>,
    urls: usize,
    max_urls: usize,
    concurrency: u32,
    delay_ms: u64,
    obey_robots: bool,
    agent: String,
}

impl Frontier {
    /// An empty frontier under `config`'s politeness and bounds.
    pub fn new(config: &CrawlConfig) -> Frontier {
        Frontier {
            hosts: KeyedState::new("crawl frontier"),
            schedule: BTreeSet::new(),
            scheduled: HashMap::new(),
            running: HashMap::new(),
            robots: HashMap::new(),
            crawl_delay_ms: HashMap::new(),
            robots_pending: HashSet::new(),
            not_before: HashMap::new(),
            urls: 0,
            max_urls: config.frontier_max_urls,
            concurrency: config.per_host_concurrency.max(1),
            delay_ms: config.per_host_delay_ms,
            obey_robots: config.robots,
            agent: config.user_agent.clone(),
        }
    }

    /// Queues `url` unless it was seen before or the frontier is full.
    pub fn push(&mut self, url: &Url, depth: u32, hops: u32) -> Pushed {
        self.push_to(&host_key(url), url, depth, hops)
    }

    /// [`Frontier::push`] for a caller that has the URL's [`host_key`] already.
    pub fn push_to(&mut self, host: &str, url: &Url, depth: u32, hops: u32) -> Pushed {
        let print = fingerprint(url);
        let full = self.urls >= self.max_urls;
        let state = self.hosts.get_or_default(host.as_bytes());
        if state.seen.contains(&print) {
            return Pushed::Seen;
        }
        if full {
            return Pushed::Full;
        }
        state.seen.insert(print);
        state.queue.push_back(Queued {
            url: url.to_string(),
            depth,
            hops,
        });
        self.urls += 1;
        self.reschedule(host);
        Pushed::New
    }

    /// Puts `host` in the schedule if it has work and room, at the time it may go next.
    fn reschedule(&mut self, host: &str) {
        let Some(state) = self.hosts.get(host.as_bytes()) else {
            return;
        };
        let at = self.not_before.get(host).copied().unwrap_or(0);
        let ready = !state.queue.is_empty()
            && !self.robots_pending.contains(host)
            && self.running.get(host).copied().unwrap_or(0) < self.concurrency;
        if let Some(old) = self.scheduled.remove(host) {
            self.schedule.remove(&(old, host.to_owned()));
        }
        if ready {
            self.schedule.insert((at, host.to_owned()));
            self.scheduled.insert(host.to_owned(), at);
        }
    }

    /// The next thing to do at time `now` (milliseconds): a request that politeness allows
    /// now, a page robots.txt forbids, the time the next may start, or nothing.
    pub fn next(&mut self, now: u64) -> Next {
        let Some((at, host)) = self.schedule.first().cloned() else {
            return Next::Empty;
        };
        if at > now {
            return Next::Wait(at);
        }
        self.schedule.remove(&(at, host.clone()));
        self.scheduled.remove(&host);
        let Some(state) = self.hosts.get_mut(host.as_bytes()) else {
            return Next::Empty;
        };
        let Some(front) = state.queue.front() else {
            return self.next(now);
        };
        // The origin whose robots.txt rules the next URL (none when robots are not obeyed).
        let origin = self
            .obey_robots
            .then(|| Url::parse(&front.url).ok())
            .flatten()
            .map(|url| origin_key(&url));
        if let Some(origin) = &origin
            && !state.robots.contains_key(origin)
        {
            state.fetched += 1;
            self.robots_pending.insert(host.clone());
            self.start(&host, now);
            return Next::Robots {
                host,
                origin: origin.clone(),
            };
        }
        let Some(queued) = state.queue.pop_front() else {
            return self.next(now);
        };
        let allowed = match origin {
            None => true,
            Some(origin) => {
                let text = state.robots.get(&origin).map_or("", String::as_str);
                let robot = match self.robots.entry(origin) {
                    std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
                    std::collections::hash_map::Entry::Vacant(new) => {
                        // Parsed again after a restore: its Crawl-delay counts again too.
                        let robot = Robot::new(&self.agent, text.as_bytes()).ok();
                        note_crawl_delay(&mut self.crawl_delay_ms, &host, robot.as_ref());
                        new.insert(robot)
                    }
                };
                robot
                    .as_ref()
                    .is_none_or(|robot| robot.allowed(&queued.url))
            }
        };
        if !allowed {
            self.reschedule(&host);
            return Next::Disallowed(host, queued);
        }
        state.fetched += 1;
        self.start(&host, now);
        Next::Page(host, queued)
    }

    fn start(&mut self, host: &str, now: u64) {
        *self.running.entry(host.to_owned()).or_default() += 1;
        let delay = self.delay_for(host);
        self.not_before
            .insert(host.to_owned(), now.saturating_add(delay));
        self.reschedule(host);
    }

    /// The delay between `host`'s requests: the configured one, or the longest
    /// `Crawl-delay` of its origins' robots.txt when longer (and politeness is on).
    fn delay_for(&self, host: &str) -> u64 {
        let crawl_delay = self.crawl_delay_ms.get(host).copied().unwrap_or(0);
        if self.delay_ms == 0 {
            0
        } else {
            self.delay_ms.max(crawl_delay)
        }
    }

    /// Starts no request of `host` before `until` plus its delay (milliseconds on the
    /// crawl's clock): what a `Retry-After` asks.
    pub fn hold(&mut self, host: &str, until: u64) {
        // The request that was told to wait goes again at `until`: the next one keeps the
        // host's delay after it.
        let until = until.saturating_add(self.delay_for(host));
        let at = self.not_before.entry(host.to_owned()).or_default();
        *at = (*at).max(until);
        self.reschedule(host);
    }

    /// Puts back a URL taken from its queue but not fetched, first in the queue.
    pub fn requeue(&mut self, host: &str, queued: Queued) {
        self.hosts
            .get_or_default(host.as_bytes())
            .queue
            .push_front(queued);
        self.reschedule(host);
    }

    /// A request of `host` ended.
    pub fn done(&mut self, host: &str) {
        if let Some(running) = self.running.get_mut(host) {
            *running = running.saturating_sub(1);
        }
        self.reschedule(host);
    }

    /// The robots.txt of `origin`, of `host`, ended: `text` is what it says ("" when it has
    /// none, or when it could not be read: everything is allowed then).
    pub fn robots_done(&mut self, host: &str, origin: &str, text: String) {
        let robot = Robot::new(&self.agent, text.as_bytes()).ok();
        note_crawl_delay(&mut self.crawl_delay_ms, host, robot.as_ref());
        self.robots.insert(origin.to_owned(), robot);
        self.robots_pending.remove(host);
        if let Some(state) = self.hosts.get_mut(host.as_bytes()) {
            state.robots.insert(origin.to_owned(), text);
        }
        self.done(host);
    }

    /// URLs queued and not started.
    pub fn queued(&self) -> usize {
        self.hosts.iter().map(|(_, s)| s.queue.len()).sum()
    }

    /// Whether nothing is queued and nothing runs.
    pub fn is_idle(&self) -> bool {
        self.schedule.is_empty()
            && self.running.values().all(|r| *r == 0)
            && self.hosts.iter().all(|(_, s)| s.queue.is_empty())
    }

    /// URLs ever queued (the bound `frontier_max_urls` applies to).
    pub fn urls(&self) -> usize {
        self.urls
    }

    /// The state of the hosts in key groups `groups`. Taken while no request runs, it is
    /// what a crawl resumes from.
    pub fn snapshot(&self, groups: Range<u32>) -> Result<Vec<u8>, CrawlError> {
        self.hosts
            .snapshot(groups)
            .map_err(|e| CrawlError::Snapshot(e.to_string()))
    }

    /// Adds the hosts of a snapshot (taken by [`snapshot`](Self::snapshot)).
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), CrawlError> {
        self.hosts
            .restore(snapshot)
            .map_err(|e| CrawlError::Snapshot(e.to_string()))?;
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, _)| String::from_utf8_lossy(h).into_owned())
            .collect();
        self.urls = self.hosts.iter().map(|(_, s)| s.seen.len()).sum();
        for host in hosts {
            self.reschedule(&host);
        }
        Ok(())
    }
}

/// Raises `host`'s delay to `robot`'s `Crawl-delay` (at most [`MAX_CRAWL_DELAY_S`]) when it
/// is longer.
fn note_crawl_delay(delays: &mut HashMap<String, u64>, host: &str, robot: Option<&Robot>) {
    let Some(seconds) = robot.and_then(|r| r.delay) else {
        return;
    };
    let ms = (f64::from(seconds).clamp(0.0, MAX_CRAWL_DELAY_S) * 1000.0) as u64;
    let delay = delays.entry(host.to_owned()).or_default();
    *delay = (*delay).max(ms);
}

//! A seeded synthetic web site, and a real HTTP server (axum, on loopback) that serves it:
//! what the crawl's example, tests and bench crawl.
//!
//! Pages are spread over hosts (each on an address of its own, `127.0.0.k`); each has a
//! paragraph of words and links to other pages, some broken (404), some through a redirect
//! (301), some to `/private/` pages that the hosts' robots.txt disallows. The site also
//! answers what the oracles need: which pages a crawl reaches, and their words. The server
//! logs every request (path, start, end) per host, and the most requests a host had at once.
//!
//! Hostile pages, under `/hostile/` on the first host: `bad.html` (malformed HTML),
//! `huge` (a 100 MB body), `slow` (a byte a second: a slow-loris server), `loop/a` and
//! `loop/b` (redirecting to each other), `binary` (a body that is not HTML).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::CrawlError;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    /// Pages.
    pub pages: usize,
    /// Hosts they are spread over.
    pub hosts: usize,
    /// Links per page.
    pub links: usize,
    /// Words per page.
    pub words: usize,
    /// Of every 1,000 links, how many are broken.
    pub broken_per_mille: u32,
    /// Of every 1,000 links, how many go through a redirect.
    pub redirect_per_mille: u32,
    /// Of every 1,000 pages, how many are under `/private/` (disallowed by robots.txt).
    pub private_per_mille: u32,
    /// The robots.txt of the last host is garbage.
    pub garbage_robots: bool,
    /// A `Crawl-delay` (seconds) in every robots.txt.
    pub crawl_delay: Option<f32>,
    /// Milliseconds each answer takes (so requests that overlap are seen overlapping).
    pub latency_ms: u64,
    /// The random seed: the same spec makes the same site.
    pub seed: u64,
    /// The port every host listens on (each host has its own address, 127.0.0.k); 0 picks a
    /// free port per host.
    pub port: u16,
}

impl Default for SiteSpec {
    fn default() -> Self {
        SiteSpec {
            pages: 2_000,
            hosts: 4,
            links: 8,
            words: 40,
            broken_per_mille: 30,
            redirect_per_mille: 30,
            private_per_mille: 50,
            garbage_robots: false,
            crawl_delay: None,
            latency_ms: 0,
            seed: 7,
            port: 0,
        }
    }
}

/// A link of a generated page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// To page n.
    Page(usize),
    /// To a redirect to page n.
    Redirect(usize),
    /// To nothing (404).
    Broken(u64),
}

/// A generated page.
#[derive(Debug, Clone)]
pub struct Page {
    /// Its host's index.
    pub host: usize,
    /// Under `/private/`.
    pub private: bool,
    /// Its words, in order.
    pub words: Vec<&'static str>,
    /// Its links, in order.
    pub links: Vec<Link>,
}

const VOCABULARY: &[&str] = &[
    "stream",
    "river",
    "data",
    "flow",
    "window",
    "state",
    "actor",
    "task",
    "graph",
    "rank",
    "crawl",
    "page",
    "link",
    "host",
    "word",
    "count",
    "batch",
    "arrow",
    "timely",
    "frontier",
    "robot",
    "delay",
    "worker",
    "node",
    "shard",
    "merge",
    "join",
    "key",
    "value",
    "event",
    "time",
    "watermark",
    "sink",
    "source",
    "query",
    "table",
    "index",
    "cache",
    "spill",
    "store",
];

/// A generated site.
#[derive(Debug, Clone)]
pub struct Site {
    /// Its pages; page 0 is the seed.
    pub pages: Vec<Page>,
    spec: SiteSpec,
}

impl Site {
    /// Generates the site `spec` describes.
    pub fn generate(spec: SiteSpec) -> Site {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let hosts = spec.hosts.max(1);
        let n = spec.pages.max(1);
        let pages = (0..n)
            .map(|i| {
                let private = i != 0 && rng.random_range(0..1000) < spec.private_per_mille;
                // Words drawn with a skew, so some are far more frequent than others.
                let words = (0..spec.words)
                    .map(|_| {
                        let a = rng.random_range(0..VOCABULARY.len());
                        let b = rng.random_range(0..=a);
                        VOCABULARY[b]
                    })
                    .collect();
                let links = (0..spec.links)
                    .map(|_| {
                        let roll = rng.random_range(0..1000);
                        let target = rng.random_range(0..n);
                        if roll < spec.broken_per_mille {
                            Link::Broken(rng.random())
                        } else if roll < spec.broken_per_mille + spec.redirect_per_mille {
                            Link::Redirect(target)
                        } else {
                            Link::Page(target)
                        }
                    })
                    .collect();
                Page {
                    host: i % hosts,
                    private,
                    words,
                    links,
                }
            })
            .collect();
        Site { pages, spec }
    }

    /// The path of page `n`.
    pub fn path(&self, n: usize) -> String {
        if self.pages[n].private {
            format!("/private/{n}.html")
        } else {
            format!("/p/{n}.html")
        }
    }

    /// The pages a crawl from page 0 fetches as pages (obeying robots.txt, following
    /// redirects, without bounds on depth or pages): a plain breadth-first walk.
    pub fn reachable(&self) -> HashSet<usize> {
        let mut seen = HashSet::from([0]);
        let mut queue = VecDeque::from([0]);
        while let Some(n) = queue.pop_front() {
            for link in &self.pages[n].links {
                if let Link::Page(t) | Link::Redirect(t) = *link
                    && !self.pages[t].private
                    && seen.insert(t)
                {
                    queue.push_back(t);
                }
            }
        }
        seen
    }

    /// The text a page shows (its words, joined by spaces).
    pub fn text(&self, n: usize) -> String {
        self.pages[n].words.join(" ")
    }

    /// Starts serving the site on loopback: host k on `127.0.0.{k+1}`, each on a port of
    /// its own.
    pub fn serve(self) -> Result<SiteServer, CrawlError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("streamrun-site")
            .enable_all()
            .build()
            .map_err(|e| CrawlError::Site(format!("starting its runtime: {e}")))?;
        let hosts = self.spec.hosts.max(1);
        let port = self.spec.port;
        let listeners = (0..hosts)
            .map(|k| {
                let ip = format!("127.0.0.{}", k + 1);
                runtime
                    .block_on(tokio::net::TcpListener::bind((ip.as_str(), port)))
                    .map_err(|e| CrawlError::Site(format!("binding {ip}:{port}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let addresses = listeners
            .iter()
            .map(|l| l.local_addr().map_err(|e| CrawlError::Site(e.to_string())))
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        let shared = Arc::new(Served {
            site: self,
            addresses: addresses.clone(),
            log: (0..hosts).map(|_| Mutex::new(Vec::new())).collect(),
            running: (0..hosts).map(|_| AtomicUsize::new(0)).collect(),
            most: (0..hosts).map(|_| AtomicUsize::new(0)).collect(),
            started: Instant::now(),
        });
        for (k, listener) in listeners.into_iter().enumerate() {
            let app = Router::new()
                .fallback(answer)
                .with_state((Arc::clone(&shared), k));
            runtime.spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the site's server stopped");
                }
            });
        }
        Ok(SiteServer {
            shared,
            _runtime: runtime,
        })
    }
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Its path.
    pub path: String,
    /// When it arrived, since the server started.
    pub start: Duration,
    /// When its answer was ready.
    pub end: Duration,
}

struct Served {
    site: Site,
    addresses: Vec<SocketAddr>,
    log: Vec<Mutex<Vec<Logged>>>,
    running: Vec<AtomicUsize>,
    most: Vec<AtomicUsize>,
    started: Instant,
}

/// The site, served.
pub struct SiteServer {
    shared: Arc<Served>,
    _runtime: tokio::runtime::Runtime,
}

impl SiteServer {
    /// Where host `k` is served.
    pub fn address(&self, k: usize) -> SocketAddr {
        self.shared.addresses[k]
    }

    /// The URL of page `n`.
    pub fn url(&self, n: usize) -> String {
        page_url(&self.shared.site, &self.shared.addresses, n)
    }

    /// The site served.
    pub fn site(&self) -> &Site {
        &self.shared.site
    }

    /// The host (`ip:port`) of host `k`.
    pub fn host(&self, k: usize) -> String {
        self.address(k).to_string()
    }

    /// Every request host `k` answered so far (the first `LOG_MAX`, a million, of them).
    pub fn log(&self, k: usize) -> Vec<Logged> {
        self.shared.log[k]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many times each `host:port/path` was requested so far, over every host (as
    /// [`log`](Self::log) keeps them).
    pub fn requests(&self) -> BTreeMap<String, usize> {
        let mut count = BTreeMap::new();
        for k in 0..self.shared.addresses.len() {
            let host = self.host(k);
            for logged in self.log(k) {
                *count.entry(format!("{host}{}", logged.path)).or_default() += 1;
            }
        }
        count
    }

    /// The most requests host `k` had at once.
    pub fn most_at_once(&self, k: usize) -> usize {
        self.shared.most[k].load(Ordering::SeqCst)
    }
}

fn page_url(site: &Site, addresses: &[SocketAddr], n: usize) -> String {
    format!("http://{}{}", addresses[site.pages[n].host], site.path(n))
}

/// Counts a request as running on host k while it lives.
struct Running<'a>(&'a Served, usize, String, Duration);

/// Requests logged per host at most (the rest are answered, not logged).
const LOG_MAX: usize = 1 << 20;

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let served = self.0;
        served.running[self.1].fetch_sub(1, Ordering::SeqCst);
        let mut log = served.log[self.1].lock().unwrap_or_else(|p| p.into_inner());
        if log.len() >= LOG_MAX {
            return;
        }
        log.push(Logged {
            path: std::mem::take(&mut self.2),
            start: self.3,
            end: served.started.elapsed(),
        });
    }
}

async fn answer(State((served, k)): State<(Arc<Served>, usize)>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let now = served.running[k].fetch_add(1, Ordering::SeqCst) + 1;
    served.most[k].fetch_max(now, Ordering::SeqCst);
    let _running = Running(&served, k, path.clone(), served.started.elapsed());
    let latency = served.site.spec.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    respond(&served, k, &path)
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn respond(served: &Served, k: usize, path: &str) -> Response {
    let site = &served.site;
    if path == "/robots.txt" {
        if site.spec.garbage_robots && k + 1 == site.spec.hosts.max(1) {
            return (
                StatusCode::OK,
                "\u{0}\u{1}{{{ not : a robots file\n\u{7f}Disallow",
            )
                .into_response();
        }
        let delay = site
            .spec
            .crawl_delay
            .map(|d| format!("Crawl-delay: {d}\n"))
            .unwrap_or_default();
        return (
            StatusCode::OK,
            format!("User-agent: *\n{delay}Disallow: /private/\nDisallow: /hostile/forbidden\n"),
        )
            .into_response();
    }
    if let Some(rest) = path.strip_prefix("/hostile/") {
        return hostile(rest);
    }
    let number = |prefix: &str, suffix: &str| -> Option<usize> {
        path.strip_prefix(prefix)?
            .strip_suffix(suffix)?
            .parse()
            .ok()
            .filter(|n: &usize| *n < site.pages.len() && site.pages[*n].host == k)
    };
    if let Some(n) = number("/r/", "") {
        return (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, site.path(n))],
        )
            .into_response();
    }
    let page = number("/p/", ".html")
        .or_else(|| number("/private/", ".html"))
        .filter(|n| site.path(*n) == path);
    let Some(n) = page else {
        return (StatusCode::NOT_FOUND, "no such page").into_response();
    };
    let mut body = format!(
        "<!doctype html><html><head><title>Page {n}</title></head><body><p>{}</p><ul>",
        site.text(n)
    );
    for link in &site.pages[n].links {
        let href = match *link {
            Link::Page(t) => page_url(site, &served.addresses, t),
            Link::Redirect(t) => format!("http://{}/r/{t}", served.addresses[site.pages[t].host]),
            Link::Broken(x) => format!("/missing/{x}.html"),
        };
        body.push_str(&format!("<li><a href=\"{href}\"></a></li>"));
    }
    body.push_str("</ul></body></html>");
    html(body)
}

fn hostile(what: &str) -> Response {
    match what {
        "bad.html" => html(
            "<html><head><title>Bad</title><body><p>unclosed <b>bold <a href='/hostile/loop/a'>x<a href=\"/p/\u{0}x\"></div></table>< / >&amp &notanentity; <p>tail"
                .into(),
        ),
        "huge" => {
            let chunk = bytes_of(1 << 20);
            let stream = futures::stream::iter(
                (0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            ([(header::CONTENT_TYPE, "text/html")], Body::from_stream(stream)).into_response()
        }
        "slow" => {
            let stream = futures::stream::unfold(0u32, |n| async move {
                if n >= 600 {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"<")), n + 1))
            });
            ([(header::CONTENT_TYPE, "text/html")], Body::from_stream(stream)).into_response()
        }
        "loop/a" => redirect("/hostile/loop/b"),
        "loop/b" => redirect("/hostile/loop/a"),
        "binary" => ([(header::CONTENT_TYPE, "application/octet-stream")], vec![0u8; 4096]).into_response(),
        _ => (StatusCode::NOT_FOUND, "no such page").into_response(),
    }
}

fn redirect(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_owned())]).into_response()
}

fn bytes_of(n: usize) -> axum::body::Bytes {
    axum::body::Bytes::from(b"<p>x</p>".repeat(n / 8))
}

/// Word counts per host of the pages in `pages`, recomputed from the generated site (an
/// oracle for a crawl's analytics).
pub fn word_counts(server: &SiteServer, pages: &HashSet<usize>) -> HashMap<(String, String), u64> {
    let site = server.site();
    let mut counts = HashMap::new();
    for &n in pages {
        let host = server.host(site.pages[n].host);
        for word in &site.pages[n].words {
            *counts
                .entry((host.clone(), (*word).to_owned()))
                .or_default() += 1;
        }
    }
    counts
}

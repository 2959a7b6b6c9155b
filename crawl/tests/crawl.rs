//! Crawls of a generated site served over HTTP on loopback, against oracles computed from
//! the generated site itself.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamrun_crawl::site::{Link, Site, SiteServer, SiteSpec, word_counts};
use streamrun_crawl::{Crawl, CrawlConfig, PageRecord, error_kind};

/// The tests run one at a time: timings seen by the server are the politeness test's
/// evidence, and a crawl beside it would skew them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(spec: SiteSpec) -> SiteServer {
    Site::generate(spec).serve().expect("serve the site")
}

fn config(server: &SiteServer) -> CrawlConfig {
    let hosts: Vec<String> = (0..server
        .site()
        .pages
        .iter()
        .map(|p| p.host)
        .max()
        .unwrap_or(0)
        + 1)
        .map(|k| server.host(k))
        .collect();
    CrawlConfig::new([server.url(0)])
        .allowed_hosts(hosts)
        .max_depth(1_000_000)
        .max_pages(1_000_000)
}

/// The page number of a generated page's URL.
fn page_of(url: &str) -> Option<usize> {
    let file = url.rsplit('/').next()?;
    file.strip_suffix(".html")?.parse().ok()
}

fn pages_fetched(records: &[PageRecord]) -> BTreeSet<usize> {
    records
        .iter()
        .filter(|r| r.status == 200 && r.error_kind.is_empty() && !r.url.ends_with("/robots.txt"))
        .filter_map(|r| page_of(&r.url))
        .collect()
}

#[test]
fn a_generated_site_is_crawled_politely_and_completely() {
    let _serial = one_at_a_time();
    let spec = SiteSpec {
        hosts: 8,
        latency_ms: 40,
        ..SiteSpec::default()
    };
    let hosts = spec.hosts;
    let server = serve(spec);
    let delay = 15;
    let records: Vec<PageRecord> = Crawl::start(config(&server).politeness(2, delay), 1)
        .expect("crawl")
        .records()
        .collect();
    let site = server.site();

    // Every reachable page fetched as a page, each once; what robots.txt forbids never.
    let reachable = site.reachable();
    let fetched = pages_fetched(&records);
    assert_eq!(fetched, reachable.iter().copied().collect::<BTreeSet<_>>());
    let asked = server.requests();
    for (path, n) in &asked {
        assert_eq!(*n, 1, "{path} was requested {n} times");
        assert!(!path.contains("/private/"), "{path} is disallowed");
    }
    // Disallowed pages linked from reachable ones are records, not requests.
    let disallowed: HashSet<usize> = reachable
        .iter()
        .flat_map(|n| &site.pages[*n].links)
        .filter_map(|l| match *l {
            Link::Page(t) | Link::Redirect(t) if site.pages[t].private => Some(t),
            _ => None,
        })
        .collect();
    assert!(!disallowed.is_empty());
    let robots: HashSet<usize> = records
        .iter()
        .filter(|r| r.error_kind == error_kind::ROBOTS)
        .filter_map(|r| page_of(&r.url))
        .collect();
    assert_eq!(robots, disallowed);

    // Broken links and redirects are records with their status.
    let broken = records
        .iter()
        .filter(|r| r.status == 404 && r.url.contains("/missing/"))
        .count();
    let expected_broken: HashSet<(usize, u64)> = reachable
        .iter()
        .flat_map(|n| {
            site.pages[*n].links.iter().filter_map(move |l| match *l {
                Link::Broken(x) => Some((site.pages[*n].host, x)),
                _ => None,
            })
        })
        .collect();
    assert_eq!(broken, expected_broken.len());
    let redirects: Vec<&PageRecord> = records
        .iter()
        .filter(|r| r.error_kind == error_kind::REDIRECT)
        .collect();
    assert!(!redirects.is_empty());
    for r in &redirects {
        assert_eq!(r.status, 301);
        assert_eq!(
            page_of(&r.redirect),
            page_of(&(r.url.replace("/r/", "/p/") + ".html"))
        );
    }

    // Politeness: at most 2 requests of a host at once (each takes 40 ms to answer, so
    // overlaps show), and starts `delay` apart, as the
    // server saw them. A request may reach the server a little later than it was sent (a
    // new connection, a busy thread), so the rate is held over runs of requests: every 10
    // gaps span at least 9 delays.
    for k in 0..hosts {
        assert!(
            server.most_at_once(k) <= 2,
            "host {k}: {}",
            server.most_at_once(k)
        );
        let mut starts: Vec<Duration> = server.log(k).iter().map(|l| l.start).collect();
        starts.sort();
        let delay = Duration::from_millis(delay);
        for run in starts.windows(11) {
            assert!(
                run[10] - run[0] >= delay * 9,
                "host {k}: 11 requests in {:?}",
                run[10] - run[0]
            );
        }
    }

    // The check can fail: the crawl does use both of a host's slots.
    assert!((0..hosts).any(|k| server.most_at_once(k) == 2));

    // The text of each page is its words: word counts per host equal the site's.
    let mut counted: HashMap<(String, String), u64> = HashMap::new();
    for r in records
        .iter()
        .filter(|r| r.status == 200 && r.error_kind.is_empty())
    {
        for word in r.text.split_whitespace() {
            *counted
                .entry((r.host.clone(), word.to_owned()))
                .or_default() += 1;
        }
    }
    assert_eq!(counted, word_counts(&server, &reachable));
}

#[test]
fn two_workers_crawl_what_one_does() {
    let _serial = one_at_a_time();
    let server = serve(SiteSpec {
        pages: 600,
        seed: 11,
        ..SiteSpec::default()
    });
    let crawl = |workers| {
        let records: Vec<PageRecord> = Crawl::start(config(&server).politeness(2, 0), workers)
            .expect("crawl")
            .records()
            .collect();
        let mut outcomes: Vec<(String, u16, String)> = records
            .into_iter()
            .map(|r| (r.url, r.status, r.error_kind))
            .collect();
        outcomes.sort();
        outcomes
    };
    let one = crawl(1);
    assert_eq!(crawl(2), one);
    assert_eq!(crawl(3), one);
    assert!(one.len() > 400);
}

/// Reads worker `index`'s share of a crawl source until it ends, or fails after `limit`.
fn read_worker(source: &dyn streamrun_engine::Source, index: usize, limit: Duration) -> usize {
    use streamrun_engine::{BadRecordPolicy, SourceCollector, WorkerContext};
    let ctx = WorkerContext {
        job: "crawl".into(),
        index,
        workers: 2,
        local_workers: 2,
    };
    let mut reader = source.open(&ctx).expect("open");
    let mut out = SourceCollector::new(BadRecordPolicy::Fail);
    let started = std::time::Instant::now();
    while reader.read(&mut out).expect("read") {
        assert!(
            started.elapsed() < limit,
            "worker {index} still crawls after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    out.take().0.iter().map(|b| b.num_rows()).sum()
}

/// In a job, each worker opens the crawl source in its turn, and a crawl that has nothing
/// left to do ends after a grace for the workers that have not opened it. A worker that opens
/// it after that ends at once: were it to crawl, the links it found for the other worker's
/// hosts would wait for a worker that is gone.
#[test]
fn a_worker_that_opens_the_source_after_the_crawl_ended_ends_at_once() {
    let _serial = one_at_a_time();
    let server = serve(SiteSpec {
        pages: 200,
        hosts: 8,
        seed: 3,
        ..SiteSpec::default()
    });
    // A seed on every host, so that both workers have some to crawl.
    let seeds: Vec<String> = (0..8)
        .filter_map(|k| server.site().pages.iter().position(|p| p.host == k))
        .map(|n| server.url(n))
        .collect();
    let mut config = config(&server).politeness(2, 0);
    config.seeds = seeds;
    // Which worker owns which host depends on the hosts' ports: one of the two orders starts
    // with a worker that has hosts to crawl.
    let crawled = [(0, 1), (1, 0)].into_iter().find_map(|(first, late)| {
        let source = streamrun_crawl::CrawlSource::new(config.clone());
        let rows = read_worker(&source, first, Duration::from_secs(60));
        let late_rows = read_worker(&source, late, Duration::from_secs(2));
        assert_eq!(late_rows, 0, "the late worker {late} fetched nothing");
        (rows > 0).then_some(rows)
    });
    assert!(crawled.is_some(), "neither worker crawled alone");
}

#[test]
fn a_stopped_crawl_resumes_from_its_snapshot_without_fetching_twice() {
    let _serial = one_at_a_time();
    let spec = SiteSpec {
        pages: 800,
        seed: 5,
        ..SiteSpec::default()
    };
    let server = serve(spec);
    let expected = server.site().reachable();
    // Few records wait for the reader: the crawl cannot run far ahead of it.
    let mut stopped = config(&server).politeness(2, 1);
    stopped.buffer = 8;
    let mut run = Crawl::start(stopped, 2).expect("crawl");
    let mut first = Vec::new();
    while first.len() < 300 {
        first.push(run.next_record().expect("a record"));
    }
    let (rest, snapshot) = run.stop().expect("stop");
    first.extend(rest);
    let bytes = snapshot.to_bytes().expect("snapshot");
    let snapshot = streamrun_crawl::CrawlSnapshot::from_bytes(&bytes).expect("read back");
    // Bytes of another version (here: the state without its header) are refused, saying so.
    let header = bytes
        .iter()
        .position(|b| *b == b'\n')
        .expect("a header line")
        + 1;
    let Err(e) = streamrun_crawl::CrawlSnapshot::from_bytes(&bytes[header..]) else {
        panic!("a snapshot without its header was read");
    };
    assert!(
        e.to_string()
            .contains("not a crawl snapshot of this version"),
        "{e}"
    );
    // Resumed on another number of workers: hosts move to the partitions owning them now.
    let second: Vec<PageRecord> = Crawl::resume(config(&server).politeness(2, 1), 3, &snapshot)
        .expect("resume")
        .records()
        .collect();
    assert!(!second.is_empty(), "the crawl was stopped half way");
    let mut all = pages_fetched(&first);
    let again = pages_fetched(&second);
    assert!(all.is_disjoint(&again), "no page fetched twice");
    all.extend(again);
    assert_eq!(all, expected.iter().copied().collect::<BTreeSet<_>>());
    for (path, n) in server.requests() {
        assert_eq!(n, 1, "{path} was requested {n} times");
    }
}

#[test]
fn hostile_servers_and_pages_are_records_not_failures() {
    let _serial = one_at_a_time();
    let server = serve(SiteSpec {
        pages: 20,
        hosts: 2,
        garbage_robots: true,
        seed: 3,
        ..SiteSpec::default()
    });
    let base = format!("http://{}/hostile", server.host(0));
    let mut config = config(&server).politeness(4, 0);
    config.seeds = ["bad.html", "huge", "slow", "loop/a", "binary"]
        .iter()
        .map(|p| format!("{base}/{p}"))
        .chain([server.url(1)])
        .collect();
    config.max_body_bytes = 1 << 20;
    config.timeout_ms = 1_500;
    config.retries = 0;
    config.max_redirects = 3;
    let started = std::time::Instant::now();
    let records: Vec<PageRecord> = Crawl::start(config, 1).expect("crawl").records().collect();
    assert!(started.elapsed() < Duration::from_secs(30));
    let of = |path: &str| -> Vec<&PageRecord> {
        records
            .iter()
            .filter(|r| r.url == format!("{base}/{path}"))
            .collect()
    };
    // Malformed HTML is parsed: its text and its links.
    let bad = of("bad.html");
    assert_eq!(bad.len(), 1);
    assert!(bad[0].error_kind.is_empty(), "{:?}", bad[0]);
    assert!(bad[0].text.contains("unclosed bold"), "{}", bad[0].text);
    assert!(bad[0].links.iter().any(|l| l.ends_with("/hostile/loop/a")));
    // A 100 MB body is cut off at the cap.
    let huge = of("huge");
    assert_eq!(huge[0].error_kind, error_kind::TOO_LARGE);
    assert!(huge[0].bytes <= (1 << 20) + (1 << 20));
    // A server that sends a byte a second is cut off by the timeout.
    assert_eq!(of("slow")[0].error_kind, error_kind::TIMEOUT);
    // A redirect loop: each URL once, then nothing more (seen already).
    assert_eq!(of("loop/a").len(), 1);
    assert_eq!(of("loop/b").len(), 1);
    assert_eq!(of("loop/a")[0].error_kind, error_kind::REDIRECT);
    // Not HTML: recorded, not read.
    assert_eq!(of("binary")[0].error_kind, error_kind::CONTENT_TYPE);
    assert_eq!(of("binary")[0].bytes, 0);
    // The host with a garbage robots.txt is crawled all the same.
    assert!(
        records
            .iter()
            .any(|r| r.host == server.host(1) && r.status == 200 && !r.url.ends_with("robots.txt"))
    );
}

/// One request a [`TwoPorts`] server answered.
#[derive(Debug, Clone)]
struct Hit {
    /// Which of the two ports (0 or 1).
    port: usize,
    path: String,
    start: Instant,
    end: Instant,
}

/// Two servers of one host name, `127.0.0.1`, on two ports: what politeness per host and
/// robots.txt per origin are tested against. Every answer takes 100 ms.
///
/// - Port 0's robots.txt redirects to `/robots/moved.txt`, which disallows `/secret/`.
/// - Port 1's robots.txt disallows `/hidden/` (and allows `/secret/`).
/// - Port 0's `/` links to `/limited`, then to 15 pages on each port, then to a page under
///   each disallowed path and to port 1's `/secret/a`.
/// - `/limited` answers 429 with `Retry-After: 1` the first time, then a page.
struct TwoPorts {
    ports: Vec<u16>,
    hits: Arc<Mutex<Vec<Hit>>>,
    _runtime: tokio::runtime::Runtime,
}

struct TwoPortsState {
    ports: Vec<u16>,
    hits: Arc<Mutex<Vec<Hit>>>,
    limited: AtomicUsize,
}

impl TwoPorts {
    fn start() -> TwoPorts {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listeners: Vec<tokio::net::TcpListener> = (0..2)
            .map(|_| {
                runtime
                    .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                    .expect("bind")
            })
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("address").port())
            .collect();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(TwoPortsState {
            ports: ports.clone(),
            hits: Arc::clone(&hits),
            limited: AtomicUsize::new(0),
        });
        for (port, listener) in listeners.into_iter().enumerate() {
            let app = axum::Router::new()
                .fallback(two_ports_answer)
                .with_state((port, Arc::clone(&state)));
            runtime.spawn(async move { axum::serve(listener, app).await });
        }
        TwoPorts {
            ports,
            hits,
            _runtime: runtime,
        }
    }

    fn url(&self, port: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[port])
    }

    fn hits(&self) -> Vec<Hit> {
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner()).clone();
        hits.sort_by_key(|h| h.start);
        hits
    }
}

async fn two_ports_answer(
    axum::extract::State((port, state)): axum::extract::State<(usize, Arc<TwoPortsState>)>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let path = uri.path().to_owned();
    let page = |body: String| {
        (
            [(header::CONTENT_TYPE, "text/html")],
            format!("<html><body>{body}</body></html>"),
        )
            .into_response()
    };
    let response = match (port, path.as_str()) {
        (0, "/robots.txt") => {
            (StatusCode::FOUND, [(header::LOCATION, "/robots/moved.txt")]).into_response()
        }
        (0, "/robots/moved.txt") => "User-agent: *\nDisallow: /secret/\n".into_response(),
        (1, "/robots.txt") => "User-agent: *\nDisallow: /hidden/\n".into_response(),
        (0, "/") => {
            let at = |port: usize, path: &str| {
                format!(
                    "<a href='http://127.0.0.1:{}{path}'>x</a>",
                    state.ports[port]
                )
            };
            let mut links = at(0, "/limited");
            for i in 0..15 {
                links += &at(0, &format!("/p/{i}"));
                links += &at(1, &format!("/p/{i}"));
            }
            links += &at(0, "/secret/a");
            links += &at(1, "/hidden/a");
            links += &at(1, "/secret/a");
            page(links)
        }
        (0, "/limited") if state.limited.fetch_add(1, Ordering::SeqCst) == 0 => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "slow down",
        )
            .into_response(),
        (_, p) if p == "/limited" || p.starts_with("/p/") || p.starts_with("/secret/") => {
            page("words".into())
        }
        _ => (StatusCode::NOT_FOUND, "no such page").into_response(),
    };
    state
        .hits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Hit {
            port,
            path,
            start,
            end: Instant::now(),
        });
    response
}

#[test]
fn politeness_is_per_host_name_and_robots_per_origin_and_retry_after_holds_the_host() {
    let _serial = one_at_a_time();
    let server = TwoPorts::start();
    let delay = Duration::from_millis(60);
    let mut config = CrawlConfig::new([server.url(0, "/")])
        .allowed_hosts(server.ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .politeness(2, delay.as_millis() as u64);
    config.retries = 2;
    let records: Vec<PageRecord> = Crawl::start(config, 2).expect("crawl").records().collect();
    let hits = server.hits();
    let asked: BTreeSet<(usize, &str)> = hits.iter().map(|h| (h.port, h.path.as_str())).collect();

    // Each origin's robots.txt, the first one through its redirect, rules its own pages.
    assert!(asked.contains(&(0, "/robots.txt")) && asked.contains(&(0, "/robots/moved.txt")));
    assert!(asked.contains(&(1, "/robots.txt")));
    assert!(
        !asked.contains(&(0, "/secret/a")),
        "port 0's robots.txt forbids it"
    );
    assert!(
        !asked.contains(&(1, "/hidden/a")),
        "port 1's robots.txt forbids it"
    );
    assert!(
        asked.contains(&(1, "/secret/a")),
        "port 1's robots.txt allows it"
    );
    let forbidden: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.error_kind == error_kind::ROBOTS)
        .map(|r| r.url.as_str())
        .collect();
    let expected = [server.url(0, "/secret/a"), server.url(1, "/hidden/a")];
    assert_eq!(forbidden, expected.iter().map(String::as_str).collect());
    for k in 0..2 {
        assert_eq!(
            asked
                .iter()
                .filter(|(p, path)| *p == k && path.starts_with("/p/"))
                .count(),
            15
        );
    }

    // One host, two ports: at most 2 requests at once over both, and starts `delay` apart
    // (over runs of 10 gaps, as in the generated site's test).
    let most = hits
        .iter()
        .map(|h| {
            hits.iter()
                .filter(|o| o.start <= h.start && h.start < o.end)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(most <= 2, "{most} requests of 127.0.0.1 at once");
    for run in hits.windows(11) {
        let span = run[10].start - run[0].start;
        assert!(span >= delay * 9, "11 requests of 127.0.0.1 in {span:?}");
    }

    // The 429 holds the whole host for a second (not only its own retry), then the page
    // is fetched.
    let limited: Vec<&Hit> = hits.iter().filter(|h| h.path == "/limited").collect();
    assert_eq!(limited.len(), 2, "{limited:?}");
    let answered = limited[0].end;
    assert!(limited[1].start >= answered + Duration::from_secs(1));
    let held = hits
        .iter()
        .filter(|h| {
            h.start > answered + Duration::from_millis(200)
                && h.start < answered + Duration::from_secs(1)
        })
        .count();
    assert_eq!(held, 0, "requests started while the host was held");
    // The check can fail: requests were waiting while it was held.
    assert!(hits.iter().filter(|h| h.start > answered).count() > 10);
    let record = records
        .iter()
        .find(|r| r.url == server.url(0, "/limited"))
        .expect("a record of /limited");
    assert_eq!((record.status, record.error_kind.as_str()), (200, ""));
}

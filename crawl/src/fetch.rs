//! One request: retries with backoff, no automatic redirects (each is a record, and its
//! target goes through the frontier), a content-type filter and a body size cap.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};

use crate::{CrawlConfig, CrawlError, error_kind};

/// What a request gave.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub bytes: u64,
    /// Where a redirect points (its `Location`, as sent).
    pub location: Option<String>,
    /// How long a 429 or 503 answer asked to wait (its `Retry-After`).
    pub retry_after: Option<Duration>,
    /// Empty when the body was read; otherwise an [`error_kind`].
    pub error_kind: &'static str,
    pub error: String,
    pub elapsed: Duration,
}

/// The longest `Retry-After` obeyed: a server asking for longer is not retried (and its host
/// waits this long).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A `Retry-After` value: seconds, or an HTTP date (a date past is no wait). `None` when
/// there is none or it is neither.
pub(crate) fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

pub(crate) struct Fetcher {
    client: reqwest::Client,
    retries: u32,
    backoff: Duration,
    max_body: u64,
    content_types: Vec<String>,
}

impl Fetcher {
    pub(crate) fn new(config: &CrawlConfig) -> Result<Fetcher, CrawlError> {
        let client = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms.min(5_000)))
            .pool_max_idle_per_host(config.per_host_concurrency.max(1) as usize * 2)
            .build()
            .map_err(|e| CrawlError::Start(format!("the HTTP client: {e}")))?;
        Ok(Fetcher {
            client,
            retries: config.retries,
            // A retry waits at least the host's delay: politeness holds for retries too.
            backoff: Duration::from_millis(config.backoff_ms.max(config.per_host_delay_ms)),
            max_body: config.max_body_bytes,
            content_types: config.content_types.clone(),
        })
    }

    /// Fetches `url`, trying again after connection failures, timeouts, 429 and 5xx
    /// statuses, with a backoff that doubles.
    ///
    /// A `Retry-After` is obeyed: `hold` is told how long (at most [`MAX_RETRY_AFTER`]) so
    /// that the host's other requests wait too, and the retry waits at least that long. One
    /// asking for longer than [`MAX_RETRY_AFTER`] is not retried.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        any_type: bool,
        hold: impl Fn(Duration),
    ) -> Fetched {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let fetched = self.once(url, any_type).await;
            let transient = matches!(
                fetched.error_kind,
                error_kind::CONNECT | error_kind::TIMEOUT
            ) || fetched.status >= 500
                || fetched.status == 429;
            if let Some(wait) = fetched.retry_after {
                hold(wait.min(MAX_RETRY_AFTER));
            }
            let too_long = fetched.retry_after.is_some_and(|w| w > MAX_RETRY_AFTER);
            if !transient || too_long || attempt >= self.retries {
                return Fetched {
                    elapsed: started.elapsed(),
                    ..fetched
                };
            }
            let backoff = self.backoff * 2u32.saturating_pow(attempt);
            tokio::time::sleep(backoff.max(fetched.retry_after.unwrap_or_default())).await;
            attempt += 1;
        }
    }

    async fn once(&self, url: &str, any_type: bool) -> Fetched {
        let response = match self.client.get(url).send().await {
            Ok(r) => r,
            Err(e) => return failed(&e),
        };
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let content_type = header(CONTENT_TYPE);
        if response.status().is_redirection() {
            return Fetched {
                status,
                content_type,
                location: Some(header(LOCATION)),
                error_kind: error_kind::REDIRECT,
                ..Fetched::default()
            };
        }
        if !response.status().is_success() {
            // Recorded with its status; its body (an error page) is not read.
            let retry_after = matches!(status, 429 | 503)
                .then(|| retry_after(&header(RETRY_AFTER), SystemTime::now()))
                .flatten();
            return Fetched {
                status,
                content_type,
                retry_after,
                error_kind: error_kind::STATUS,
                error: format!("status {status}"),
                ..Fetched::default()
            };
        }
        let lowered = content_type.to_ascii_lowercase();
        let wanted = any_type
            || self
                .content_types
                .iter()
                .any(|t| lowered.starts_with(t.as_str()));
        if !wanted {
            return Fetched {
                status,
                error_kind: error_kind::CONTENT_TYPE,
                error: format!("content type '{content_type}' is not crawled"),
                content_type,
                ..Fetched::default()
            };
        }
        if let Some(length) = response.content_length()
            && length > self.max_body
        {
            return Fetched {
                status,
                content_type,
                error_kind: error_kind::TOO_LARGE,
                error: format!(
                    "the body is {length} bytes, above the {} cap",
                    self.max_body
                ),
                ..Fetched::default()
            };
        }
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > self.max_body {
                        return Fetched {
                            status,
                            content_type,
                            bytes: body.len() as u64,
                            error_kind: error_kind::TOO_LARGE,
                            error: format!("the body passed the {} byte cap", self.max_body),
                            ..Fetched::default()
                        };
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Fetched {
                        status,
                        content_type,
                        bytes: body.len() as u64,
                        ..failed(&e)
                    };
                }
            }
        }
        // A status that is not a success returned above: this is a page.
        Fetched {
            status,
            content_type,
            bytes: body.len() as u64,
            body,
            ..Fetched::default()
        }
    }
}

fn failed(e: &reqwest::Error) -> Fetched {
    let kind = if e.is_timeout() {
        error_kind::TIMEOUT
    } else if e.is_connect() {
        error_kind::CONNECT
    } else {
        error_kind::OTHER
    };
    // The error's sources say what happened below the HTTP layer.
    let mut error = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        error.push_str(": ");
        error.push_str(&s.to_string());
        source = s.source();
    }
    Fetched {
        error_kind: kind,
        error,
        ..Fetched::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 25 Nov 2026 10:00:00 GMT").expect("a date");
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Wed, 25 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date already past: no wait.
        assert_eq!(
            retry_after("Wed, 25 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
        assert_eq!(retry_after("", now), None);
    }
}

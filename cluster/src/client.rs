//! A client of the head's REST API, for the CLI and for programs that drive a cluster.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::head::{SubmitReply, SubmitRequest};
use crate::store::{JobRecord, NodeRecord};
use crate::{Error, Result};

/// A client of one head.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the head whose REST API is at `address` (`host:port`, or an `http://` URL),
    /// carrying `token`.
    pub fn new(address: &str, token: String) -> Result<Client> {
        let base = if address.starts_with("http://") || address.starts_with("https://") {
            address.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", address.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client { base, token, http })
    }

    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Error::Rpc(format!("cannot reach the head at {}: {e}", self.base)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body);
        Err(if status == reqwest::StatusCode::UNAUTHORIZED {
            Error::Rpc(format!("the head refused the call ({what}): {message}"))
        } else {
            Error::Refused(format!("{what}: {message}"))
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T> {
        self.call(request, what)
            .await?
            .json::<T>()
            .await
            .map_err(|e| Error::Rpc(format!("{what}: unreadable answer: {e}")))
    }

    /// Submits a job; returns its id.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<String> {
        let reply: SubmitReply = self
            .json(
                self.http
                    .post(format!("{}/api/jobs", self.base))
                    .json(request),
                "submit",
            )
            .await?;
        Ok(reply.job_id)
    }

    /// Every job.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>> {
        self.json(
            self.http.get(format!("{}/api/jobs", self.base)),
            "list jobs",
        )
        .await
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<JobRecord> {
        self.json(
            self.http.get(format!("{}/api/jobs/{id}", self.base)),
            "job status",
        )
        .await
    }

    /// A job's output so far.
    pub async fn logs(&self, id: &str) -> Result<String> {
        self.call(
            self.http.get(format!("{}/api/jobs/{id}/logs", self.base)),
            "job logs",
        )
        .await?
        .text()
        .await
        .map_err(|e| Error::Rpc(format!("job logs: {e}")))
    }

    /// Process `process`'s output of job `id` from byte `offset` on (a page of it).
    pub async fn log_from(&self, id: &str, process: u32, offset: u64) -> Result<Vec<u8>> {
        let url = format!(
            "{}/api/jobs/{id}/logs?process={process}&offset={offset}",
            self.base
        );
        Ok(self
            .call(self.http.get(url), "job logs")
            .await?
            .bytes()
            .await
            .map_err(|e| Error::Rpc(format!("job logs: {e}")))?
            .to_vec())
    }

    /// Stops a job.
    pub async fn stop(&self, id: &str) -> Result<JobRecord> {
        self.json(
            self.http.post(format!("{}/api/jobs/{id}/stop", self.base)),
            "stop job",
        )
        .await
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.json(
            self.http.get(format!("{}/api/nodes", self.base)),
            "list nodes",
        )
        .await
    }

    /// Where node `node`'s object store serves its objects (the directory lookup for an
    /// `ObjectRef`'s node).
    pub async fn object_address(&self, node: &str) -> Result<String> {
        self.nodes()
            .await?
            .into_iter()
            .find(|n| n.id == node)
            .and_then(|n| n.object_address)
            .ok_or_else(|| {
                Error::Refused(format!(
                    "node '{node}' has no object store the head knows of"
                ))
            })
    }

    /// Waits until job `id` has ended, polling every `every`, and returns its record.
    pub async fn wait(&self, id: &str, every: Duration) -> Result<JobRecord> {
        loop {
            let job = self.job(id).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            tokio::time::sleep(every).await;
        }
    }
}

//! The head's control plane in-process: registration, the protocol version, the token on
//! gRPC and REST, and recovery from the store after a restart.

use std::net::SocketAddr;
use std::time::Duration;

use streamrun_cluster::client::Client;
use streamrun_cluster::head::{self, HeadConfig, HeadInfo};
use streamrun_cluster::proto::control_client::ControlClient;
use streamrun_cluster::{PROTOCOL_VERSION, proto};

/// Runs a head on free loopback ports until the returned sender is used.
async fn start_head(
    dir: &std::path::Path,
) -> (
    HeadInfo,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = HeadConfig::new(dir.to_path_buf());
    config.grpc = SocketAddr::from(([127, 0, 0, 1], 0));
    config.rest = SocketAddr::from(([127, 0, 0, 1], 0));
    config.heartbeat_interval = Duration::from_millis(100);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        head::run(
            config,
            async {
                let _ = stopped.await;
            },
            move |info| {
                let _ = ready_tx.send(info.clone());
            },
        )
        .await
        .expect("head");
    });
    let info = ready_rx.await.expect("head ready");
    (info, stop, task)
}

/// A head under test, with its token and a client of each API.
struct TestHead {
    info: HeadInfo,
    token: String,
    grpc: ControlClient<tonic::transport::Channel>,
    rest: Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestHead {
    async fn start(dir: &std::path::Path) -> TestHead {
        let (info, stop, task) = start_head(dir).await;
        let token = streamrun_cluster::token::read(&dir.join("token")).expect("token");
        let grpc = ControlClient::connect(format!("http://{}", info.grpc))
            .await
            .expect("connect");
        let rest = Client::new(&info.rest.to_string(), token.clone()).expect("client");
        TestHead {
            info,
            token,
            grpc,
            rest,
            stop,
            task,
        }
    }

    async fn shut_down(self) {
        let _ = self.stop.send(());
        self.task.await.expect("head stopped");
    }
}

/// A job of `workers` workers running `true`.
fn true_job(workers: u32, name: Option<&str>) -> head::SubmitRequest {
    head::SubmitRequest {
        name: name.map(str::to_owned),
        workers,
        entrypoint: streamrun_cluster::store::Entrypoint::Binary {
            program: "true".into(),
            args: vec![],
        },
        env: Default::default(),
    }
}

fn register(token: Option<&str>, version: u32) -> tonic::Request<proto::RegisterRequest> {
    let request = tonic::Request::new(proto::RegisterRequest {
        protocol_version: version,
        host: "127.0.0.1".into(),
        resources: Some(proto::Resources {
            cpus: 3,
            ..Default::default()
        }),
        node_id: String::new(),
    });
    match token {
        Some(t) => authorized(request.into_inner(), t),
        None => request,
    }
}

#[tokio::test]
async fn the_head_checks_token_and_version_and_recovers_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let mut head = TestHead::start(dir.path()).await;
    let token = head.token.clone();
    let client = &mut head.grpc;

    let refused = client
        .register(register(None, PROTOCOL_VERSION))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = client
        .register(register(Some("wrong"), PROTOCOL_VERSION))
        .await
        .expect_err("bad token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = client
        .register(register(Some(&token), PROTOCOL_VERSION + 1))
        .await
        .expect_err("version");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("protocol version"),
        "{}",
        refused.message()
    );
    let node = client
        .register(register(Some(&token), PROTOCOL_VERSION))
        .await
        .expect("register")
        .into_inner()
        .node_id;

    let http = reqwest::Client::new();
    let url = format!("http://{}/api/nodes", head.info.rest);
    let anonymous = http.get(&url).send().await.expect("get");
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    let wrong = http
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    let client = head.rest.clone();
    let nodes = client.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].resources.cpus, 3);
    let e = client
        .submit(&true_job(4, None))
        .await
        .expect_err("too many workers");
    assert!(
        e.to_string().contains("4 workers") && e.to_string().contains("3 free CPUs"),
        "{e}"
    );
    let job = client
        .submit(&true_job(2, Some("two")))
        .await
        .expect("submit");

    // Restart: the same directory, new ports. Nodes and jobs come back from the store.
    head.shut_down().await;
    let head = TestHead::start(dir.path()).await;
    let client = &head.rest;
    let nodes = client.nodes().await.expect("nodes");
    assert_eq!(
        nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        vec![node]
    );
    let recovered = client.job(&job).await.expect("job");
    assert_eq!(recovered.name, "two");
    assert_eq!(recovered.state, streamrun_cluster::store::JobState::Pending);
    head.shut_down().await;
}

/// A heartbeat of `node` carrying `processes` and `logs`.
fn beat(
    node: &str,
    processes: Vec<proto::ProcessStatus>,
    logs: Vec<proto::LogChunk>,
    token: &str,
) -> tonic::Request<proto::HeartbeatRequest> {
    authorized(
        proto::HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            node_id: node.to_owned(),
            processes,
            logs,
            object_address: String::new(),
        },
        token,
    )
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

#[tokio::test]
async fn a_job_failing_on_several_processes_at_once_frees_its_cpus_once() {
    let dir = tempfile::tempdir().expect("dir");
    let mut head = TestHead::start(dir.path()).await;
    let token = head.token.clone();
    let grpc = &mut head.grpc;
    let register_node = |cpus: u32| {
        let mut r = register(Some(&token), PROTOCOL_VERSION);
        if let Some(res) = r.get_mut().resources.as_mut() {
            res.cpus = cpus;
        }
        r
    };
    let a = grpc
        .register(register_node(6))
        .await
        .expect("a")
        .into_inner()
        .node_id;
    let b = grpc
        .register(register_node(1))
        .await
        .expect("b")
        .into_inner()
        .node_id;
    let rest = head.rest.clone();
    let binary = || streamrun_cluster::store::Entrypoint::Binary {
        program: "true".into(),
        args: vec![],
    };
    let x = rest
        .submit(&head::SubmitRequest {
            name: None,
            workers: 2,
            entrypoint: binary(),
            env: Default::default(),
        })
        .await
        .expect("x");
    // Five single-thread processes: four on a, one on b.
    let y = rest
        .submit(&head::SubmitRequest {
            name: None,
            workers: 5,
            entrypoint: binary(),
            env: Default::default(),
        })
        .await
        .expect("y");
    let used = |nodes: &[streamrun_cluster::store::NodeRecord], id: &str| {
        nodes.iter().find(|n| n.id == id).map(|n| n.used_cpus)
    };
    let nodes = rest.nodes().await.expect("nodes");
    assert_eq!((used(&nodes, &a), used(&nodes, &b)), (Some(6), Some(1)));

    // One heartbeat from a: its four processes of y all failed.
    let job = rest.job(&y).await.expect("y");
    let processes = job
        .placements
        .iter()
        .filter(|p| p.node == a)
        .map(|p| proto::ProcessStatus {
            job_id: y.clone(),
            process: p.process,
            running: false,
            exit_code: Some(1),
            reason: "boom".into(),
        })
        .collect::<Vec<_>>();
    assert_eq!(processes.len(), 4);
    let reply = grpc
        .heartbeat(beat(&a, processes, Vec::new(), &token))
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(
        reply.launches.iter().all(|l| l.job_id == x),
        "x's launch is still due"
    );
    let job = rest.job(&y).await.expect("y");
    assert_eq!(job.state, streamrun_cluster::store::JobState::Failed);
    let nodes = rest.nodes().await.expect("nodes");
    assert_eq!(used(&nodes, &a), Some(2), "x's two CPUs stay taken");
    assert_eq!(used(&nodes, &b), Some(0));
    // b is told to stop y's process there.
    let reply = grpc
        .heartbeat(beat(&b, Vec::new(), Vec::new(), &token))
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(reply.stop_jobs, vec![y]);
    head.shut_down().await;
}

#[tokio::test]
async fn output_sent_again_after_a_lost_reply_is_written_once() {
    let dir = tempfile::tempdir().expect("dir");
    let mut head = TestHead::start(dir.path()).await;
    let token = head.token.clone();
    let grpc = &mut head.grpc;
    let node = grpc
        .register(register(Some(&token), PROTOCOL_VERSION))
        .await
        .expect("register")
        .into_inner()
        .node_id;
    let rest = head.rest.clone();
    let job = rest.submit(&true_job(1, None)).await.expect("submit");
    let chunk = |offset: u64, text: &str| proto::LogChunk {
        job_id: job.clone(),
        process: 0,
        data: text.as_bytes().to_vec(),
        offset,
    };
    for logs in [
        vec![chunk(0, "hello\n")],
        vec![chunk(0, "hello\n")],
        vec![chunk(0, "hello\nwor"), chunk(9, "ld\n")],
    ] {
        grpc.heartbeat(beat(&node, Vec::new(), logs, &token))
            .await
            .expect("heartbeat");
    }
    assert_eq!(rest.logs(&job).await.expect("logs"), "hello\nworld\n");
    head.shut_down().await;
}

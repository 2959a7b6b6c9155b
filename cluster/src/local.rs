//! The head and agents of this machine: where they keep their files, and how `stream-run stop`
//! finds and stops them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::head::HeadInfo;
use crate::{Error, Result};

/// The variable naming Streamrun's directory on this machine (default `~/.streamrun`).
pub const HOME_ENV: &str = "STREAMRUN_HOME";

/// Streamrun's directory on this machine: `STREAMRUN_HOME`, else `~/.streamrun`.
pub fn home() -> PathBuf {
    std::env::var_os(HOME_ENV)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".streamrun")))
        .unwrap_or_else(|| PathBuf::from(".streamrun"))
}

/// The local head's directory.
pub fn head_dir(home: &Path) -> PathBuf {
    home.join("head")
}

/// Where local agents record their process ids.
pub fn agents_dir(home: &Path) -> PathBuf {
    home.join("agents")
}

/// The running local head's addresses, if there is one.
pub fn head_info(home: &Path) -> Option<HeadInfo> {
    let text = std::fs::read(head_dir(home).join("head.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Records a running agent's process id, for `stop`.
pub fn record_agent(home: &Path) -> Result<PathBuf> {
    let dir = agents_dir(home);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(format!("{}.pid", std::process::id()));
    std::fs::write(&path, std::process::id().to_string())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// Whether process `pid` runs: it exists and has not exited (a zombie waiting for its parent
/// to reap it has).
fn alive(pid: i32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false);
    kill(Pid::from_raw(pid), None).is_ok() && !zombie
}

/// Whether `pid` is a running `stream-run` (and not another program that reused the id of
/// one that is gone).
fn is_stream_run(pid: i32) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("stream-run"))
}

/// Stops the local head and agents (SIGTERM; they stop their job processes), waits up to
/// `patience` for them to exit, and says what it stopped.
pub fn stop_all(home: &Path, patience: Duration) -> Result<Vec<String>> {
    let mut targets: Vec<(String, i32)> = Vec::new();
    let head = head_info(home).filter(|info| is_stream_run(info.pid as i32));
    if let Ok(entries) = std::fs::read_dir(agents_dir(home)) {
        for entry in entries.flatten() {
            let path = entry.path();
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            match pid {
                Some(pid) if is_stream_run(pid) => {
                    targets.push((format!("agent (pid {pid})"), pid))
                }
                _ => {
                    // A stale record of an agent that is gone.
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    // Agents first, so that their jobs' processes stop before the head does.
    let deadline = Instant::now() + patience;
    let stop = |group: &[(String, i32)]| {
        for (_, pid) in group {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        while Instant::now() < deadline && group.iter().any(|(_, p)| alive(*p)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    stop(&targets);
    if let Some(info) = head {
        let head = vec![(format!("head (pid {})", info.pid), info.pid as i32)];
        stop(&head);
        targets.extend(head);
    }
    let stuck: Vec<&str> = targets
        .iter()
        .filter(|(_, p)| alive(*p))
        .map(|(n, _)| n.as_str())
        .collect();
    if !stuck.is_empty() {
        return Err(Error::Refused(format!(
            "still running after {:.0} s: {}",
            patience.as_secs_f64(),
            stuck.join(", ")
        )));
    }
    Ok(targets.into_iter().map(|(n, _)| n).collect())
}

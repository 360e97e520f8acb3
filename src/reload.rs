//! Reloading a running node's configuration: the node's side (SIGHUP, and the state file it
//! keeps beside its pid file) and the operator's (`peroxo reload`, `peroxo check-config
//! --diff`).
//!
//! The state file (`<pid-file>.json`) says what the node runs with, as a flat list of keys
//! with secrets fingerprinted, and how its last reload ended:
//! `{"pid": 4242, "reloads": 1, "applied_config": {...}, "last_reload": {...}}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use peroxo_config::{Change, Config, ConfigError, Snapshot};
use peroxo_gateway::server::ReloadReport;
use serde_json::json;

/// SIGHUP, as a stream of reload requests. Installed before the node starts, so a SIGHUP
/// that arrives early does not kill the process (its default action).
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

pub(crate) fn hangup_signal() -> anyhow::Result<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signal = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        Ok(Hangups { signal })
    }
    #[cfg(not(unix))]
    Ok(Hangups {})
}

impl Hangups {
    pub(crate) async fn recv(&mut self) -> Option<()> {
        #[cfg(unix)]
        return self.signal.recv().await;
        #[cfg(not(unix))]
        std::future::pending().await
    }
}

/// The pid file and the state file beside it.
pub(crate) struct StateFile {
    pid_path: PathBuf,
    state_path: PathBuf,
    reloads: AtomicU64,
}

fn state_path(pid_path: &Path) -> PathBuf {
    let mut name = pid_path.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn change_json(change: &Change) -> serde_json::Value {
    json!({ "key": change.key, "before": change.before, "after": change.after, "live": change.live })
}

impl StateFile {
    pub(crate) fn new(pid_path: PathBuf) -> Self {
        Self {
            state_path: state_path(&pid_path),
            pid_path,
            reloads: AtomicU64::new(0),
        }
    }

    /// Writes the pid file and the first state, once the node serves.
    pub(crate) fn started(&self, applied: &Snapshot) -> anyhow::Result<()> {
        write_atomically(
            &self.pid_path,
            format!("{}\n", std::process::id()).as_bytes(),
        )?;
        self.write(applied, serde_json::Value::Null)
    }

    /// Records a reload's outcome and the configuration the node now runs with.
    pub(crate) fn reloaded(
        &self,
        applied: &Snapshot,
        outcome: &Result<ReloadReport, ConfigError>,
    ) -> anyhow::Result<()> {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = match outcome {
            Ok(report) => json!({
                "at": at,
                "outcome": if report.applied.is_empty() { "unchanged" } else { "applied" },
                "applied": report.applied.iter().map(change_json).collect::<Vec<_>>(),
                "restart_needed": report.restart_needed.iter().map(change_json).collect::<Vec<_>>(),
            }),
            Err(error) => json!({
                "at": at,
                "outcome": "rejected",
                "error": { "key": error.key, "message": error.message },
            }),
        };
        self.write(applied, last)
    }

    fn write(&self, applied: &Snapshot, last_reload: serde_json::Value) -> anyhow::Result<()> {
        let state = json!({
            "pid": std::process::id(),
            "reloads": self.reloads.load(Ordering::Relaxed),
            "applied_config": applied,
            "last_reload": last_reload,
        });
        let text = serde_json::to_vec_pretty(&state).expect("the state always serializes");
        write_atomically(&self.state_path, &text)
    }

    /// Removes both files when the node stops.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.pid_path);
        let _ = std::fs::remove_file(&self.state_path);
    }
}

/// Writes `path` whole or not at all: a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, bytes)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn read_state(pid_file: &Path) -> anyhow::Result<serde_json::Value> {
    let path = state_path(pid_file);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is a node running with --pid-file {}?",
            path.display(),
            pid_file.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a state file", path.display()))
}

/// `peroxo check-config --diff`: what reloading `config` would change in the running node.
pub(crate) fn print_diff(config: &Config, pid_file: &Path) -> ExitCode {
    let running = match read_state(pid_file).and_then(|state| {
        serde_json::from_value::<Snapshot>(state["applied_config"].clone())
            .context("the state file holds no applied configuration")
    }) {
        Ok(running) => running,
        Err(error) => {
            eprintln!("peroxo: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let changes = running.diff(&Snapshot::of(config));
    if changes.is_empty() {
        println!("no changes: the file is what the node runs with");
    }
    for change in &changes {
        println!("{change}");
    }
    ExitCode::SUCCESS
}

/// `peroxo reload`: sends SIGHUP to the node of `pid_file` and prints its answer.
pub(crate) fn signal_and_report(pid_file: &Path, timeout: Duration) -> ExitCode {
    match signal_and_wait(pid_file, timeout) {
        Ok(last) => report(&last),
        Err(error) => {
            eprintln!("peroxo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn signal_and_wait(pid_file: &Path, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read the pid file {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds no process id", pid_file.display()))?;
    let before = read_state(pid_file)?["reloads"].as_u64().unwrap_or(0);
    let pid = rustix::process::Pid::from_raw(pid)
        .with_context(|| format!("{} holds no process id", pid_file.display()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .with_context(|| format!("cannot signal process {}", pid.as_raw_nonzero()))?;
    let deadline = Instant::now() + timeout;
    loop {
        // The node rewrites the file whole; a read failing midway is retried.
        if let Ok(state) = read_state(pid_file)
            && state["reloads"].as_u64().unwrap_or(0) > before
        {
            return Ok(state["last_reload"].clone());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the node did not answer within {timeout:?}; see its log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn report(last: &serde_json::Value) -> ExitCode {
    let keys = |name: &str| last[name].as_array().cloned().unwrap_or_default();
    let line = |change: &serde_json::Value| {
        let shown = |v: &serde_json::Value| v.as_str().unwrap_or("(unset)").to_owned();
        format!(
            "  {}: {} -> {}",
            change["key"].as_str().unwrap_or_default(),
            shown(&change["before"]),
            shown(&change["after"])
        )
    };
    match last["outcome"].as_str() {
        Some("rejected") => {
            eprintln!(
                "peroxo: reload rejected, nothing changed: {}: {}",
                last["error"]["key"].as_str().unwrap_or_default(),
                last["error"]["message"].as_str().unwrap_or_default()
            );
            return ExitCode::FAILURE;
        }
        Some("unchanged") => println!("reloaded: nothing that applies live has changed"),
        _ => {
            println!("reloaded: applied");
            for change in keys("applied") {
                println!("{}", line(&change));
            }
        }
    }
    let restart = keys("restart_needed");
    if !restart.is_empty() {
        println!("restart needed (the running values stay until then):");
        for change in restart {
            println!("{}", line(&change));
        }
    }
    ExitCode::SUCCESS
}

//! Fencing: making sure a node the server gave up on can no longer write the shared
//! devices, before the server acts on that node's state (digest §6.6, §6.7).
//!
//! A [`Fencer`] blocks until the node is fenced or fencing failed; the server only reclaims
//! the node's log tree, allocators and locks after `Ok`. An error means the node may still
//! be running: the server must not go on (a starting server stops, so another member can
//! try).
//!
//! * [`CommandFencer`] runs an operator's command (power off, SAN zoning, `umount -f` …),
//!   like `scoutfs-fenced` runs its script: exit status 0 means fenced.
//! * [`PidFileFencer`] is for clusters whose nodes all run on one host (tests, local
//!   development): each node writes its pid to `<dir>/<rid>.pid` ([`write_pid_file`]) and
//!   fencing kills that process with SIGKILL.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why a node is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceReason {
    /// Listed in `mounted_clients` but did not recover with a new server.
    ClientRecovery,
    /// A connected client went away without farewell and did not reconnect in time.
    ClientReconnect,
    /// A previous leader whose quorum block shows it may still run its server.
    QuorumBlockLeader,
}

impl FenceReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceReason::ClientRecovery => "client_recovery",
            FenceReason::ClientReconnect => "client_reconnect",
            FenceReason::QuorumBlockLeader => "quorum_block_leader",
        }
    }
}

impl fmt::Display for FenceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node to fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRequest {
    /// The node's mount id.
    pub rid: u64,
    /// Its last known address, if any.
    pub addr: Option<IpAddr>,
    pub reason: FenceReason,
}

/// Why fencing failed: the node may still be running.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("fence command {command:?} for rid {rid:016x} could not be started: {source}")]
    Spawn {
        command: String,
        rid: u64,
        #[source]
        source: io::Error,
    },

    #[error(
        "fence command {command:?} for rid {rid:016x} failed ({status}){}",
        stderr_suffix(stderr)
    )]
    CommandFailed {
        command: String,
        rid: u64,
        status: ExitStatus,
        stderr: String,
    },

    #[error(
        "fence command {command:?} for rid {rid:016x} did not finish within {timeout:?}; killed"
    )]
    TimedOut {
        command: String,
        rid: u64,
        timeout: Duration,
    },

    #[error("fence pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("fence pid file {path} does not hold a process id: {content:?}")]
    BadPidFile { path: PathBuf, content: String },

    #[error("fence pid file {path} names this process ({pid}); refusing to kill ourselves")]
    OwnProcess { path: PathBuf, pid: u32 },

    #[error("cannot kill process {pid} of rid {rid:016x}: {why}")]
    Kill { pid: u32, rid: u64, why: String },

    #[error("process {pid} of rid {rid:016x} still runs {waited:?} after SIGKILL")]
    StillRunning {
        pid: u32,
        rid: u64,
        waited: Duration,
    },
}

fn stderr_suffix(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// Fences nodes. `fence` blocks until the node is fenced (`Ok`) or cannot be (`Err`).
pub trait Fencer: Send + Sync {
    fn fence(&self, req: &FenceRequest) -> Result<(), FenceError>;
}

/// Runs `sh -c command` with the request in the environment:
/// `SCOUTGW_FENCE_RID` (16 hex digits), `SCOUTGW_FENCE_ADDR` (the IP address, or empty),
/// `SCOUTGW_FENCE_REASON` ([`FenceReason::as_str`]). Exit status 0 means fenced; any other
/// status, or still running after `timeout` (the command's process group is then killed),
/// is an error.
#[derive(Debug, Clone)]
pub struct CommandFencer {
    pub command: String,
    pub timeout: Duration,
}

/// Keep at most this much of a fence command's stderr for the error.
const STDERR_KEEP: usize = 4096;

impl Fencer for CommandFencer {
    fn fence(&self, req: &FenceRequest) -> Result<(), FenceError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("SCOUTGW_FENCE_RID", format!("{:016x}", req.rid))
            .env(
                "SCOUTGW_FENCE_ADDR",
                req.addr.map(|a| a.to_string()).unwrap_or_default(),
            )
            .env("SCOUTGW_FENCE_REASON", req.reason.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills everything it started.
            .process_group(0)
            .spawn()
            .map_err(|source| FenceError::Spawn {
                command: self.command.clone(),
                rid: req.rid,
                source,
            })?;
        // Drain stderr in the background so a chatty command cannot block on a full pipe.
        // A process the command left in the background may hold stderr open: the wait for
        // the text is bounded.
        let (tx, stderr) = std::sync::mpsc::channel();
        if let Some(mut e) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut all = Vec::new();
                let _ = e.read_to_end(&mut all);
                let start = all.len().saturating_sub(STDERR_KEEP);
                let _ = tx.send(String::from_utf8_lossy(&all[start..]).into_owned());
            });
        }
        let give_up = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= give_up => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(source) => {
                    return Err(FenceError::Spawn {
                        command: self.command.clone(),
                        rid: req.rid,
                        source,
                    })
                }
            }
        };
        let Some(status) = status else {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
            return Err(FenceError::TimedOut {
                command: self.command.clone(),
                rid: req.rid,
                timeout: self.timeout,
            });
        };
        if status.success() {
            return Ok(());
        }
        Err(FenceError::CommandFailed {
            command: self.command.clone(),
            rid: req.rid,
            status,
            stderr: stderr
                .recv_timeout(Duration::from_secs(1))
                .unwrap_or_default(),
        })
    }
}

/// The pid file of mount `rid` in `dir`: `<dir>/<rid as 16 hex digits>.pid`.
pub fn pid_file_path(dir: &Path, rid: u64) -> PathBuf {
    dir.join(format!("{rid:016x}.pid"))
}

/// A node's pid file; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Record this process as mount `rid` in `dir` (created if missing), for [`PidFileFencer`].
/// The file is written whole and renamed into place, so a fencer never reads half of it.
pub fn write_pid_file(dir: &Path, rid: u64) -> io::Result<PidFile> {
    fs::create_dir_all(dir)?;
    let path = pid_file_path(dir, rid);
    let tmp = dir.join(format!(".{rid:016x}.pid.{}", std::process::id()));
    fs::write(&tmp, format!("{}\n", std::process::id()))?;
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(PidFile { path })
}

/// Whether process `pid` still runs: `/proc/<pid>` exists and is not a zombie.
fn process_runs(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any
        // character: take the last ')'.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Fences nodes that run on this host by killing the process named in their pid file
/// (see [`write_pid_file`]). A missing pid file, or a pid that no longer runs, counts as
/// fenced. The pid file is removed once the process is gone.
///
/// Limits: a pid reused by an unrelated process after the node died without removing its
/// file would be killed; use it only where nodes are the only long-lived processes writing
/// pid files (tests, local clusters).
#[derive(Debug, Clone)]
pub struct PidFileFencer {
    pub dir: PathBuf,
    /// How long to wait for the process to disappear after SIGKILL.
    pub wait: Duration,
}

impl PidFileFencer {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            wait: Duration::from_secs(10),
        }
    }
}

impl Fencer for PidFileFencer {
    fn fence(&self, req: &FenceRequest) -> Result<(), FenceError> {
        let path = pid_file_path(&self.dir, req.rid);
        let content = match fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(FenceError::PidFile { path, source }),
        };
        let pid: u32 = match content.trim().parse() {
            Ok(p) if p > 1 => p,
            _ => return Err(FenceError::BadPidFile { path, content }),
        };
        if pid == std::process::id() {
            return Err(FenceError::OwnProcess { path, pid });
        }
        if process_runs(pid) {
            let out = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| FenceError::Kill {
                    pid,
                    rid: req.rid,
                    why: format!("cannot run kill: {e}"),
                })?;
            // `kill` fails for a process that exited meanwhile: that is fenced too.
            if !out.status.success() && process_runs(pid) {
                return Err(FenceError::Kill {
                    pid,
                    rid: req.rid,
                    why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            let start = Instant::now();
            while process_runs(pid) {
                if start.elapsed() >= self.wait {
                    return Err(FenceError::StillRunning {
                        pid,
                        rid: req.rid,
                        waited: self.wait,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FenceError::PidFile { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(rid: u64) -> FenceRequest {
        FenceRequest {
            rid,
            addr: Some("10.1.2.3".parse().unwrap()),
            reason: FenceReason::QuorumBlockLeader,
        }
    }

    #[test]
    fn fence_reasons_have_scoutfs_names() {
        assert_eq!(FenceReason::ClientRecovery.as_str(), "client_recovery");
        assert_eq!(FenceReason::ClientReconnect.as_str(), "client_reconnect");
        assert_eq!(
            FenceReason::QuorumBlockLeader.to_string(),
            "quorum_block_leader"
        );
    }

    #[test]
    fn command_fencer_succeeds_on_exit_zero_and_sees_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let f = CommandFencer {
            command: format!(
                "echo \"$SCOUTGW_FENCE_RID $SCOUTGW_FENCE_ADDR $SCOUTGW_FENCE_REASON\" > {}",
                out.display()
            ),
            timeout: Duration::from_secs(10),
        };
        f.fence(&req(0xab)).unwrap();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "00000000000000ab 10.1.2.3 quorum_block_leader\n"
        );
        let no_addr = FenceRequest {
            addr: None,
            reason: FenceReason::ClientReconnect,
            ..req(1)
        };
        f.fence(&no_addr).unwrap();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "0000000000000001  client_reconnect\n"
        );
    }

    #[test]
    fn command_fencer_fails_on_nonzero_exit_with_its_stderr() {
        let f = CommandFencer {
            command: "echo cannot reach the pdu >&2; exit 3".into(),
            timeout: Duration::from_secs(10),
        };
        let e = f.fence(&req(7)).unwrap_err();
        match &e {
            FenceError::CommandFailed { status, stderr, .. } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr.trim(), "cannot reach the pdu");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("cannot reach the pdu"), "{e}");
    }

    #[test]
    fn command_fencer_kills_a_command_that_outlives_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let f = CommandFencer {
            // A compound command: the sleep is a child of the shell, killed with its group.
            command: format!("sleep 30; touch {}", marker.display()),
            timeout: Duration::from_millis(300),
        };
        let start = Instant::now();
        let e = f.fence(&req(7)).unwrap_err();
        assert!(matches!(e, FenceError::TimedOut { .. }), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(!marker.exists());
    }

    #[test]
    fn pid_file_fencer_kills_the_process_named_in_the_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let path = pid_file_path(dir.path(), 0x42);
        fs::write(&path, format!("{}\n", child.id())).unwrap();
        assert!(process_runs(child.id()));
        PidFileFencer::new(dir.path()).fence(&req(0x42)).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(!path.exists(), "the pid file is removed once fenced");
    }

    #[test]
    fn pid_file_fencer_treats_a_missing_pid_file_or_dead_pid_as_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let f = PidFileFencer::new(dir.path());
        f.fence(&req(1)).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let path = pid_file_path(dir.path(), 2);
        fs::write(&path, format!("{pid}\n")).unwrap();
        f.fence(&req(2)).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn pid_file_fencer_refuses_garbage_and_our_own_pid() {
        let dir = tempfile::tempdir().unwrap();
        let f = PidFileFencer::new(dir.path());
        fs::write(pid_file_path(dir.path(), 3), "not a pid").unwrap();
        assert!(matches!(
            f.fence(&req(3)),
            Err(FenceError::BadPidFile { .. })
        ));
        let own = write_pid_file(dir.path(), 4).unwrap();
        assert!(matches!(
            f.fence(&req(4)),
            Err(FenceError::OwnProcess { .. })
        ));
        assert!(own.path().exists());
    }

    #[test]
    fn pid_file_guard_writes_our_pid_and_removes_the_file_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("pids");
        let g = write_pid_file(&sub, 0xfeed).unwrap();
        assert_eq!(g.path(), pid_file_path(&sub, 0xfeed));
        assert_eq!(g.path().file_name().unwrap(), "000000000000feed.pid");
        assert_eq!(
            fs::read_to_string(g.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        let p = g.path().to_path_buf();
        drop(g);
        assert!(!p.exists());
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 0, "no temporary left");
    }
}

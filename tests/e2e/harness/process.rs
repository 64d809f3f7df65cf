//! Child processes the suite owns: started with their output in a log file and their PID written
//! down, stopped by PID (SIGTERM, then SIGKILL), also when a test panics (Drop) and, for a run
//! that was killed outright, by the next run ([`reap_stale`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Sends a signal by PID with `kill(1)` (no unsafe code in the tests).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// A long-running child process.
pub struct Daemon {
    /// Short name (`etcd`, `apiserver`, `confgate`).
    pub name: String,
    child: Child,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Daemon {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `command` with stdout and stderr appended to `dir/<name>.log`, and records its PID
    /// (with the binary's path, so [`reap_stale`] never kills an unrelated process).
    pub fn spawn(
        name: &str,
        command: &mut Command,
        dir: &Path,
        pid_dir: &Path,
    ) -> Result<Self, String> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name} ({:?}): {e}", command.get_program()))?;
        let pid_file = pid_dir.join(format!("{}.pid", child.id()));
        let _ = std::fs::write(
            &pid_file,
            format!(
                "{}\n{}\n",
                child.id(),
                command.get_program().to_string_lossy()
            ),
        );
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            pid_file,
        })
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let all: Vec<String> = std::fs::File::open(&self.log)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
    pub fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        self.stop_in_place(grace)
    }

    fn stop_in_place(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            let _ = std::fs::remove_file(&self.pid_file);
            return Some(status);
        }
        signal(self.child.id(), "TERM");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.exited() {
                break Some(status);
            }
            if start.elapsed() > grace {
                let _ = self.child.kill();
                break self.child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = std::fs::remove_file(&self.pid_file);
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_in_place(Duration::from_secs(5));
    }
}

/// Stops processes an earlier, killed run left behind: each pid file names a PID and the binary
/// it ran; the process is killed only if that PID still runs that binary.
pub fn reap_stale(pid_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(pid_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = text.lines();
        let (Some(pid), Some(program)) = (lines.next(), lines.next()) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if let (false, true, Ok(pid)) = (
            first.is_empty(),
            String::from_utf8_lossy(first) == program,
            pid.parse::<u32>(),
        ) {
            eprintln!("e2e: stopping {program} (pid {pid}) left by an earlier run");
            signal(pid, "KILL");
        }
        let _ = std::fs::remove_file(&path);
    }
}

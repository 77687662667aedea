//! Process targets: reading /proc, matching `pid:`, `pidfile:` and `name:`
//! selectors, and the refusals (pid 1, ourselves, our ancestors, kernel
//! threads) that keep a typo from taking down the host or the runner.

use std::path::Path;

use super::TargetError;

/// A process as seen in /proc at resolution time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Short name from /proc/PID/stat (`comm`).
    pub comm: String,
    /// Command line joined by spaces.
    pub cmdline: String,
    /// Scheduler state letter (`R`, `S`, `T`, `Z`, ...).
    pub state: char,
    pub ppid: u32,
    /// Start time in clock ticks since boot: (pid, starttime) names a
    /// process uniquely even when pids are reused.
    pub starttime: u64,
    /// True for kernel threads (PF_KTHREAD).
    pub kernel_thread: bool,
}

const PF_KTHREAD: u64 = 0x0020_0000;

/// Reads /proc/PID; `None` when the process is gone.
pub fn read(pid: u32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // Fields after the comm start at field 3 (state).
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let flags: u64 = rest.get(6)?.parse().ok()?;
    let starttime = rest.get(19)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(ProcessInfo {
        pid,
        comm,
        cmdline,
        state,
        ppid,
        starttime,
        kernel_thread: flags & PF_KTHREAD != 0 || pid == 2 || ppid == 2,
    })
}

/// Every live process in /proc.
pub fn all() -> Vec<ProcessInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out: Vec<ProcessInfo> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter_map(read)
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Our own pid and every ancestor up to pid 1.
pub fn self_and_ancestors() -> Vec<u32> {
    let mut out = vec![std::process::id()];
    let mut pid = std::process::id();
    while let Some(info) = read(pid) {
        if info.ppid == 0 || out.contains(&info.ppid) {
            break;
        }
        out.push(info.ppid);
        pid = info.ppid;
    }
    out
}

/// Why a process must never be a target, or `None` when it may be.
pub fn refusal(info: &ProcessInfo, protected: &[u32]) -> Option<&'static str> {
    if info.pid == 1 {
        Some("it is pid 1 (init); killing or stopping it takes the host down")
    } else if info.pid == std::process::id() {
        Some("it is this chaos process itself")
    } else if protected.contains(&info.pid) {
        Some("it is an ancestor of this chaos process (its shell or supervisor)")
    } else if info.kernel_thread {
        Some("it is a kernel thread")
    } else if info.state == 'Z' || info.state == 'X' {
        Some("it is already dead (zombie)")
    } else {
        None
    }
}

/// Why `pid` must never be a target, checked without resolving a
/// selector: pid 1 and pid 2 (kthreadd) always, and for a live process
/// the rules of [`refusal`] (ourselves, our ancestors, kernel threads).
/// A pid that does not exist (yet) is not refused here.
pub fn refusal_of_pid(pid: u32) -> Option<&'static str> {
    match pid {
        1 => Some("it is pid 1 (init); killing or stopping it takes the host down"),
        2 => Some("it is pid 2 (kthreadd), the parent of every kernel thread"),
        _ => read(pid).and_then(|info| {
            refusal(&info, &self_and_ancestors()).filter(|r| !r.contains("zombie"))
        }),
    }
}

/// Resolves a pid explicitly named by `pid:` or `pidfile:`: refusals are
/// errors, since the user asked for exactly this process.
pub fn by_pid(pid: u32, selector: &str) -> Result<ProcessInfo, TargetError> {
    let info = read(pid).ok_or_else(|| TargetError::NoSuchProcess {
        selector: selector.to_string(),
        pid,
    })?;
    if let Some(reason) = refusal(&info, &self_and_ancestors()) {
        return Err(TargetError::Refused { pid, comm: info.comm, reason });
    }
    Ok(info)
}

/// A pidfile holds one pid (at most 10 digits) and a newline; more than
/// this is not a pidfile.
const PIDFILE_MAX_BYTES: u64 = 32;

/// Reads a pidfile (first whitespace-separated token). At most
/// [`PIDFILE_MAX_BYTES`] are read, only from a regular file (a FIFO or
/// /dev/zero is refused at once), and the contents are never echoed: the
/// path may name a file holding a secret.
pub fn pid_from_file(path: &Path) -> Result<u32, TargetError> {
    let fail = |reason: String| TargetError::Pidfile { path: path.to_path_buf(), reason };
    let bytes = crate::input_file::read_limited(path, PIDFILE_MAX_BYTES)
        .map_err(|e| fail(e.to_string()))?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.split_whitespace().next())
        .filter(|t| t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            fail(format!(
                "does not start with a positive pid ({} bytes; contents not shown)",
                bytes.len()
            ))
        })
}

/// Processes whose name or command line matches `pattern`, leaving out the
/// ones we must never touch (a pattern naturally matches the runner's own
/// command line, which contains the pattern).
pub fn by_name(pattern: &str) -> Result<Vec<ProcessInfo>, TargetError> {
    let re = regex::Regex::new(pattern).map_err(|e| TargetError::Invalid {
        selector: format!("name:{pattern}"),
        reason: e.to_string(),
    })?;
    let protected = self_and_ancestors();
    let own_exe = std::fs::read_link("/proc/self/exe").ok();
    Ok(all()
        .into_iter()
        .filter(|p| re.is_match(&p.comm) || re.is_match(&p.cmdline))
        .filter(|p| refusal(p, &protected).is_none())
        // Another chaos runner's command line contains its own `name:`
        // pattern; killing it would strand the faults it holds. Demo
        // services run the same binary but are services, not runners:
        // they are exactly what demo experiments target.
        .filter(|p| {
            own_exe.is_none()
                || is_demo_service(&p.cmdline)
                || std::fs::read_link(format!("/proc/{}/exe", p.pid)).ok() != own_exe
        })
        .collect())
}

/// True for the internal `chaos demo-service ...` processes of the demo fleet.
fn is_demo_service(cmdline: &str) -> bool {
    cmdline.split_whitespace().nth(1) == Some("demo-service")
}

/// Inode of a network namespace (`/proc/PID/ns/net` or `/run/netns/NAME`).
pub fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Processes living in the named network namespace.
pub fn in_netns(netns: &str) -> Vec<ProcessInfo> {
    let Some(want) = netns_inode(&Path::new("/run/netns").join(netns)) else {
        return Vec::new();
    };
    let protected = self_and_ancestors();
    all()
        .into_iter()
        .filter(|p| {
            netns_inode(Path::new(&format!("/proc/{}/ns/net", p.pid))) == Some(want)
        })
        .filter(|p| refusal(p, &protected).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process_from_proc() {
        let me = read(std::process::id()).expect("self in /proc");
        assert_eq!(me.pid, std::process::id());
        assert!(!me.kernel_thread);
        assert!(me.starttime > 0);
    }

    #[test]
    fn refuses_pid_one_self_and_ancestors() {
        let init = read(1).expect("pid 1 exists");
        assert!(refusal(&init, &[]).unwrap().contains("pid 1"));
        let me = read(std::process::id()).unwrap();
        assert!(refusal(&me, &[]).unwrap().contains("itself"));
        let ancestors = self_and_ancestors();
        if let Some(parent) = ancestors.get(1).and_then(|p| read(*p)) {
            if parent.pid != 1 {
                assert!(refusal(&parent, &ancestors).unwrap().contains("ancestor"));
            }
        }
    }

    #[test]
    fn a_name_pattern_never_matches_the_runner_itself() {
        let found = by_name(".*").unwrap();
        assert!(found.iter().all(|p| p.pid != std::process::id() && p.pid != 1));
    }

    /// Issue 12 case 9: /dev/zero, a FIFO and a file holding a secret as
    /// `pidfile:` — refused promptly, and the secret is not in the error.
    #[test]
    fn r12_9_pidfile_reads_a_few_bytes_of_a_regular_file_and_never_echoes_them() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "hunter2-SECRET\n").unwrap();
        let err = pid_from_file(&secret).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("contents not shown"), "{err}");
        let big = dir.path().join("big");
        std::fs::write(&big, format!("42{}", " ".repeat(100))).unwrap();
        assert!(pid_from_file(&big).unwrap_err().to_string().contains("limit"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ =
                tx.send([fifo, "/dev/zero".into()].map(|p| pid_from_file(&p).is_err()));
        });
        let refused = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("pidfile reads return within 5 s");
        assert_eq!(refused, [true, true]);
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "1234\n").unwrap();
        assert_eq!(pid_from_file(&ok).unwrap(), 1234);
    }
}

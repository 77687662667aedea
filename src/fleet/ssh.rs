//! The system OpenSSH client as the agent's transport. The local side is
//! argv only (no local shell); the remote command line is necessarily a
//! string for the remote shell, so every part of it is checked against a
//! strict character set (and quoted where it may contain anything else).
//! Host keys are always checked (`StrictHostKeyChecking=yes`), against
//! the inventory's known_hosts when it names one. `~/.ssh/config` (users,
//! ProxyJump, agents) applies as usual; `-F` only when configured.
//!
//! An ssh child dies with the thread that spawned it (PR_SET_PDEATHSIG),
//! so a controller killed with SIGKILL drops its connections and every
//! agent sees end of input. Spawn from a thread that lives as long as
//! the connection (the kernel ties the signal to the spawning *thread*).

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::inventory::{Host, SshSettings};
use super::FleetError;

/// A path on a remote host: absolute or a bare command name, with only
/// characters that need no quoting in any shell.
pub fn check_remote_path(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && !p.starts_with('-')
        && p.len() <= 4096
        && p.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
        && !p.split('/').any(|part| part == "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "remote path {p:?} is invalid (letters, digits, / . _ - +; no '..', not starting with -)"
        ))
    }
}

/// One word for the remote shell: left bare when it is plainly safe,
/// else single-quoted. Control characters are refused outright.
pub fn shell_word(s: &str) -> Result<String, String> {
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains control characters"));
    }
    if !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        Ok(s.to_string())
    } else {
        Ok(format!("'{}'", s.replace('\'', "'\\''")))
    }
}

/// `ssh` argv (without the program) for running `remote` on `host`.
pub fn ssh_args(
    host: &Host,
    ssh: &SshSettings,
    remote: &[String],
) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = Vec::new();
    let mut opt = |o: String| {
        args.push("-o".into());
        args.push(o);
    };
    opt("BatchMode=yes".into());
    opt("StrictHostKeyChecking=yes".into());
    opt(format!("ConnectTimeout={}", ssh.connect_timeout.as_secs().max(1)));
    // The agent's lease is the real guard; these only make the client
    // notice a dead network in seconds instead of hours.
    opt("ServerAliveInterval=2".into());
    opt("ServerAliveCountMax=3".into());
    if let Some(kh) = &ssh.known_hosts {
        opt(format!("UserKnownHostsFile={}", kh.display()));
        opt("GlobalKnownHostsFile=/dev/null".into());
    }
    if let Some(id) = &host.identity {
        opt(format!("IdentityFile={}", id.display()));
        opt("IdentitiesOnly=yes".into());
    }
    if let Some(cfg) = &ssh.config {
        args.push("-F".into());
        args.push(cfg.display().to_string());
    }
    if let Some(port) = host.port {
        args.push("-p".into());
        args.push(port.to_string());
    }
    if let Some(user) = &host.user {
        args.push("-l".into());
        args.push(user.clone());
    }
    args.push("--".into());
    args.push(host.address.clone());
    let words = remote.iter().map(|w| shell_word(w)).collect::<Result<Vec<_>, _>>()?;
    args.push(words.join(" "));
    Ok(args)
}

/// Last lines of a child's stderr (also echoed to ours, prefixed with
/// the host), for naming the cause when a connection fails.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<Vec<String>>>);

impl StderrTail {
    pub fn text(&self) -> String {
        self.0.lock().map(|v| v.join("\n")).unwrap_or_default()
    }

    fn follow(&self, host: String, stderr: impl Read + Send + 'static, echo: bool) {
        let tail = self.0.clone();
        let _ = std::thread::Builder::new().name("ssh-stderr".into()).spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{host}] {line}");
                }
                if let Ok(mut t) = tail.lock() {
                    t.push(line);
                    let n = t.len();
                    if n > 30 {
                        t.drain(..n - 30);
                    }
                }
            }
        });
    }
}

/// Spawns `ssh HOST REMOTE...` with piped stdio; it gets SIGKILL when the
/// spawning thread dies.
pub fn spawn(
    host: &Host,
    ssh: &SshSettings,
    remote: &[String],
    echo_stderr: bool,
) -> Result<(Child, StderrTail), FleetError> {
    let args = ssh_args(host, ssh, remote)
        .map_err(|cause| FleetError::Host { host: host.name.clone(), cause })?;
    let mut cmd = Command::new("ssh");
    cmd.args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| FleetError::Host {
        host: host.name.clone(),
        cause: format!("cannot run ssh: {e} (install openssh-client)"),
    })?;
    let tail = StderrTail::default();
    if let Some(err) = child.stderr.take() {
        tail.follow(host.name.clone(), err, echo_stderr);
    }
    Ok((child, tail))
}

/// The cause of a failed connection, in words, from ssh's stderr and
/// exit status.
pub fn diagnose(stderr: &str, code: Option<i32>) -> String {
    let has = |s: &str| stderr.contains(s);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("Host key verification failed")
    {
        format!("wrong or unknown host key (StrictHostKeyChecking): {last}")
    } else if has("Connection timed out")
        || has("No route to host")
        || has("Connection refused")
        || has("Could not resolve")
        || has("Network is unreachable")
    {
        format!("unreachable: {last}")
    } else if has("Permission denied") {
        format!("ssh authentication failed: {last}")
    } else if code == Some(127) || has("not found") {
        format!("no chaos binary on the host (use --install): {last}")
    } else if last.is_empty() {
        format!("connection closed (ssh exit {code:?})")
    } else {
        format!("connection failed: {last}")
    }
}

/// Runs `remote` on the host to completion; (exit code, stdout). ssh
/// failures (exit 255) come back as errors naming the cause.
pub fn run(
    host: &Host,
    ssh: &SshSettings,
    remote: &[String],
) -> Result<(Option<i32>, String), FleetError> {
    run_remote(host, ssh, remote, None)
}

/// Runs `remote` on the host to completion, feeding `stdin`; returns
/// (exit code, stdout).
fn run_remote(
    host: &Host,
    ssh: &SshSettings,
    remote: &[String],
    stdin: Option<&[u8]>,
) -> Result<(Option<i32>, String), FleetError> {
    let (mut child, tail) = spawn(host, ssh, remote, false)?;
    let fail = |cause: String| FleetError::Host { host: host.name.clone(), cause };
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(bytes) = stdin {
            pipe.write_all(bytes).map_err(|e| fail(format!("sending to ssh: {e}")))?;
        }
    }
    let out =
        child.wait_with_output().map_err(|e| fail(format!("waiting for ssh: {e}")))?;
    let code = out.status.code();
    if code == Some(255) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        return Err(fail(diagnose(&tail.text(), code)));
    }
    Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(path)?;
    let hex = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes, hex))
}

/// Makes sure the host runs this `chaos` version: when `host.chaos` is
/// missing or reports another version, copies the running binary to
/// `ssh.install_path` (sha256 compared on both ends before it is moved
/// into place) and returns the command to use from now on.
pub fn ensure_installed(host: &Host, ssh: &SshSettings) -> Result<String, FleetError> {
    let ours = format!("chaos {}", env!("CARGO_PKG_VERSION"));
    let fail = |cause: String| FleetError::Host { host: host.name.clone(), cause };
    for candidate in [host.chaos.as_str(), ssh.install_path.as_str()] {
        let (code, out) =
            run_remote(host, ssh, &[candidate.into(), "--version".into()], None)?;
        if code == Some(0) && out.trim() == ours {
            return Ok(candidate.to_string());
        }
    }
    check_remote_path(&ssh.install_path).map_err(fail)?;
    if !ssh.install_path.starts_with('/') {
        return Err(fail(format!(
            "install_path {:?} must be absolute",
            ssh.install_path
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|e| fail(format!("cannot find this binary: {e}")))?;
    let (bytes, local) =
        sha256_file(&exe).map_err(|e| fail(format!("reading {}: {e}", exe.display())))?;
    let path = &ssh.install_path;
    let tmp = format!("{path}.chaos-upload");
    let dir = path
        .rsplit_once('/')
        .map(|(d, _)| if d.is_empty() { "/" } else { d })
        .unwrap_or("/");
    // Every interpolated part passed check_remote_path: no quoting needed.
    let script = format!("umask 022 && mkdir -p {dir} && cat > {tmp} && sha256sum {tmp}");
    let (code, out) =
        run_remote(host, ssh, &["sh".into(), "-c".into(), script], Some(&bytes))?;
    let remote = out.split_whitespace().next().unwrap_or("");
    if code != Some(0) || remote != local {
        let _ = run_remote(host, ssh, &["rm".into(), "-f".into(), tmp.clone()], None);
        return Err(fail(format!(
            "installing chaos at {path} failed: sha256 {remote:?} on the host, {local} here"
        )));
    }
    let script = format!("chmod 755 {tmp} && mv -f {tmp} {path}");
    let (code, _) = run_remote(host, ssh, &["sh".into(), "-c".into(), script], None)?;
    if code != Some(0) {
        return Err(fail(format!("moving the upload into {path} failed")));
    }
    tracing::info!(host = %host.name, %path, sha256 = %local, "installed chaos");
    Ok(path.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn host() -> Host {
        Host {
            name: "web-1".into(),
            address: "10.0.0.11".into(),
            user: Some("root".into()),
            port: Some(2222),
            identity: Some("/keys/id".into()),
            chaos: "chaos".into(),
            labels: Default::default(),
            groups: Default::default(),
        }
    }

    #[test]
    fn the_argv_checks_host_keys_and_keeps_the_remote_command_one_quoted_string() {
        let ssh = SshSettings {
            known_hosts: Some("/tmp/kh".into()),
            connect_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        let args =
            ssh_args(&host(), &ssh, &["chaos".into(), "agent".into(), "it's".into()])
                .unwrap();
        let joined = args.join(" ");
        assert!(joined.contains("-o StrictHostKeyChecking=yes"), "{joined}");
        assert!(joined.contains("-o BatchMode=yes"));
        assert!(joined.contains("-o UserKnownHostsFile=/tmp/kh"));
        assert!(joined.contains("-o ConnectTimeout=3"));
        assert!(!joined.contains("-F"), "no -F unless configured");
        assert_eq!(
            &args[args.len() - 3..],
            ["--", "10.0.0.11", "chaos agent 'it'\\''s'"]
        );
        assert!(shell_word("a\nb").is_err());
        assert_eq!(shell_word("$(reboot)").unwrap(), "'$(reboot)'");
    }

    #[test]
    fn remote_paths_are_plain() {
        assert!(check_remote_path("/usr/local/bin/chaos").is_ok());
        assert!(check_remote_path("chaos").is_ok());
        for bad in ["/tmp/a b", "/x/../y", "-x", "/a;rm", "$(x)", ""] {
            assert!(check_remote_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_failures_are_named_by_cause() {
        assert!(diagnose("Host key verification failed.", Some(255)).contains("host key"));
        assert!(diagnose(
            "ssh: connect to host 10.0.0.9 port 22: No route to host",
            Some(255)
        )
        .starts_with("unreachable"));
        assert!(diagnose("sh: 1: chaos: not found", Some(127)).contains("--install"));
    }
}

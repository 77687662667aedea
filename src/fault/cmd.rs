//! External commands (`nft`, `tc`, `ip`) the fault backends run, optionally
//! inside a named network namespace, with their exact argv kept for
//! `--dry-run` and for error messages.

use std::io::Write;
use std::process::{Command, Stdio};

use super::FaultError;

/// One command line, plus optional stdin (nft rulesets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub stdin: Option<String>,
}

impl Cmd {
    /// `program args...`, run inside `netns` via `ip netns exec` when given.
    pub fn new(netns: Option<&str>, program: &str, args: &[&str]) -> Cmd {
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        argv.push(program.to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        Cmd { argv, stdin: None }
    }

    /// Feeds `text` on stdin.
    pub fn with_stdin(mut self, text: String) -> Cmd {
        self.stdin = Some(text);
        self
    }

    /// Runs the command; a non-zero exit is an error carrying stderr.
    pub fn run(&self) -> Result<String, FaultError> {
        let out = self.output()?;
        if out.0 {
            Ok(out.1)
        } else {
            Err(FaultError::Command { command: self.to_string(), stderr: out.2 })
        }
    }

    /// Runs the command and returns (success, stdout, stderr).
    pub fn output(&self) -> Result<(bool, String, String), FaultError> {
        let (program, args) = self.argv.split_first().expect("a command has a program");
        let mut child = Command::new(program)
            .args(args)
            .stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| FaultError::Spawn { command: self.to_string(), source: e })?;
        if let (Some(text), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(|e| FaultError::Spawn {
                command: self.to_string(),
                source: e,
            })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| FaultError::Spawn { command: self.to_string(), source: e })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted: Vec<String> = self
            .argv
            .iter()
            .map(|a| {
                if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/%@=,".contains(c))
                {
                    a.clone()
                } else {
                    format!("'{}'", a.replace('\'', "'\\''"))
                }
            })
            .collect();
        write!(f, "{}", quoted.join(" "))?;
        if let Some(text) = &self.stdin {
            write!(f, " <<'EOF'\n{}EOF", text)?;
        }
        Ok(())
    }
}

/// True when `program` is an executable on `$PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|dir| {
                std::fs::metadata(dir.join(program))
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespaced_command_is_prefixed_with_ip_netns_exec() {
        let c = Cmd::new(Some("ns1"), "tc", &["qdisc", "show"]);
        assert_eq!(c.argv, ["ip", "netns", "exec", "ns1", "tc", "qdisc", "show"]);
        assert_eq!(c.to_string(), "ip netns exec ns1 tc qdisc show");
    }

    #[test]
    fn a_failing_command_reports_its_argv_and_stderr() {
        let err =
            Cmd::new(None, "sh", &["-c", "echo boom >&2; exit 3"]).run().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains("sh -c"), "{msg}");
    }
}

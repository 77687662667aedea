//! Spawns, health-checks, restarts and always stops the demo processes.
//!
//! Every service is a child of the current `chaos` binary running the hidden
//! `demo-service` subcommand, with argv[0] set to a stable name so fault
//! targets (`name:`, `pidfile:`) can select it. Children bind port 0 on the
//! first start and report the port through an address file (no port race);
//! a restart rebinds the same port so callers' URLs stay valid. Children
//! also exit on their own when their parent disappears (see
//! `commands/demo_fleet.rs`), so a SIGKILLed runner leaves nothing behind.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{process_name, DemoError, Region, Role, ServiceTime, Variant};
use crate::cohort::Cohort;
use crate::units::format_duration;

/// How long a child gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// API behaviour for both pools.
    pub variant: Variant,
    /// Where pidfiles, address files and logs go (created if missing).
    pub dir: PathBuf,
    /// Base URL the API of a pool uses for a payments region, instead of
    /// that replica's own address (e.g. a sidecar proxy in front of it).
    pub payments_urls_override: BTreeMap<(Cohort, Region), String>,
    /// Simulated payments service time.
    pub service_time: ServiceTime,
    /// Resilient API: timeout per payments attempt.
    pub attempt_timeout: Duration,
    /// Fragile API: the only bound on a payments call.
    pub safety_timeout: Duration,
    /// How long every process together gets to answer `/healthz`.
    pub startup_timeout: Duration,
    /// The `chaos` executable to run; `None` = the current executable.
    pub exe: Option<PathBuf>,
}

impl FleetSpec {
    /// Defaults: 8 ms / σ 0.35 service time, 120 ms attempts, 10 s safety
    /// bound, 10 s to start.
    pub fn new(variant: Variant, dir: impl Into<PathBuf>) -> Self {
        FleetSpec {
            variant,
            dir: dir.into(),
            payments_urls_override: BTreeMap::new(),
            service_time: ServiceTime::default(),
            attempt_timeout: Duration::from_millis(120),
            safety_timeout: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(10),
            exe: None,
        }
    }
}

/// One running demo process.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    /// API or payments.
    pub role: Role,
    /// Control or experiment cluster.
    pub pool: Cohort,
    /// Payments region; `None` for the API.
    pub region: Option<Region>,
    /// argv[0], e.g. `chaos-demo-payments-experiment-us-east`.
    pub name: String,
    /// Current pid (changes on restart).
    pub pid: u32,
    /// Listening address on loopback.
    pub addr: SocketAddr,
    /// Pidfile kept up to date with `pid`.
    pub pidfile: PathBuf,
    /// stdout + stderr of the process.
    pub log: PathBuf,
}

impl ProcessInfo {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

struct Member {
    info: ProcessInfo,
    /// Service arguments without `--listen` / `--addr-file`.
    args: Vec<OsString>,
    child: Option<Child>,
}

/// A running fleet. Dropping it (or [`Fleet::shutdown`]) stops every child.
pub struct Fleet {
    spec: FleetSpec,
    exe: PathBuf,
    members: Vec<Member>,
}

impl Fleet {
    /// Starts both pools (payments first, then the APIs pointing at them or
    /// at the override URLs) and waits until every `/healthz` answers.
    pub fn start(spec: FleetSpec) -> Result<Fleet, DemoError> {
        let exe = match &spec.exe {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|source| DemoError::Spawn {
                name: "demo fleet".into(),
                exe: PathBuf::from("/proc/self/exe"),
                source,
            })?,
        };
        fs::create_dir_all(&spec.dir)
            .map_err(|source| DemoError::Dir { path: spec.dir.clone(), source })?;
        for ((pool, region), url) in &spec.payments_urls_override {
            check_url(url).map_err(|reason| DemoError::BadUrl {
                url: format!("{url} (for {pool} {region})"),
                reason,
            })?;
        }
        // Built before spawning so an error part-way stops what started.
        let mut fleet = Fleet { spec, exe, members: Vec::new() };
        let deadline = Instant::now() + fleet.spec.startup_timeout;
        let n_payments = Cohort::ALL.len() * Region::ALL.len();
        for pool in Cohort::ALL {
            for region in Region::ALL {
                let st = fleet.spec.service_time;
                let args = os_args(&[
                    "payments",
                    "--pool",
                    pool.as_str(),
                    "--region",
                    region.as_str(),
                    "--median",
                    &format!("{}us", st.median.as_micros()),
                    "--sigma",
                    &st.sigma.to_string(),
                ]);
                fleet.spawn(Role::Payments, pool, Some(region), args, 0)?;
            }
        }
        fleet.wait_ready(0, deadline)?;
        for pool in Cohort::ALL {
            let mut args = os_args(&[
                "api",
                "--pool",
                pool.as_str(),
                "--variant",
                fleet.spec.variant.as_str(),
                "--attempt-timeout",
                &format!("{}us", fleet.spec.attempt_timeout.as_micros()),
                "--safety-timeout",
                &format!("{}us", fleet.spec.safety_timeout.as_micros()),
            ]);
            for region in Region::ALL {
                let url = match fleet.spec.payments_urls_override.get(&(pool, region)) {
                    Some(u) => u.clone(),
                    None => fleet
                        .find(Role::Payments, pool, Some(region))
                        .map(|m| m.info.url())
                        .ok_or_else(|| {
                            DemoError::NoSuchProcess(format!("{pool} payments"))
                        })?,
                };
                args.push("--payments".into());
                args.push(format!("{region}={url}").into());
            }
            fleet.spawn(Role::Api, pool, None, args, 0)?;
        }
        fleet.wait_ready(n_payments, deadline)?;
        Ok(fleet)
    }

    /// Every process, payments first.
    pub fn processes(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.members.iter().map(|m| &m.info)
    }

    /// The process with this role, pool and region (`None` for the API).
    pub fn process(
        &self,
        role: Role,
        pool: Cohort,
        region: Option<Region>,
    ) -> Option<&ProcessInfo> {
        self.find(role, pool, region).map(|m| &m.info)
    }

    /// Listening address of a process.
    pub fn addr(
        &self,
        role: Role,
        pool: Cohort,
        region: Option<Region>,
    ) -> Option<SocketAddr> {
        self.process(role, pool, region).map(|p| p.addr)
    }

    /// Current pid of a process.
    pub fn pid(&self, role: Role, pool: Cohort, region: Option<Region>) -> Option<u32> {
        self.process(role, pool, region).map(|p| p.pid)
    }

    /// Pidfile of a process (kept current across restarts).
    pub fn pidfile(
        &self,
        role: Role,
        pool: Cohort,
        region: Option<Region>,
    ) -> Option<&Path> {
        self.process(role, pool, region).map(|p| p.pidfile.as_path())
    }

    /// `http://ADDR` of a pool's API.
    pub fn api_url(&self, pool: Cohort) -> Option<String> {
        self.process(Role::Api, pool, None).map(ProcessInfo::url)
    }

    /// `http://ADDR` of a payments replica (its own address, not an override).
    pub fn payments_url(&self, pool: Cohort, region: Region) -> Option<String> {
        self.process(Role::Payments, pool, Some(region)).map(ProcessInfo::url)
    }

    /// The fleet directory.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// Variables for `${VAR}` interpolation in experiment files:
    /// `CHAOS_DEMO_API_EXPERIMENT=http://127.0.0.1:P`,
    /// `CHAOS_DEMO_PAYMENTS_EXPERIMENT_US_EAST=http://…`, one `…_PIDFILE`
    /// per process, `CHAOS_DEMO_DIR` and `CHAOS_DEMO_VARIANT`.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("CHAOS_DEMO_DIR".to_string(), self.spec.dir.display().to_string()),
            ("CHAOS_DEMO_VARIANT".to_string(), self.spec.variant.to_string()),
        ];
        for m in &self.members {
            let i = &m.info;
            let key = match i.region {
                Some(r) => format!("CHAOS_DEMO_{}_{}_{}", i.role, i.pool, r),
                None => format!("CHAOS_DEMO_{}_{}", i.role, i.pool),
            }
            .to_uppercase()
            .replace('-', "_");
            vars.push((key.clone(), i.url()));
            vars.push((format!("{key}_PIDFILE"), i.pidfile.display().to_string()));
        }
        vars
    }

    /// Stops (if still running) and starts again one process on the same
    /// port, e.g. a replica a fault killed; waits until it is healthy.
    pub fn restart(
        &mut self,
        role: Role,
        pool: Cohort,
        region: Option<Region>,
    ) -> Result<(), DemoError> {
        let idx = self
            .members
            .iter()
            .position(|m| {
                m.info.role == role && m.info.pool == pool && m.info.region == region
            })
            .ok_or_else(|| DemoError::NoSuchProcess(process_name(role, pool, region)))?;
        let mut old = self.members.remove(idx);
        if let Some(child) = old.child.as_mut() {
            stop_children(&mut [child]);
        }
        let port = old.info.addr.port();
        self.spawn(role, pool, region, std::mem::take(&mut old.args), port)?;
        // Keep the original order (payments first) for listings.
        let new = self.members.len() - 1;
        let member = self.members.remove(new);
        self.members.insert(idx, member);
        let deadline = Instant::now() + self.spec.startup_timeout;
        let budget = self.spec.startup_timeout;
        wait_member_ready(&mut self.members[idx], &self.spec.dir, budget, deadline)
    }

    /// Processes that have exited (e.g. a fault killed them), reaping them.
    pub fn exited(&mut self) -> Vec<ProcessInfo> {
        let mut dead = Vec::new();
        for m in &mut self.members {
            if let Some(c) = m.child.as_mut() {
                if !matches!(c.try_wait(), Ok(None)) {
                    dead.push(m.info.clone());
                }
            }
        }
        dead
    }

    /// Restarts every exited process on its old port (restores the fleet
    /// after a kill experiment); returns the names restarted.
    pub fn restart_exited(&mut self) -> Result<Vec<String>, DemoError> {
        let dead = self.exited();
        for p in &dead {
            self.restart(p.role, p.pool, p.region)?;
        }
        Ok(dead.into_iter().map(|p| p.name).collect())
    }

    /// Stops every child: SIGCONT (a fault may have paused it), SIGTERM,
    /// SIGKILL after a grace period, then reaps it and removes its pidfile.
    /// Idempotent; also runs on drop.
    pub fn shutdown(&mut self) {
        let mut live: Vec<&mut Child> =
            self.members.iter_mut().filter_map(|m| m.child.as_mut()).collect();
        stop_children(&mut live);
        for m in &mut self.members {
            m.child = None;
            let _ = fs::remove_file(&m.info.pidfile);
            let _ = fs::remove_file(addr_file(&self.spec.dir, &m.info.name));
        }
    }

    fn find(&self, role: Role, pool: Cohort, region: Option<Region>) -> Option<&Member> {
        self.members.iter().find(|m| {
            m.info.role == role && m.info.pool == pool && m.info.region == region
        })
    }

    /// Spawns one service; `port` 0 lets the child pick a free port.
    fn spawn(
        &mut self,
        role: Role,
        pool: Cohort,
        region: Option<Region>,
        args: Vec<OsString>,
        port: u16,
    ) -> Result<(), DemoError> {
        let dir = &self.spec.dir;
        let name = process_name(role, pool, region);
        let addr_path = addr_file(dir, &name);
        let _ = fs::remove_file(&addr_path);
        let log = dir.join(format!("{name}.log"));
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DemoError::Dir { path, source }
        };
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(dir_err(&log))?;
        let err = out.try_clone().map_err(dir_err(&log))?;
        let child = Command::new(&self.exe)
            .arg0(&name)
            // Own process group: a terminal's Ctrl-C goes to the runner, which
            // stops the fleet in its own order (children still exit by
            // themselves if the runner dies, see `parent_gone`).
            .process_group(0)
            .arg("demo-service")
            .args(&args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--addr-file")
            .arg(&addr_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| DemoError::Spawn {
                name: name.clone(),
                exe: self.exe.clone(),
                source,
            })?;
        let pid = child.id();
        let pidfile = dir.join(format!("{name}.pid"));
        let member = Member {
            info: ProcessInfo {
                role,
                pool,
                region,
                name,
                pid,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                pidfile: pidfile.clone(),
                log,
            },
            args,
            child: Some(child),
        };
        // Pushed before the pidfile write so a failure still stops it.
        self.members.push(member);
        write_atomically(&pidfile, format!("{pid}\n").as_bytes())
            .map_err(dir_err(&pidfile))
    }

    /// Waits until every member from index `from` on has reported its
    /// address and answers `/healthz`, failing with the first one that
    /// exits or is too slow.
    fn wait_ready(&mut self, from: usize, deadline: Instant) -> Result<(), DemoError> {
        let dir = self.spec.dir.clone();
        let budget = self.spec.startup_timeout;
        for m in &mut self.members[from..] {
            wait_member_ready(m, &dir, budget, deadline)?;
        }
        Ok(())
    }
}

fn wait_member_ready(
    m: &mut Member,
    dir: &Path,
    budget: Duration,
    deadline: Instant,
) -> Result<(), DemoError> {
    let Some(child) = m.child.as_mut() else { return Ok(()) };
    let addr_path = addr_file(dir, &m.info.name);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(unhealthy(&m.info, format!("exited with {status}")));
        }
        if let Some(addr) = read_addr(&addr_path) {
            m.info.addr = addr;
            if healthz(addr) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let what =
                format!("did not answer /healthz within {}", format_duration(budget));
            return Err(unhealthy(&m.info, what));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("variant", &self.spec.variant)
            .field("dir", &self.spec.dir)
            .field("processes", &self.members.iter().map(|m| &m.info).collect::<Vec<_>>())
            .finish()
    }
}

/// CONT + TERM to every still-running child, KILL what is left after the
/// grace period, and reap all. Only unreaped children are signalled, so a
/// recycled pid can never be hit.
fn stop_children(children: &mut [&mut Child]) {
    for c in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let mut running = 0;
        for c in children.iter_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                running += 1;
            }
        }
        if running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            tracing::warn!(pid = c.id(), "demo process ignored SIGTERM; killing it");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn addr_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.addr"))
}

fn read_addr(path: &Path) -> Option<SocketAddr> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes via a temporary file and rename, so readers never see half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(&tmp, path)
}

/// `NAME.EXT.tmp`: unique per target file (the parent writes `X.pid` while
/// the child writes `X.addr`, so `X.tmp` would collide).
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("expected http://HOST:PORT[/path]".into());
    }
    Ok(())
}

/// A synchronous `GET /healthz` (start-up runs outside any runtime).
fn healthz(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let t = Duration::from_millis(500);
        let mut s = TcpStream::connect_timeout(&addr, t)?;
        s.set_read_timeout(Some(t))?;
        s.set_write_timeout(Some(t))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")?;
        let mut buf = Vec::new();
        s.take(4096).read_to_end(&mut buf)?;
        Ok(buf.starts_with(b"HTTP/1.1 200"))
    };
    attempt().unwrap_or(false)
}

fn unhealthy(info: &ProcessInfo, what: String) -> DemoError {
    DemoError::Unhealthy {
        name: info.name.clone(),
        pid: info.pid,
        what,
        log: info.log.clone(),
        stderr_tail: tail(&info.log, 20),
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let t = all[start..].join("\n");
    if t.is_empty() {
        "(empty)".into()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_urls_must_be_plain_http() {
        assert!(check_url("http://127.0.0.1:9000").is_ok());
        assert!(check_url("http://127.0.0.1:9000/prefix").is_ok());
        assert!(check_url("https://127.0.0.1:9000").is_err());
        assert!(check_url("127.0.0.1:9000").is_err());
    }

    #[test]
    fn temporary_files_do_not_collide_between_pid_and_addr_files() {
        let a = tmp_path(Path::new("/d/x.pid"));
        assert_eq!(a, Path::new("/d/x.pid.tmp"));
        assert_ne!(a, tmp_path(Path::new("/d/x.addr")));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&p, 2), "b\nc");
        assert_eq!(tail(&dir.path().join("none"), 2), "(empty)");
    }
}

//! A test fleet: N "hosts", each a network namespace with its own real
//! `sshd` (per-test host key, config and state directory), joined by
//! veth pairs to a bridge inside a test-created namespace; the controller
//! runs in a namespace of its own (`ip netns exec CTL chaos ...`), so
//! nothing touches the machine's interfaces. Every host has `eth0` at
//! 10.77.0.(10+i) and the controller 10.77.0.2.
//!
//! All hosts share this machine's file system and PID space, so each
//! host is told apart by (a) its state directory: its sshd sets
//! `CHAOS_STATE_DIR` for sessions, so each agent keeps its own journal
//! and locks, and (b) its demo service processes, whose command line
//! names the host and the fleet (`payments-web-1-TAG`, TAG unique per
//! test fleet, since parallel tests' fleets share the PID space too):
//! experiments target them as `name:payments-{host}-TAG@hosts:...`
//! ([`TestFleet::svc`]), `{host}` being replaced per host.
//!
//! Drop kills each sshd and every process left in the host namespaces
//! (sessions, agents: all started by this test) by PID, and deletes the
//! namespaces, also when the test fails.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::{chaos_bin, eventually, unique_name};

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run("ip", args);
}

/// One host of the fleet.
pub struct TestHost {
    pub name: String,
    pub ns: String,
    pub addr: String,
    pub dir: PathBuf,
    pub labels: Vec<(String, String)>,
    tag: String,
    sshd: Option<Child>,
    services: Vec<Child>,
}

impl TestHost {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// PID of this host's demo service `svc` (command line `svc-HOST`).
    pub fn service(&self, svc: &str) -> u32 {
        let i = self
            .services
            .iter()
            .position(|c| {
                proc_cmdline(c.id()).starts_with(&format!("{svc}-{}", self.name))
            })
            .unwrap_or_else(|| panic!("no service {svc} on {}", self.name));
        self.services[i].id()
    }

    /// `nft list ruleset` and `tc qdisc show` in this host's namespace.
    pub fn net_snapshot(&self) -> String {
        let mut out = String::new();
        for args in [vec!["nft", "list", "ruleset"], vec!["tc", "qdisc", "show"]] {
            let o = Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .args(&args)
                .output()
                .expect("snapshot");
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        out
    }

    /// Network state plus the state letter of every demo service.
    pub fn snapshot(&self) -> String {
        let mut out = self.net_snapshot();
        for c in &self.services {
            out.push_str(&format!("{} {:?}\n", proc_cmdline(c.id()), state(c.id())));
        }
        out
    }

    /// PIDs of `chaos agent` processes serving this host (its sessions
    /// carry this host's CHAOS_STATE_DIR).
    pub fn agents(&self) -> Vec<u32> {
        let want = format!("CHAOS_STATE_DIR={}", self.state_dir().display());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if !proc_cmdline(pid).contains("agent --stdio") {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }
}

pub fn proc_cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string()
}

pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The fleet; see the module comment.
pub struct TestFleet {
    /// Unique to this fleet; part of every demo service's name.
    pub tag: String,
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub ctl: String,
    pub hosts: Vec<TestHost>,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
}

/// True when sshd and ssh are installed and namespaces can be created.
pub fn available() -> bool {
    Path::new("/usr/sbin/sshd").exists()
        && Command::new("ssh").arg("-V").output().is_ok()
        && crate::netns::can_create_netns()
}

fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "chaos-test",
            "-f",
            path.to_str().unwrap(),
        ],
    );
}

fn pubkey(path: &Path) -> String {
    let text = std::fs::read_to_string(path.with_extension("pub")).expect("pub key");
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

impl TestFleet {
    /// `labels[i]` are host i's labels; host i is named `web-(i+1)`.
    pub fn new(labels: &[&[(&str, &str)]]) -> TestFleet {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd for privilege separation");
        let mut fleet = TestFleet {
            tag: unique_name("t"),
            client_key: dir.path().join("client_key"),
            known_hosts: dir.path().join("known_hosts"),
            bridge: unique_name("fbr"),
            ctl: unique_name("fct"),
            hosts: Vec::new(),
            dir,
        };
        keygen(&fleet.client_key);
        let (br, ctl) = (fleet.bridge.clone(), fleet.ctl.clone());
        ip(&["netns", "add", &br]);
        ip(&["netns", "add", &ctl]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        ip(&[
            "-n", &br, "link", "add", "c0", "type", "veth", "peer", "name", "eth0",
            "netns", &ctl,
        ]);
        ip(&["-n", &br, "link", "set", "c0", "master", "br0", "up"]);
        ip(&["-n", &ctl, "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
        ip(&["-n", &ctl, "link", "set", "eth0", "up"]);
        ip(&["-n", &ctl, "link", "set", "lo", "up"]);
        let mut known = String::new();
        for (i, labels) in labels.iter().enumerate() {
            let name = format!("web-{}", i + 1);
            let ns = unique_name("fh");
            let addr = format!("10.77.0.{}", 10 + i);
            let hdir = fleet.dir.path().join(&name);
            std::fs::create_dir_all(hdir.join("state")).unwrap();
            let mut host = TestHost {
                name: name.clone(),
                ns: ns.clone(),
                addr: addr.clone(),
                dir: hdir.clone(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                tag: fleet.tag.clone(),
                sshd: None,
                services: Vec::new(),
            };
            ip(&["netns", "add", &ns]);
            let peer = format!("h{i}");
            ip(&[
                "-n", &br, "link", "add", &peer, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &br, "link", "set", &peer, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let key = hdir.join("host_key");
            keygen(&key);
            known.push_str(&format!("{addr} {}\n", pubkey(&key)));
            std::fs::write(
                hdir.join("authorized_keys"),
                pubkey(&fleet.client_key) + "\n",
            )
            .unwrap();
            let cfg = format!(
                "ListenAddress {addr}\nPort 22\nHostKey {key}\nPidFile {pid}\n\
                 AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPrintMotd no\n\
                 SetEnv CHAOS_STATE_DIR={state} CHAOS_LOG=info\n",
                key = key.display(),
                pid = hdir.join("sshd.pid").display(),
                auth = hdir.join("authorized_keys").display(),
                state = hdir.join("state").display(),
            );
            let cfg_path = hdir.join("sshd_config");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = std::fs::File::create(hdir.join("sshd.log")).unwrap();
            let sshd = Command::new("ip")
                .args(["netns", "exec", &ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            host.sshd = Some(sshd);
            for svc in ["payments", "db"] {
                let child = Command::new("sleep")
                    .arg0(format!("{svc}-{name}-{}", fleet.tag))
                    .arg("600")
                    .spawn()
                    .expect("demo service");
                host.services.push(child);
            }
            fleet.hosts.push(host);
        }
        std::fs::write(&fleet.known_hosts, known).unwrap();
        for h in &fleet.hosts {
            let to: std::net::SocketAddr = format!("{}:22", h.addr).parse().unwrap();
            let up = eventually(Duration::from_secs(10), || {
                crate::netns::reachable(&fleet.ctl, to).then_some(())
            });
            assert!(
                up.is_some(),
                "sshd of {} never listened: {}",
                h.name,
                std::fs::read_to_string(h.dir.join("sshd.log")).unwrap_or_default()
            );
        }
        fleet
    }

    /// Writes an inventory (TOML); `edit` may change each host's table.
    pub fn inventory_with(&self, edit: &dyn Fn(&TestHost, &mut Vec<String>)) -> PathBuf {
        let mut text = format!(
            "[ssh]\nknown_hosts = \"{}\"\nconnect_timeout = \"2s\"\ninstall_path = \"{}\"\n",
            self.known_hosts.display(),
            self.dir.path().join("installed/chaos").display()
        );
        for h in &self.hosts {
            let labels: Vec<String> =
                h.labels.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
            let mut lines = vec![
                format!("name = \"{}\"", h.name),
                format!("address = \"{}\"", h.addr),
                "user = \"root\"".to_string(),
                format!("identity = \"{}\"", self.client_key.display()),
                format!("chaos = \"{}\"", chaos_bin().display()),
                format!("labels = {{ {} }}", labels.join(", ")),
            ];
            edit(h, &mut lines);
            text.push_str(&format!("\n[[host]]\n{}\n", lines.join("\n")));
        }
        let path = self.dir.path().join(format!("{}.toml", unique_name("inv")));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn inventory(&self) -> PathBuf {
        self.inventory_with(&|_, _| {})
    }

    /// An inventory whose `[ssh] lease` (what `chaos run` gives its
    /// agents) is `lease`, e.g. "2s".
    pub fn inventory_leased(&self, lease: &str) -> PathBuf {
        let path = self.inventory();
        let text = std::fs::read_to_string(&path).expect("inventory");
        let text = text.replacen("[ssh]\n", &format!("[ssh]\nlease = \"{lease}\"\n"), 1);
        std::fs::write(&path, text).expect("inventory");
        path
    }

    /// An ssh_config (for `[ssh] config`, i.e. `ssh -F`) that reaches
    /// host `target` through host `via` as a bastion (ProxyJump). The
    /// jump connection gets only this file (not the command line's
    /// `-o`/`-i`), so it carries the test's key and known_hosts.
    pub fn ssh_config_jump(&self, target: &str, via: &str) -> PathBuf {
        let text = format!(
            "Host {t}\n  ProxyJump root@{v}\n\nHost *\n  User root\n  IdentityFile {key}\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 2\n",
            t = self.host(target).addr,
            v = self.host(via).addr,
            key = self.client_key.display(),
            kh = self.known_hosts.display(),
        );
        let path = self.dir.path().join(format!("{}.ssh_config", unique_name("cfg")));
        std::fs::write(&path, text).expect("ssh_config");
        path
    }

    /// True while a chaos nft table exists in `host`'s namespace.
    pub fn has_chaos_table(&self, host: &str) -> bool {
        self.host(host).net_snapshot().contains("table inet chaos_")
    }

    /// `ip netns exec CTL chaos ARGS` (the controller's side).
    pub fn controller(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ctl]).arg(chaos_bin()).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.controller(args).output().expect("run controller")
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.hosts.iter().map(TestHost::snapshot).collect()
    }

    /// `name:SVC-{host}-TAG` followed by `place` (e.g. `@host:web-1`).
    pub fn svc(&self, svc: &str, place: &str) -> String {
        format!("name:{svc}-{{host}}-{}{place}", self.tag)
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts.iter().find(|h| h.name == name).expect("host")
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut s) = h.sshd.take() {
                let _ = s.kill();
                let _ = s.wait();
            }
            // Sessions and agents the test started through this sshd.
            for pid in h.agents() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let Ok(o) = Command::new("ip").args(["netns", "pids", &h.ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            for c in &mut h.services {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGCONT,
                );
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
        }
        for ns in [&self.ctl, &self.bridge] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// An HTTP service answering 200 inside namespace `ns`, bound to `ip`
/// (port chosen by the kernel); returns its port. Served by a runtime on
/// a thread for the test's life.
pub fn http_service_in(ns: &str, ip: std::net::IpAddr) -> u16 {
    let listener = crate::netns::in_netns(ns, move || {
        std::net::TcpListener::bind((ip, 0)).expect("bind http service")
    });
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    port
}

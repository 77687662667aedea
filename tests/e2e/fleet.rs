//! Faults on a test fleet (see fleet_support): three hosts with real
//! sshd, faults applied through `chaos agent` over SSH from a controller
//! in its own namespace, and what happens when the controller, the
//! connection or an agent is lost.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet_support::{state, TestFleet};
use crate::support::{eventually, require_capability};

fn fleet() -> Option<TestFleet> {
    if !require_capability(
        crate::fleet_support::available(),
        "sshd (openssh-server), ssh and network namespaces (root)",
    ) {
        return None;
    }
    Some(TestFleet::new(&[
        &[("region", "us-east"), ("role", "payments")],
        &[("region", "eu-west"), ("role", "payments")],
        &[("region", "us-east"), ("role", "db")],
    ]))
}

fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs an `inject` in the background, waits until `active` holds,
/// checks it, and waits for the controller to end.
fn during(
    f: &TestFleet,
    args: &[&str],
    active: &dyn Fn(&TestFleet) -> bool,
) -> std::process::Output {
    let child = f
        .controller(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn controller");
    let seen = eventually(Duration::from_secs(15), || active(f).then_some(()));
    let out = child.wait_with_output().expect("wait controller");
    assert!(seen.is_some(), "{args:?} never became active: {}", text(&out));
    out
}

#[test]
fn faults_on_two_of_three_hosts_apply_there_only_and_revert() {
    let Some(f) = fleet() else { return };
    let inv = f.inventory();
    let inv = inv.to_str().unwrap();
    let before = f.snapshot();
    let (w1, w2, w3) = (f.host("web-1"), f.host("web-2"), f.host("web-3"));

    // Pause the payments service of each payments host.
    let out = during(
        &f,
        &[
            "inject",
            "process-pause",
            "--target",
            &f.svc("payments", "@hosts:role=payments"),
            "--inventory",
            inv,
            "--duration",
            "3s",
            "--lease",
            "2s",
        ],
        &|_| {
            state(w1.service("payments")) == Some('T')
                && state(w2.service("payments")) == Some('T')
        },
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_ne!(state(w3.service("payments")), Some('T'), "web-3 is not a payments host");

    // nft loss and blackhole, and tbf, on eth0 of the payments hosts.
    for args in [
        // Towards a TEST-NET range: the agents spare their own SSH
        // session anyway (see the region blackhole tests), but these
        // faults are about the rules on the payments hosts only.
        vec!["packet-loss", "--loss", "30%", "--destination", "192.0.2.0/24"],
        vec!["blackhole", "--destination", "10.77.0.0/24", "--port", "8080"],
        vec!["bandwidth", "--rate", "1mbit"],
    ] {
        let mut full = vec!["inject"];
        full.extend(&args);
        full.extend([
            "--target",
            "iface:eth0@hosts:role=payments",
            "--inventory",
            inv,
            "--duration",
            "3s",
            "--lease",
            "2s",
        ]);
        let out = during(&f, &full, &|f| {
            f.hosts[0].net_snapshot() != before_net(&before[0])
                && f.hosts[1].net_snapshot() != before_net(&before[1])
        });
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("== host web-2 =="));
    }
    settle(&f, &before);
    assert_eq!(f.snapshot(), before, "every host back to its snapshot");
    assert_eq!(f.hosts[2].snapshot(), before[2], "web-3 never touched");
}

/// The network part of a full snapshot (services are listed after it).
fn before_net(full: &str) -> String {
    full.lines()
        .filter(|l| !l.starts_with("payments-") && !l.starts_with("db-"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn settle(f: &TestFleet, before: &[String]) {
    let _ = eventually(Duration::from_secs(3), || (f.snapshot() == before).then_some(()));
}

/// Starts a long inject of pause + nft loss on web-1 and web-2 (two
/// controllers), waits for both faults, and returns them.
fn long_faults(f: &TestFleet, inv: &str) -> Vec<std::process::Child> {
    let before = f.snapshot();
    let pay = f.svc("payments", "@hosts:role=payments");
    let mut kids = Vec::new();
    for args in [
        vec!["process-pause", "--target", &pay],
        vec![
            "packet-loss",
            "--target",
            "iface:eth0@hosts:role=payments",
            "--loss",
            "20%",
            "--destination",
            "192.0.2.0/24",
        ],
    ] {
        let mut full = vec!["inject"];
        full.extend(&args);
        full.extend(["--inventory", inv, "--duration", "60s", "--lease", "2s"]);
        let log_path = f.dir.path().join(format!("ctl{}.log", kids.len()));
        let log = std::fs::File::create(log_path).unwrap();
        kids.push(f.controller(&full).stdout(Stdio::null()).stderr(log).spawn().unwrap());
    }
    let all = eventually(Duration::from_secs(30), || {
        let now = f.snapshot();
        (now[0] != before[0]
            && now[1] != before[1]
            && now[0].contains("table inet")
            && now[1].contains("table inet")
            && state(f.hosts[0].service("payments")) == Some('T')
            && state(f.hosts[1].service("payments")) == Some('T'))
        .then_some(())
    });
    let logs: Vec<String> = (0..2)
        .map(|i| {
            let p = f.dir.path().join(format!("ctl{i}.log"));
            std::fs::read_to_string(p).unwrap_or_default()
        })
        .collect();
    assert!(
        all.is_some(),
        "faults never became active on both hosts: {:?}\n{}",
        f.snapshot(),
        logs.join("\n")
    );
    kids
}

#[test]
fn a_sigkilled_controller_leaves_nothing_behind_within_the_lease() {
    let Some(f) = fleet() else { return };
    let inv = f.inventory();
    let before = f.snapshot();
    let mut kids = long_faults(&f, inv.to_str().unwrap());
    let start = Instant::now();
    for k in &mut kids {
        let _ = k.kill(); // SIGKILL
        let _ = k.wait();
    }
    let lease = Duration::from_secs(2);
    let back = eventually(lease + Duration::from_secs(2), || {
        (f.snapshot() == before).then_some(())
    });
    eprintln!("controller SIGKILLed: every host reverted after {:?}", start.elapsed());
    assert!(back.is_some(), "hosts not reverted within lease + 2 s: {:?}", f.snapshot());
}

#[test]
fn a_cut_connection_makes_every_host_revert_by_itself() {
    let Some(f) = fleet() else { return };
    let inv = f.inventory();
    let before = f.snapshot();
    let kids = long_faults(&f, inv.to_str().unwrap());
    // Drop every packet in the controller's namespace: the agents hear
    // nothing more, the controller cannot reach them.
    let rules = "table inet fleetcut {\n chain i { type filter hook input priority -10; policy drop; }\n \
                 chain o { type filter hook output priority -10; policy drop; }\n}\n";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &f.ctl, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success());
    let start = Instant::now();
    let lease = Duration::from_secs(2);
    let back = eventually(lease + Duration::from_secs(2), || {
        (f.snapshot() == before).then_some(())
    });
    eprintln!("connection cut: every host reverted after {:?}", start.elapsed());
    assert!(back.is_some(), "hosts not reverted within lease + 2 s: {:?}", f.snapshot());
    // The controllers notice the loss and exit 5 (bounded).
    for mut k in kids {
        let code = eventually(Duration::from_secs(20), || k.try_wait().ok().flatten());
        if code.is_none() {
            let _ = k.kill();
        }
        let _ = k.wait();
        assert_eq!(
            code.and_then(|s| s.code()),
            Some(5),
            "controller reports the lost hosts"
        );
    }
}

#[test]
fn a_sigkilled_agent_is_settled_by_recover_over_the_inventory() {
    let Some(f) = fleet() else { return };
    let inv = f.inventory();
    let inv = inv.to_str().unwrap();
    let w1 = f.host("web-1");
    let pid = w1.service("payments");
    let ctl = f
        .controller(&[
            "inject",
            "process-pause",
            "--target",
            &f.svc("payments", "@host:web-1"),
            "--inventory",
            inv,
            "--duration",
            "60s",
            "--lease",
            "2s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(15), || (state(pid) == Some('T'))
        .then_some(()))
    .is_some());
    let agents = w1.agents();
    assert_eq!(agents.len(), 1, "one agent on web-1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agents[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = ctl.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("web-1"), "{}", text(&out));
    assert_eq!(state(pid), Some('T'), "a SIGKILLed agent cannot revert");
    let dry =
        f.run(&["recover", "--inventory", inv, "--hosts", "host:web-1", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("[web-1] would revert"),
        "{}",
        text(&dry)
    );
    let rec = f.run(&["recover", "--inventory", inv, "--hosts", "host:web-1"]);
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    let resumed =
        eventually(Duration::from_secs(2), || (state(pid) == Some('S')).then_some(()));
    assert!(
        resumed.is_some(),
        "recover over ssh resumed web-1's service: {}",
        text(&rec)
    );
}

#[test]
fn preflight_names_each_bad_host_and_injects_nowhere() {
    let Some(f) = fleet() else { return };
    let before = f.snapshot();
    // web-3: a wrapper that runs the agent without CAP_NET_ADMIN.
    let wrapper = f.dir.path().join("chaos-nocap");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --inh-caps=-net_admin --bounding-set=-net_admin -- {} \"$@\"\n",
            crate::support::chaos_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cases: Vec<(&str, std::path::PathBuf, &str)> = vec![
        (
            "web-1",
            f.inventory_with(&|h, lines| {
                if h.name == "web-1" {
                    lines[1] = "address = \"10.77.0.99\"".into();
                }
            }),
            "unreachable",
        ),
        (
            "web-2",
            {
                // A known_hosts whose web-2 key is someone else's.
                let other = f.dir.path().join("other_key");
                let _ = std::fs::remove_file(&other);
                let ok = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&other)
                    .status()
                    .unwrap();
                assert!(ok.success());
                let pubk = std::fs::read_to_string(other.with_extension("pub")).unwrap();
                let key: Vec<&str> = pubk.split_whitespace().take(2).collect();
                let kh = std::fs::read_to_string(&f.known_hosts).unwrap();
                let bad: String = kh
                    .lines()
                    .map(|l| {
                        if l.starts_with("10.77.0.11 ") {
                            format!("10.77.0.11 {}\n", key.join(" "))
                        } else {
                            format!("{l}\n")
                        }
                    })
                    .collect();
                let bad_path = f.dir.path().join("bad_known_hosts");
                std::fs::write(&bad_path, bad).unwrap();
                let inv = f.inventory();
                let text = std::fs::read_to_string(&inv).unwrap().replace(
                    &f.known_hosts.display().to_string(),
                    &bad_path.display().to_string(),
                );
                std::fs::write(&inv, text).unwrap();
                inv
            },
            "host key",
        ),
        (
            "web-3",
            f.inventory_with(&|h, lines| {
                if h.name == "web-3" {
                    lines[4] = format!("chaos = \"{}\"", wrapper.display());
                }
            }),
            "CAP_NET_ADMIN",
        ),
    ];
    for (host, inv, cause) in cases {
        let start = Instant::now();
        let out = f.run(&[
            "inject",
            "blackhole",
            "--target",
            "iface:eth0@hosts:*",
            "--inventory",
            inv.to_str().unwrap(),
            "--duration",
            "5s",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{host}: refused after {:?}", start.elapsed());
        assert_eq!(out.status.code(), Some(5), "{host}: {}", text(&out));
        assert!(
            err.contains(&format!("host {host}:")) && err.contains(cause),
            "{host}: {err}"
        );
        assert!(err.contains("nothing was injected"), "{err}");
        assert_eq!(f.snapshot(), before, "{host}: nothing injected anywhere");
    }
}

#[test]
fn install_copies_this_binary_to_a_host_without_chaos() {
    let Some(f) = fleet() else { return };
    let inv = f.inventory_with(&|h, lines| {
        if h.name == "web-3" {
            lines[4] = "chaos = \"/nonexistent/chaos\"".into();
        }
    });
    let inv = inv.to_str().unwrap();
    let pid = f.host("web-3").service("db");
    let db3 = f.svc("db", "@host:web-3");
    let without =
        f.run(&["kill", "--target", &db3, "--signal", "STOP", "--inventory", inv]);
    assert_eq!(without.status.code(), Some(5), "{}", text(&without));
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("--install"),
        "{}",
        text(&without)
    );
    let with = f.run(&[
        "kill",
        "--target",
        &db3,
        "--signal",
        "STOP",
        "--inventory",
        inv,
        "--install",
    ]);
    assert_eq!(with.status.code(), Some(0), "{}", text(&with));
    assert_eq!(state(pid), Some('T'), "the installed agent signalled web-3's db");
    let installed = f.dir.path().join("installed/chaos");
    let ours = std::fs::read(crate::support::chaos_bin()).unwrap();
    assert_eq!(std::fs::read(installed).unwrap(), ours, "same bytes");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    );
}

/// True when a real HTTP GET from namespace `ns` to `to` gets a 200
/// within 0.5 s to connect and 1 s to answer (a blackholed SYN times out).
fn http_ok(ns: &str, to: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    crate::netns::in_netns(ns, move || {
        let Ok(mut s) =
            std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let req = b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n";
        if s.write_all(req).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    })
}

/// An experiment file on the fleet: a common head (load from the
/// controller's namespace against an upstream there, an error-rate
/// hypothesis; the verdict is not what these tests are about) plus
/// `body` (its `[[region]]` and `[[fault]]` tables), and the inventory
/// and controller journal it runs with.
struct FleetExperiment {
    path: std::path::PathBuf,
    inventory: std::path::PathBuf,
    journal: std::path::PathBuf,
}

fn fleet_experiment(
    f: &TestFleet,
    name: &str,
    duration: &str,
    inventory: std::path::PathBuf,
    body: &str,
) -> FleetExperiment {
    let port = crate::fleet_support::http_service_in(
        &f.ctl,
        std::net::Ipv4Addr::LOCALHOST.into(),
    );
    let text = format!(
        r#"
[experiment]
name = "{name}"
duration = "{duration}"
baseline = "1s"
min_samples = 100

[traffic]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:{port}"
experiment_percent = 40
control_percent = 40

[load]
path = "/"
rate = 200
concurrency = 16
keys = 100000

[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+1pp"
{body}"#
    );
    let path = f.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    FleetExperiment { path, inventory, journal: f.dir.path().join("ctl-journal") }
}

impl FleetExperiment {
    /// `chaos run --dry-run` from the controller's namespace.
    fn dry_run(&self, f: &TestFleet) -> std::process::Output {
        f.controller(&[
            "run",
            "--dry-run",
            "--inventory",
            self.inventory.to_str().unwrap(),
            self.path.to_str().unwrap(),
        ])
        .env("CHAOS_JOURNAL_DIR", &self.journal)
        .output()
        .unwrap()
    }
}

/// Runs `exp` on the fleet (`chaos run --quiet --json [extra]` in the
/// controller's namespace), calls `during` with the running controller
/// while it runs, and returns the controller's output and what `during`
/// returned. A controller `during` killed returns its (empty) output.
fn run_on_fleet<T>(
    f: &TestFleet,
    exp: &FleetExperiment,
    extra: &[&str],
    during: impl FnOnce(&mut std::process::Child) -> T,
) -> (std::process::Output, T) {
    let mut args = vec!["run", "--quiet", "--json"];
    args.extend(extra);
    args.extend([exp.inventory.to_str().unwrap(), exp.path.to_str().unwrap()]);
    args.insert(args.len() - 2, "--inventory");
    let mut child = f
        .controller(&args)
        .env("CHAOS_JOURNAL_DIR", &exp.journal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn controller");
    let seen = during(&mut child);
    // Bounded: every experiment here is at most 30 s long.
    let done = eventually(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if done.is_none() {
        let _ = child.kill();
    }
    (child.wait_with_output().expect("wait controller"), seen)
}

#[test]
fn an_experiment_with_host_targets_runs_its_faults_on_two_hosts_and_is_judged() {
    let Some(f) = fleet() else { return };
    let _heavy = crate::support::heavy();
    let before = f.snapshot();
    let pay = f.svc("payments", "@hosts:role=payments");
    let db = f.svc("db", "@hosts:role=payments");
    let body = format!(
        r#"
[[fault]]
name = "pause-payments"
kind = "process-pause"
target = "{pay}"
duration = "2s"

[[fault]]
name = "kill-db"
kind = "process-kill"
target = "{db}"
signal = "TERM"
start = "3s"

[[fault]]
name = "loss"
kind = "packet-loss"
target = "iface:eth0@hosts:role=payments"
loss = "30%"
destinations = ["192.0.2.0/24"]
duration = "2s"

[[fault]]
name = "blackhole"
kind = "blackhole"
target = "iface:eth0@hosts:role=payments"
destinations = ["192.0.2.0/24"]
start = "3s"
duration = "2s"

[[fault]]
name = "slow-link"
kind = "bandwidth"
target = "iface:eth0@hosts:role=payments"
rate = "1mbit"
duration = "4s"
"#
    );
    let exp = fleet_experiment(&f, "fleet", "6s", f.inventory(), &body);
    let reports = f.dir.path().join("reports");
    let dry = exp.dry_run(&f);
    let dry_text = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    for want in
        ["host web-1:", "host web-2:", "kill -STOP", "tc qdisc add dev eth0", "nft"]
    {
        assert!(dry_text.contains(want), "dry run shows {want:?}: {dry_text}");
    }
    assert!(!dry_text.contains("host web-3:"), "{dry_text}");
    assert_eq!(f.snapshot(), before, "the dry run changed nothing");

    let (w1, w2) = (f.host("web-1"), f.host("web-2"));
    let (p1, p2) = (w1.service("payments"), w2.service("payments"));
    let (d1, d2, d3) =
        (w1.service("db"), w2.service("db"), f.host("web-3").service("db"));
    let (out, (paused, shaped)) =
        run_on_fleet(&f, &exp, &["--report-dir", reports.to_str().unwrap()], |_| {
            let paused = eventually(Duration::from_secs(20), || {
                (state(p1) == Some('T') && state(p2) == Some('T')).then_some(())
            });
            let shaped = eventually(Duration::from_secs(5), || {
                (w1.net_snapshot().contains("tbf") && w2.net_snapshot().contains("tbf"))
                    .then_some(())
            });
            (paused, shaped)
        });
    assert!(
        paused.is_some() && shaped.is_some(),
        "faults seen on both hosts: {}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json result");
    assert_eq!(v["outcome"], "accepted", "{v}");
    for d in [d1, d2] {
        let gone = eventually(Duration::from_secs(2), || {
            matches!(state(d), None | Some('Z')).then_some(())
        });
        assert!(gone.is_some(), "db on a payments host was killed");
    }
    assert_eq!(state(d3), Some('S'), "web-3's db untouched");
    // Everything but the killed db processes (zombies: the test is
    // their parent) is as before.
    let strip = |s: &str| {
        s.lines()
            .filter(|l| {
                !l.starts_with("db-") && !l.ends_with("Some('Z')") && !l.ends_with("None")
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let settled = eventually(Duration::from_secs(3), || {
        let now = f.snapshot();
        (0..3).all(|i| strip(&now[i]) == strip(&before[i])).then_some(())
    });
    assert!(settled.is_some(), "hosts back to their snapshot: {:?}", f.snapshot());
}

/// `[safety] max_hosts` needs only the inventory, so the refusal comes
/// before any host is contacted: the hosts here are TEST-NET addresses
/// that nothing answers (a connection attempt would be exit 5).
#[test]
fn a_host_fault_beyond_safety_max_hosts_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.toml");
    std::fs::write(
        &inv,
        "[[host]]\nname = \"a\"\naddress = \"192.0.2.1\"\nlabels = { role = \"web\" }\n\n\
         [[host]]\nname = \"b\"\naddress = \"192.0.2.2\"\nlabels = { role = \"web\" }\n\n\
         [[host]]\nname = \"c\"\naddress = \"192.0.2.3\"\nlabels = { role = \"db\" }\n",
    )
    .unwrap();
    let exp = dir.path().join("exp.toml");
    std::fs::write(
        &exp,
        r#"[experiment]
name = "hosts-limit"
duration = "5s"

[traffic]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:9"

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+1pp"

[[fault]]
name = "pause-web"
kind = "process-pause"
target = "name:web@hosts:role=web"
duration = "2s"

[safety]
max_hosts = 1
"#,
    )
    .unwrap();
    let (inv_s, exp_s) = (inv.to_str().unwrap(), exp.to_str().unwrap());
    let valid = crate::support::chaos(&["validate", exp_s]);
    assert_eq!(valid.status.code(), Some(0), "{}", text(&valid));
    let t0 = Instant::now();
    let out = Command::new(crate::support::chaos_bin())
        .args(["run", "--inventory", inv_s, exp_s])
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(err.contains("fault pause-web"), "{err}");
    assert!(err.contains("2 of 3 targets selected, limit max_hosts 1"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "no ssh attempt: {:?}", t0.elapsed());
    // The same limit as a share: 2 of 3 hosts is above 50%.
    std::fs::write(
        &exp,
        std::fs::read_to_string(&exp)
            .unwrap()
            .replace("max_hosts = 1", "max_host_percent = \"50%\""),
    )
    .unwrap();
    let out = Command::new(crate::support::chaos_bin())
        .args(["run", "--inventory", inv_s, exp_s])
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_host_percent 50% allows 1")
    );
}

/// `region-outage` on hosts labelled with the region: method "pause"
/// stops the region's declared targets (`{host}` = each host's name) on
/// web-1 and web-3 (us-east) only, through their agents, and everything
/// equals the snapshot after.
#[test]
fn a_region_outage_pauses_the_region_on_the_hosts_labelled_with_it() {
    let Some(f) = fleet() else { return };
    let _heavy = crate::support::heavy();
    let before = f.snapshot();
    let pay = f.svc("payments", "");
    let body = format!(
        r#"
[[region]]
name = "us-east"
targets = ["{pay}"]

[[fault]]
name = "us-east-down"
kind = "region-outage"
region = "us-east"
method = "pause"
duration = "3s"
"#
    );
    let exp = fleet_experiment(&f, "region-fleet", "6s", f.inventory(), &body);
    let (p1, p2, p3) = (
        f.host("web-1").service("payments"),
        f.host("web-2").service("payments"),
        f.host("web-3").service("payments"),
    );
    let (out, (paused, web2)) = run_on_fleet(&f, &exp, &[], |_| {
        let paused = eventually(Duration::from_secs(20), || {
            (state(p1) == Some('T') && state(p3) == Some('T')).then_some(())
        });
        (paused, state(p2))
    });
    assert!(paused.is_some(), "us-east paused on web-1 and web-3: {}", text(&out));
    assert_eq!(web2, Some('S'), "web-2 (eu-west) untouched");
    // Judged or inconclusive (the verdict is not the subject here), but
    // never aborted or failed: the agents stayed for the whole run.
    assert!(matches!(out.status.code(), Some(0 | 4)), "{}", text(&out));
    let settled =
        eventually(Duration::from_secs(3), || (f.snapshot() == before).then_some(()));
    assert!(settled.is_some(), "hosts back to their snapshot: {:?}", f.snapshot());
}

/// The lease `chaos run` gives the agents in the blackhole tests: short,
/// so a blackhole that cut an agent's session would show within the
/// fault (the agent reverts and leaves after one lease).
const LEASE: Duration = Duration::from_secs(2);

/// A region blackhole of us-east (web-1, web-3: `iface:eth0` of each)
/// for `fault` within an experiment of `duration`.
fn region_blackhole(
    f: &TestFleet,
    name: &str,
    duration: &str,
    fault: &str,
) -> FleetExperiment {
    let body = format!(
        r#"
[[region]]
name = "us-east"
targets = ["iface:eth0"]

[[fault]]
name = "us-east-down"
kind = "region-outage"
region = "us-east"
method = "blackhole"
duration = "{fault}"
"#
    );
    fleet_experiment(f, name, duration, f.inventory_leased("2s"), &body)
}

/// The lines a dry run prints for one host (from `host NAME:` to the
/// next host).
fn host_section<'a>(dry: &'a str, host: &str) -> &'a str {
    let Some(at) = dry.find(&format!("host {host}:")) else { return "" };
    let rest = &dry[at..];
    let end = rest[1..].find("\nhost ").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

/// Demo HTTP services on every host (bound to all addresses of its
/// namespace), by host index: the traffic a region outage must stop.
fn host_services(f: &TestFleet) -> Vec<std::net::SocketAddr> {
    f.hosts
        .iter()
        .map(|h| {
            let port = crate::fleet_support::http_service_in(
                &h.ns,
                std::net::Ipv4Addr::UNSPECIFIED.into(),
            );
            std::net::SocketAddr::new(h.addr.parse().unwrap(), port)
        })
        .collect()
}

/// `region-outage` method blackhole on the hosts labelled us-east (web-1,
/// web-3 of 3; web-1 reached through web-2 as a ProxyJump bastion, web-3
/// directly): the dry run shows each host's management exemption (web-1's
/// peer is the bastion); during the fault real HTTP to their services
/// from outside fails (and their own egress), their loopback and the
/// eu-west host still answer, the agents keep their SSH sessions past the
/// lease (same agents, tables in place), the run ends normally, and every
/// host's nft state equals the snapshot from before.
#[test]
fn a_region_blackhole_drops_the_hosts_traffic_but_spares_the_agents_ssh() {
    let Some(f) = fleet() else { return };
    let _heavy = crate::support::heavy();
    let svc = host_services(&f);
    for (h, to) in f.hosts.iter().zip(&svc) {
        assert!(http_ok(&f.ctl, *to), "{} serves before the fault", h.name);
    }
    let before = f.snapshot();
    let exp = region_blackhole(&f, "region-blackhole", "8s", "5s");
    let config = f.ssh_config_jump("web-1", "web-2");
    let inventory = std::fs::read_to_string(&exp.inventory).unwrap().replacen(
        "[ssh]\n",
        &format!("[ssh]\nconfig = \"{}\"\n", config.display()),
        1,
    );
    std::fs::write(&exp.inventory, inventory).unwrap();

    let dry = exp.dry_run(&f);
    let dry_text = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    // The host sees the bastion (web-2, 10.77.0.11) as web-1's peer.
    for (h, peer) in [("web-1", "10.77.0.11"), ("web-3", "10.77.0.2")] {
        let addr = &f.host(h).addr;
        let section = host_section(&dry_text, h);
        for want in [
            format!("management path spared: ssh {peer} -> {addr}:22"),
            format!("ip saddr {peer} ip daddr {addr} tcp dport 22 counter accept"),
            format!("ip daddr {peer} ip saddr {addr} tcp sport 22 counter accept"),
            "oifname \"eth0\" counter drop".to_string(),
        ] {
            assert!(section.contains(&want), "{h}'s dry run shows {want:?}: {dry_text}");
        }
    }
    assert!(host_section(&dry_text, "web-2").is_empty(), "{dry_text}");
    assert_eq!(f.snapshot(), before, "the dry run changed nothing");

    let (w1, w3) = (f.host("web-1"), f.host("web-3"));
    let ssh = |h: &crate::fleet_support::TestHost| {
        crate::netns::reachable(&f.ctl, format!("{}:22", h.addr).parse().unwrap())
    };
    let (out, seen) = run_on_fleet(&f, &exp, &[], |_| {
        let active = eventually(Duration::from_secs(20), || {
            (f.has_chaos_table("web-1") && f.has_chaos_table("web-3")).then(Instant::now)
        })?;
        let agents = (w1.agents(), w3.agents());
        let seen = (
            http_ok(&f.ctl, svc[0]),
            http_ok(&f.ctl, svc[2]),
            http_ok(&f.ctl, svc[1]),
            // web-1's egress: to the eu-west host's service.
            http_ok(&w1.ns, svc[1]),
            // web-1's loopback.
            http_ok(
                &w1.ns,
                std::net::SocketAddr::new([127, 0, 0, 1].into(), svc[0].port()),
            ),
            // A new SSH connection from the spared peer still gets
            // through (what `chaos recover --inventory` needs); other
            // peers do not (web-1 spares its bastion, not 10.77.0.2).
            ssh(w3),
            ssh(w1),
        );
        // Past one lease plus a margin: a cut session would have made
        // both agents revert and leave by now.
        std::thread::sleep(
            (active + LEASE + Duration::from_secs(1))
                .saturating_duration_since(Instant::now()),
        );
        let held = f.has_chaos_table("web-1")
            && f.has_chaos_table("web-3")
            && (w1.agents(), w3.agents()) == agents
            && !agents.0.is_empty()
            && !agents.1.is_empty();
        Some((seen, held))
    });
    let Some((seen, held)) = seen else {
        panic!("the blackhole never appeared on web-1 and web-3: {}", text(&out))
    };
    let (web1, web3, web2, egress, loopback, ssh3, ssh1) = seen;
    assert!(held, "agents kept their sessions and the fault past the lease");
    assert!(!web1 && !web3, "us-east services unreachable from outside: {seen:?}");
    assert!(web2, "the eu-west host still answers: {seen:?}");
    assert!(!egress, "web-1 cannot reach out either: {seen:?}");
    assert!(loopback, "web-1's loopback keeps working: {seen:?}");
    assert!(ssh3, "web-3's spared peer (the controller) still reaches sshd: {seen:?}");
    assert!(!ssh1, "web-1 spares its bastion only, not the controller: {seen:?}");
    assert!(matches!(out.status.code(), Some(0 | 4)), "{}", text(&out));
    // Reverted by the controller through live agents, not by a lease.
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("us-east-down"), "{}", text(&out));
    assert!(!report.contains("left before the revert"), "{}", text(&out));
    let settled =
        eventually(Duration::from_secs(3), || (f.snapshot() == before).then_some(()));
    assert!(settled.is_some(), "hosts back to their snapshot: {:?}", f.snapshot());
    for (h, to) in f.hosts.iter().zip(&svc) {
        assert!(http_ok(&f.ctl, *to), "{} serves again", h.name);
    }
}

/// SIGKILL the controller mid-blackhole: the spared sessions end with
/// it, and every host reverts by itself within lease + 2 s, with no
/// `chaos recover`.
#[test]
fn a_sigkilled_controller_mid_blackhole_leaves_nothing_behind_within_the_lease() {
    let Some(f) = fleet() else { return };
    let _heavy = crate::support::heavy();
    let before = f.snapshot();
    let exp = region_blackhole(&f, "region-blackhole-kill", "30s", "20s");
    let (_out, (active, back)) = run_on_fleet(&f, &exp, &[], |ctl| {
        let active = eventually(Duration::from_secs(20), || {
            (f.has_chaos_table("web-1") && f.has_chaos_table("web-3")).then_some(())
        });
        let start = Instant::now();
        let _ = ctl.kill(); // SIGKILL
        let back = eventually(LEASE + Duration::from_secs(2), || {
            (f.snapshot() == before).then(|| start.elapsed())
        });
        (active, back)
    });
    assert!(active.is_some(), "the blackhole appeared on web-1 and web-3");
    eprintln!("controller SIGKILLed mid-blackhole: hosts reverted after {back:?}");
    assert!(back.is_some(), "hosts not reverted within lease + 2 s: {:?}", f.snapshot());
}

/// SIGKILL web-1's agent mid-blackhole: its blackhole stays (nobody is
/// left to revert it), but the exemption in it lets a new SSH session
/// from the controller in, so `chaos recover --inventory` reads the
/// agent's journal (whose record names the exemption) and deletes the
/// table: web-1 is back to its snapshot.
#[test]
fn recover_reaches_a_blackholed_host_whose_agent_died_through_the_exemption() {
    let Some(f) = fleet() else { return };
    let _heavy = crate::support::heavy();
    let before = f.snapshot();
    let exp = region_blackhole(&f, "region-blackhole-agent", "6s", "3s");
    let w1 = f.host("web-1");
    let (out, killed) = run_on_fleet(&f, &exp, &[], |_| {
        eventually(Duration::from_secs(20), || f.has_chaos_table("web-1").then_some(()))?;
        let agents = w1.agents();
        for pid in &agents {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Some(agents.len())
    });
    assert_eq!(killed, Some(1), "one agent on web-1 killed mid-fault: {}", text(&out));
    assert!(f.has_chaos_table("web-1"), "a SIGKILLed agent cannot revert");
    // A fault left behind is exit 5 whatever the verdict: a CI gate must
    // not pass while web-1 is still black-holed.
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    // The run's report says so (the fault's revert error) instead of
    // showing a fault that lasted as planned.
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json result");
    let report = v.to_string();
    assert!(
        report.contains("host web-1")
            && report.contains("the agent left before the revert"),
        "{}",
        text(&out)
    );
    let inv = exp.inventory.to_str().unwrap();
    let dry =
        f.run(&["recover", "--inventory", inv, "--hosts", "host:web-1", "--dry-run"]);
    let dry_text = String::from_utf8_lossy(&dry.stdout);
    let want = format!("on host iface eth0, sparing ssh 10.77.0.2 -> {}:22", w1.addr);
    assert!(
        dry_text.contains("[web-1] would revert") && dry_text.contains(&want),
        "the journal record names the exemption: {}",
        text(&dry)
    );
    let rec = f.run(&["recover", "--inventory", inv, "--hosts", "host:web-1"]);
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    let settled =
        eventually(Duration::from_secs(3), || (f.snapshot() == before).then_some(()));
    assert!(settled.is_some(), "every host back to its snapshot: {:?}", f.snapshot());
}

/// An agent that cannot see its SSH session (here: a wrapper that
/// clears sshd's session variables, as `sudo` without env_keep does)
/// would be cut off by a region blackhole: refused with exit 5 naming
/// the host, nothing injected on any host.
#[test]
fn a_region_blackhole_is_refused_on_a_host_whose_agent_sees_no_session() {
    let Some(f) = fleet() else { return };
    let before = f.snapshot();
    let wrapper = f.dir.path().join("chaos-nossh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec env -u SSH_CONNECTION -u SSH_CLIENT {} \"$@\"\n",
            crate::support::chaos_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let inv = f.inventory_with(&|h, lines| {
        if h.name == "web-3" {
            lines[4] = format!("chaos = \"{}\"", wrapper.display());
        }
    });
    let exp = region_blackhole(&f, "region-blackhole-nossh", "5s", "2s");
    let exp = FleetExperiment { inventory: inv, ..exp };
    let (out, ()) = run_on_fleet(&f, &exp, &[], |_| ());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        err.contains("host web-3") && err.contains("no SSH session to spare"),
        "{err}"
    );
    assert!(!err.contains("host web-1:"), "web-1's agent can spare its session: {err}");
    assert_eq!(f.snapshot(), before, "nothing injected anywhere");
}

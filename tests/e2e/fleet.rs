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
        // Never towards the controller (10.77.0.2): loss on the agents'
        // own SSH path can starve their lease (they would then revert
        // and leave, which is safe but not what this test is about).
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

/// An HTTP upstream answering 200 inside namespace `ns` on 127.0.0.1;
/// returns its port. Served by a runtime on a thread for the test's life.
fn upstream_in(ns: &str) -> u16 {
    let listener = crate::netns::in_netns(ns, || {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream")
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

#[test]
fn an_experiment_with_host_targets_runs_its_faults_on_two_hosts_and_is_judged() {
    let Some(f) = fleet() else { return };
    let _heavy = crate::support::heavy();
    let inv = f.inventory();
    let before = f.snapshot();
    let port = upstream_in(&f.ctl);
    let pay = f.svc("payments", "@hosts:role=payments");
    let db = f.svc("db", "@hosts:role=payments");
    let exp = format!(
        r#"
[experiment]
name = "fleet"
duration = "6s"
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
# Not the controller (10.77.0.2): that would cut the agents off.
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
    let path = f.dir.path().join("fleet-exp.toml");
    std::fs::write(&path, exp).unwrap();
    let reports = f.dir.path().join("reports");
    let journal = f.dir.path().join("ctl-journal");
    let dry = f
        .controller(&[
            "run",
            "--dry-run",
            "--inventory",
            inv.to_str().unwrap(),
            path.to_str().unwrap(),
        ])
        .env("CHAOS_JOURNAL_DIR", &journal)
        .output()
        .unwrap();
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
    let child = f
        .controller(&[
            "run",
            "--quiet",
            "--json",
            "--report-dir",
            reports.to_str().unwrap(),
            "--inventory",
            inv.to_str().unwrap(),
            path.to_str().unwrap(),
        ])
        .env("CHAOS_JOURNAL_DIR", &journal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let paused = eventually(Duration::from_secs(20), || {
        (state(p1) == Some('T') && state(p2) == Some('T')).then_some(())
    });
    let shaped = eventually(Duration::from_secs(5), || {
        (w1.net_snapshot().contains("tbf") && w2.net_snapshot().contains("tbf"))
            .then_some(())
    });
    let out = child.wait_with_output().unwrap();
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
    let inv = f.inventory();
    let before = f.snapshot();
    let port = upstream_in(&f.ctl);
    let pay = f.svc("payments", "");
    let exp = format!(
        r#"
[experiment]
name = "region-fleet"
duration = "6s"
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
    let path = f.dir.path().join("region-exp.toml");
    std::fs::write(&path, exp).unwrap();
    let journal = f.dir.path().join("ctl-journal");
    let (p1, p2, p3) = (
        f.host("web-1").service("payments"),
        f.host("web-2").service("payments"),
        f.host("web-3").service("payments"),
    );
    let child = f
        .controller(&[
            "run",
            "--quiet",
            "--json",
            "--inventory",
            inv.to_str().unwrap(),
            path.to_str().unwrap(),
        ])
        .env("CHAOS_JOURNAL_DIR", &journal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let paused = eventually(Duration::from_secs(20), || {
        (state(p1) == Some('T') && state(p3) == Some('T')).then_some(())
    });
    let web2 = state(p2);
    let out = child.wait_with_output().unwrap();
    assert!(paused.is_some(), "us-east paused on web-1 and web-3: {}", text(&out));
    assert_eq!(web2, Some('S'), "web-2 (eu-west) untouched");
    // Judged or inconclusive (the verdict is not the subject here), but
    // never aborted or failed: the agents stayed for the whole run.
    assert!(matches!(out.status.code(), Some(0 | 4)), "{}", text(&out));
    let settled =
        eventually(Duration::from_secs(3), || (f.snapshot() == before).then_some(()));
    assert!(settled.is_some(), "hosts back to their snapshot: {:?}", f.snapshot());
}

/// Blackholing a whole host would drop its agent's SSH session; refused
/// (exit 2) before any host is contacted.
#[test]
fn a_region_blackhole_on_hosts_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("exp.toml");
    std::fs::write(
        &exp,
        r#"[experiment]
name = "region-blackhole"
duration = "5s"

[traffic]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:9"

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+1pp"

[[region]]
name = "us-east"
targets = ["iface:eth0"]

[[fault]]
name = "us-east-down"
kind = "region-outage"
region = "us-east"
method = "blackhole"

[[host]]
name = "a"
address = "192.0.2.1"
labels = { region = "us-east" }
"#,
    )
    .unwrap();
    let out = Command::new(crate::support::chaos_bin())
        .args(["run", exp.to_str().unwrap()])
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(err.contains("fault us-east-down") && err.contains("SSH path"), "{err}");
}

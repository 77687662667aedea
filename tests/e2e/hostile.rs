//! Issue 12, input cases 8-12 and the typed exit codes, through the
//! binary: hostile names refused (and checked against the real `nft` in
//! a test-created namespace), files that are FIFOs, devices or secrets,
//! refused targets, ad-hoc blast radius, and the admin endpoint's
//! exposure rule. Every child that could hang runs under a timeout, so a
//! regression fails instead of hanging the suite.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{chaos_bin, eventually, require_capability, unique_name};

/// Runs `chaos ARGS`, killing it and failing the test after `limit`.
fn chaos_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(chaos_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chaos");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "chaos {args:?} still running after {limit:?} (killed)\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An experiment around one fault table, with a [[region]] declaring
/// `region_targets`.
fn experiment(fault: &str, region_targets: &str) -> String {
    format!(
        r#"[experiment]
name = "hostile"
duration = "10s"

[traffic]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:9"

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+1pp"

[[region]]
name = "eu"
targets = {region_targets}

[[fault]]
{fault}
"#
    )
}

fn validate_file(dir: &Path, name: &str, src: &str) -> (Output, String) {
    let path = dir.join(name);
    std::fs::write(&path, src).expect("write experiment");
    let out =
        chaos_within(&["validate", path.to_str().unwrap()], Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// Line and column (1-based) of the first `needle` in `src`.
fn position(src: &str, needle: &str) -> (usize, usize) {
    let offset = src.find(needle).expect("needle in source");
    let line = src[..offset].matches('\n').count() + 1;
    let col = offset - src[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[test]
fn r12_8_hostile_interface_names_are_refused_at_file_line_col_and_with_exit_2_on_the_cli()
{
    let dir = tempfile::tempdir().unwrap();
    for (i, value) in [
        r#""iface:..""#,
        r#""iface:.""#,
        r#""iface:a\nb""#,
        r#""iface:q\"drop;drop;#@ns""#,
        r#""iface:eth*""#,
    ]
    .iter()
    .enumerate()
    {
        let src = experiment(
            &format!("kind = \"blackhole\"\ntarget = {value}"),
            r#"["netns:x"]"#,
        );
        let (out, stdout) = validate_file(dir.path(), &format!("bad{i}.toml"), &src);
        assert_eq!(out.status.code(), Some(2), "{value}: {}", text(&out));
        let (line, col) = position(&src, value);
        let want = format!("bad{i}.toml:{line}:{col}: error: interface name");
        assert!(stdout.contains(&want), "{value}: want {want:?} in\n{stdout}");
        assert!(stdout.contains("hint:"), "{stdout}");
    }
    for target in ["iface:q\"drop;drop;#@ns", "iface:..", "iface:a\nb", "netns:-n"] {
        let out = chaos_within(
            &["inject", "blackhole", "--target", target, "--dry-run"],
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(2), "{target:?}: {}", text(&out));
    }
}

/// Deletes the namespace on drop, even when the test fails.
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        let name = unique_name("r12n");
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        if !ok(Command::new("ip").args(["netns", "add", &name])) {
            return None;
        }
        let ns = Netns(name);
        let added = ok(Command::new("ip").args([
            "-n", &ns.0, "link", "add", "r12d0", "type", "veth", "peer", "name", "r12d1",
        ]));
        added.then_some(ns)
    }

    fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .output()
            .expect("run nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn chaos_tables(&self) -> Vec<String> {
        self.nft(&["list", "tables"])
            .lines()
            .filter_map(|l| l.strip_prefix("table inet "))
            .filter(|t| t.starts_with("chaos_"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The rule lines of an `nft list table` listing, counters zeroed.
fn rules_of(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("table ")
                && !l.starts_with("chain ")
                && !l.starts_with("type ")
                && !l.starts_with("comment ")
                && *l != "}"
        })
        .map(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            let mut out = Vec::new();
            let mut i = 0;
            while i < words.len() {
                if (words[i] == "packets" || words[i] == "bytes") && i + 1 < words.len() {
                    out.push(words[i]);
                    out.push("N");
                    i += 2;
                } else {
                    out.push(words[i]);
                    i += 1;
                }
            }
            out.join(" ")
        })
        .collect()
}

#[test]
fn r12_8_against_real_nft_a_hostile_name_is_refused_and_a_blackhole_is_exactly_its_rules()
{
    let has_nft = Command::new("nft").arg("--version").output().is_ok();
    if !require_capability(has_nft && chaos::fault::has_net_admin(), "root and nft") {
        return;
    }
    let Some(ns) = Netns::new() else {
        require_capability(false, "creating a network namespace with a veth pair");
        return;
    };
    let journal = tempfile::tempdir().unwrap();
    let jdir = journal.path().to_str().unwrap();

    // The hostile name names our namespace: before the fix it produced two
    // plain `drop` rules (every packet of the namespace dropped).
    let hostile = format!("iface:q\"drop;drop;#@{}", ns.0);
    let out = chaos_within(
        &[
            "inject",
            "blackhole",
            "--target",
            &hostile,
            "--duration",
            "1s",
            "--journal-dir",
            jdir,
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(ns.chaos_tables().is_empty(), "{}", ns.nft(&["list", "ruleset"]));

    let target = format!("iface:r12d0@{}", ns.0);
    let mut child: Child = Command::new(chaos_bin())
        .args(["inject", "blackhole", "--target", &target, "--duration", "20s"])
        .args(["--journal-dir", jdir])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chaos inject");
    let table = eventually(Duration::from_secs(15), || ns.chaos_tables().pop());
    let listing = table.as_ref().map(|t| ns.nft(&["list", "table", "inet", t]));
    // Revert (SIGINT) before asserting, so a failure leaves nothing behind.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() && started.elapsed().as_secs() < 15 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait().expect("wait inject");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let table = table.unwrap_or_else(|| panic!("no chaos table appeared\n{stderr}"));
    let listing = listing.unwrap_or_default();
    assert_eq!(
        rules_of(&listing),
        [
            "iifname \"r12d0\" counter packets N bytes N drop",
            "oifname \"r12d0\" counter packets N bytes N drop",
        ],
        "{listing}"
    );
    assert!(
        listing.contains(&format!("comment \"owned by chaos: {table}\"")),
        "{listing}"
    );
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(ns.chaos_tables().is_empty(), "table left after revert");
}

/// Issue 12 case 13 against the real `nft`: a journal naming a table that
/// chaos did not create (no chaos comment) does not get it deleted.
#[test]
fn r12_13_recover_leaves_a_chaos_named_table_without_our_comment_alone() {
    let has_nft = Command::new("nft").arg("--version").output().is_ok();
    if !require_capability(has_nft && chaos::fault::has_net_admin(), "root and nft") {
        return;
    }
    let Some(ns) = Netns::new() else {
        require_capability(false, "creating a network namespace");
        return;
    };
    let theirs = "chaos_theirs_0";
    let ours = "chaos_ours_0";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    let comment = chaos::fault::nft::table_comment(ours);
    nft.stdin
        .take()
        .expect("stdin")
        .write_all(
            format!("add table inet {theirs}\ntable inet {ours} {{\ncomment \"{comment}\"\n}}\n")
                .as_bytes(),
        )
        .expect("write ruleset");
    assert!(nft.wait().expect("nft").success());
    let mut tables = ns.chaos_tables();
    tables.sort();
    assert_eq!(tables, [ours, theirs]);
    let delete = |table: &str| chaos::journal::RevertAction::DeleteNftTable {
        netns: Some(ns.0.clone()),
        family: "inet".into(),
        table: table.into(),
    };
    chaos::fault::plan::revert_action(&delete(ours)).expect("our table is deleted");
    assert_eq!(ns.chaos_tables(), [theirs], "our table was not deleted");
    let action = chaos::journal::RevertAction::DeleteNftTable {
        netns: Some(ns.0.clone()),
        family: "inet".into(),
        table: theirs.into(),
    };
    let result = chaos::fault::plan::revert_action(&action);
    assert!(result.is_err(), "a foreign table was treated as ours");
    assert_eq!(ns.chaos_tables(), [theirs], "the foreign table was deleted");
    // A name outside our prefix is refused before any command runs.
    let filter = chaos::journal::RevertAction::DeleteNftTable {
        netns: Some(ns.0.clone()),
        family: "inet".into(),
        table: "filter".into(),
    };
    assert!(chaos::fault::plan::revert_action(&filter).is_err());
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .expect("mkfifo");
}

#[test]
fn r12_9_validate_refuses_a_fifo_and_dev_zero_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("exp.toml");
    mkfifo(&fifo);
    for path in [fifo.to_str().unwrap(), "/dev/zero"] {
        let out = chaos_within(&["validate", path], Duration::from_secs(10));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", text(&out));
        assert!(stdout.contains("not a regular file"), "{path}: {stdout}");
    }
}

#[test]
fn r12_9_a_pidfile_that_is_a_fifo_dev_zero_or_a_secret_is_refused_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("api.pid");
    mkfifo(&fifo);
    let secret = dir.path().join("token");
    std::fs::write(&secret, "s3cr3t-VALUE-42\n").unwrap();
    for path in [fifo.to_str().unwrap(), "/dev/zero", secret.to_str().unwrap()] {
        let target = format!("pidfile:{path}");
        let out = chaos_within(
            &["kill", "--target", &target, "--dry-run"],
            Duration::from_secs(10),
        );
        assert_ne!(out.status.code(), Some(0), "{path}: {}", text(&out));
        assert!(!text(&out).contains("s3cr3t"), "{path}: secret echoed: {}", text(&out));
    }
    // `chaos run` resolves pidfiles at preflight: it too returns promptly.
    let src = experiment(
        &format!("kind = \"process-kill\"\ntarget = \"pidfile:{}\"", fifo.display()),
        r#"["netns:x"]"#,
    );
    let exp = dir.path().join("exp.toml");
    std::fs::write(&exp, src).unwrap();
    let out = chaos_within(
        &["run", exp.to_str().unwrap(), "--dry-run"],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("not a regular file"), "{}", text(&out));
}

#[test]
fn r12_10_validate_refuses_pid_1_2_its_ancestors_zero_percent_empty_regions_and_huge_rates(
) {
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id();
    let region = r#"["netns:x"]"#;
    let cases = [
        ("kind = \"process-kill\"\ntarget = \"pid:1\"".to_string(), region, "pid 1"),
        ("kind = \"process-kill\"\ntarget = \"pid:2\"".to_string(), region, "kthreadd"),
        // The test process is the parent of `chaos validate`.
        (format!("kind = \"process-pause\"\ntarget = \"pid:{me}\""), region, "ancestor"),
        (
            "kind = \"process-kill\"\ntarget = \"name:x\"\npercent = \"0%\"".to_string(),
            region,
            "0%",
        ),
        ("kind = \"region-outage\"\nregion = \"eu\"".to_string(), "[]", "no targets"),
        (
            "kind = \"bandwidth\"\ntarget = \"iface:eth0\"\nrate = \"99999999999gbit\""
                .to_string(),
            region,
            "rate",
        ),
    ];
    for (i, (fault, targets, want)) in cases.iter().enumerate() {
        let (out, stdout) =
            validate_file(dir.path(), &format!("c{i}.toml"), &experiment(fault, targets));
        assert_eq!(out.status.code(), Some(2), "{fault}: {}", text(&out));
        assert!(
            stdout.lines().any(|l| l.contains(": error: ") && l.contains(want)),
            "{fault}: want {want:?}\n{stdout}"
        );
    }
}

#[test]
fn r12_11_ad_hoc_kill_and_inject_hit_at_most_three_targets_unless_raised() {
    let tag = format!("312.{}", std::process::id());
    let mut victims: Vec<Child> =
        (0..4).map(|_| Command::new("sleep").arg(&tag).spawn().unwrap()).collect();
    let target = format!("name:^sleep {}$", tag.replace('.', "[.]"));
    let kill = chaos_within(
        &["kill", "--target", &target, "--percent", "100%", "--dry-run"],
        Duration::from_secs(20),
    );
    let inject = chaos_within(
        &[
            "inject",
            "process-pause",
            "--target",
            &target,
            "--percent",
            "100%",
            "--dry-run",
        ],
        Duration::from_secs(20),
    );
    let raised = chaos_within(
        &[
            "kill",
            "--target",
            &target,
            "--percent",
            "100%",
            "--max-targets",
            "4",
            "--dry-run",
        ],
        Duration::from_secs(20),
    );
    for v in &mut victims {
        let _ = v.kill();
        let _ = v.wait();
    }
    for out in [&kill, &inject] {
        assert_eq!(out.status.code(), Some(2), "{}", text(out));
        assert!(text(out).contains("max_targets = 3"), "{}", text(out));
    }
    assert_eq!(raised.status.code(), Some(0), "{}", text(&raised));
    assert_eq!(text(&raised).matches("kill -KILL").count(), 4, "{}", text(&raised));
}

/// The same blast-radius refusal exits 2 from `chaos run` and `chaos
/// inject` (it used to be 5 from run): one typed mapping.
#[test]
fn r12_a_blast_radius_refusal_exits_2_from_run_as_from_kill() {
    let tag = format!("313.{}", std::process::id());
    let mut victims: Vec<Child> =
        (0..4).map(|_| Command::new("sleep").arg(&tag).spawn().unwrap()).collect();
    let pattern = format!("^sleep {}$", tag.replace('.', "[.]"));
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("exp.toml");
    std::fs::write(
        &exp,
        experiment(
            &format!(
                "kind = \"process-kill\"\ntarget = \"name:{}\"\npercent = \"100%\"",
                pattern.replace('\\', "\\\\")
            ),
            r#"["netns:x"]"#,
        ),
    )
    .unwrap();
    let journal = tempfile::tempdir().unwrap();
    let run = chaos_within(
        &[
            "run",
            exp.to_str().unwrap(),
            "--journal-dir",
            journal.path().to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let kill = chaos_within(
        &[
            "kill",
            "--target",
            &format!("name:{pattern}"),
            "--percent",
            "100%",
            "--dry-run",
        ],
        Duration::from_secs(20),
    );
    for v in &mut victims {
        let _ = v.kill();
        let _ = v.wait();
    }
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(text(&run).contains("blast radius"), "{}", text(&run));
    assert_eq!(kill.status.code(), run.status.code(), "{}", text(&kill));
}

#[test]
fn r12_load_a_bad_path_or_key_header_is_refused_at_validation() {
    let dir = tempfile::tempdir().unwrap();
    let base = experiment("kind = \"abort\"", r#"["netns:x"]"#);
    for (load, want) in [
        ("path = \"/check out\"", "request path"),
        ("path = \"checkout\"", "request path"),
        ("key_header = \"x user\"", "header name"),
        ("key_header = \"x:y\"", "header name"),
    ] {
        let src = format!("{base}\n[load]\n{load}\n");
        let (out, stdout) = validate_file(dir.path(), "load.toml", &src);
        assert_eq!(out.status.code(), Some(2), "{load}: {}", text(&out));
        let (line, col) = position(&src, load.split(" = ").nth(1).unwrap());
        assert!(
            stdout.contains(&format!("load.toml:{line}:{col}: error:"))
                && stdout.contains(want),
            "{load}: {stdout}"
        );
    }
}

/// Kills a child on drop (the proxy runs until a signal).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One raw HTTP/1.1 POST to the admin endpoint; returns the status code.
fn post(addr: &str, path: &str, auth: Option<&str>) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let auth = auth.map(|a| format!("authorization: {a}\r\n")).unwrap_or_default();
    write!(s, "POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n")
        .expect("send");
    let mut head = String::new();
    BufReader::new(s).read_line(&mut head).expect("status line");
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn r12_12_the_proxy_refuses_a_remote_admin_and_takes_its_token_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0k-from-file\n").unwrap();
    let base = ["proxy", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9"];
    for extra in [
        vec!["--admin", "0.0.0.0:0"],
        vec!["--admin", "0.0.0.0:0", "--admin-allow-remote"],
        vec!["--admin", "0.0.0.0:0", "--admin-token", "t0k"],
    ] {
        let mut args = base.to_vec();
        args.extend(extra.iter());
        let out = chaos_within(&args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", text(&out));
        assert!(text(&out).contains("loopback"), "{}", text(&out));
    }
    let mut child = Command::new(chaos_bin())
        .args(base)
        .args(["--admin", "127.0.0.1:0", "--admin-token-file"])
        .arg(&token)
        .args(["--fault", "kind=latency,delay=1ms,id=lat,enabled=false"])
        .env_remove("CHAOS_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxy");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let guard = KillOnDrop(child);
    let mut admin = None;
    for _ in 0..5 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(rest) = line.trim().strip_prefix("admin endpoint on http://") {
            admin = rest.split(' ').next().map(str::to_string);
            break;
        }
    }
    let admin = admin.expect("admin address on stderr");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", guard.0.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("t0k-from-file"));
    assert_eq!(post(&admin, "/faults/lat/enable", None), 401);
    assert_eq!(post(&admin, "/faults/lat/enable", Some("Bearer wrong")), 401);
    assert_eq!(post(&admin, "/faults/lat/enable", Some("bearer t0k-from-file")), 200);
    assert_eq!(post(&admin, "/faults/lat/disable", Some("BEARER t0k-from-file")), 200);
}

//! Throwaway network labs for fault tests: a hub namespace joined to N
//! spoke namespaces by veth pairs (hub 10.0.I.1, spoke I at 10.0.I.2),
//! deleted on drop even when the test panics. Namespaces are isolated, so
//! labs of parallel tests reuse the same addresses without clashing.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use crate::support::unique_name;

/// True when this process can create network namespaces.
pub fn can_create_netns() -> bool {
    let probe = unique_name("prb");
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    }
    ok
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hub and its spokes; every namespace is deleted on drop.
pub struct Lab {
    pub hub: String,
    pub spokes: Vec<String>,
}

impl Lab {
    pub fn new(spokes: usize) -> Lab {
        let hub = unique_name("hub");
        let mut lab = Lab { hub: hub.clone(), spokes: Vec::new() };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        for i in 0..spokes {
            let spoke = unique_name("spk");
            ip(&["netns", "add", &spoke]);
            lab.spokes.push(spoke.clone());
            let (h, s) = (format!("h{i}"), format!("s{i}"));
            ip(&["-n", &hub, "link", "add", &h, "type", "veth", "peer", "name", &s]);
            ip(&["-n", &hub, "link", "set", &s, "netns", &spoke]);
            ip(&["-n", &hub, "addr", "add", &format!("10.0.{i}.1/24"), "dev", &h]);
            ip(&["-n", &spoke, "addr", "add", &format!("10.0.{i}.2/24"), "dev", &s]);
            ip(&["-n", &hub, "link", "set", &h, "up"]);
            ip(&["-n", &spoke, "link", "set", &s, "up"]);
            ip(&["-n", &spoke, "link", "set", "lo", "up"]);
        }
        // A fresh veth needs a moment before it carries traffic; tests
        // must not mistake that for a fault.
        for (i, spoke) in lab.spokes.iter().enumerate() {
            for (ns, dev) in [(&lab.hub, format!("h{i}")), (spoke, format!("s{i}"))] {
                let up = crate::support::eventually(Duration::from_secs(5), || {
                    let o = Command::new("ip")
                        .args(["-n", ns, "link", "show", &dev])
                        .output();
                    o.ok()
                        .filter(|o| {
                            String::from_utf8_lossy(&o.stdout).contains("state UP")
                        })
                        .map(|_| ())
                });
                assert!(up.is_some(), "veth {dev} in {ns} never came up");
            }
        }
        lab
    }

    /// Adds IPv6 on every veth: hub fd00:0:0:I::1/64, spoke fd00:0:0:I::2/64,
    /// without duplicate-address detection so they are usable at once.
    pub fn with_ipv6(self) -> Lab {
        for (i, spoke) in self.spokes.iter().enumerate() {
            let (h, sp) = (format!("h{i}"), format!("s{i}"));
            for (ns, dev, host) in [(&self.hub, h, 1), (spoke, sp, 2)] {
                let addr = format!("fd00:0:0:{i}::{host}/64");
                ip(&["-n", ns, "addr", "add", &addr, "dev", &dev, "nodad"]);
            }
        }
        self
    }

    /// IPv6 address of spoke `i` (after [`Lab::with_ipv6`]).
    pub fn spoke_addr6(i: usize) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, 0, 0, i as u16, 0, 0, 0, 2)
    }

    /// Address of spoke `i` as seen from the hub.
    pub fn spoke_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, i as u8, 2)
    }

    /// Every namespace of the lab.
    pub fn all(&self) -> Vec<String> {
        std::iter::once(self.hub.clone()).chain(self.spokes.iter().cloned()).collect()
    }

    /// `nft list ruleset` and `tc qdisc show` of every namespace.
    pub fn snapshot(&self) -> String {
        let mut out = String::new();
        for ns in self.all() {
            for args in [vec!["nft", "list", "ruleset"], vec!["tc", "qdisc", "show"]] {
                let o = Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .args(&args)
                    .output()
                    .expect("snapshot command");
                out.push_str(&format!("## {ns} {args:?}\n"));
                out.push_str(&String::from_utf8_lossy(&o.stdout));
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.all() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Runs `f` on a thread that has joined namespace `ns`; sockets it
/// creates stay in that namespace wherever they are used later.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A TCP listener in `ns` (the kernel completes handshakes without
/// `accept`, which is all reachability probes need).
pub fn listen(ns: &str, addr: Ipv4Addr, port: u16) -> TcpListener {
    in_netns(ns, move || TcpListener::bind((addr, port)).expect("bind listener"))
}

/// A TCP listener in `ns` on any address (IPv4 or IPv6).
pub fn listen_on(ns: &str, addr: SocketAddr) -> TcpListener {
    in_netns(ns, move || TcpListener::bind(addr).expect("bind listener"))
}

/// Whether a TCP connection from `ns` to `to` completes within 400 ms.
pub fn reachable(ns: &str, to: SocketAddr) -> bool {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(400)).is_ok()
    })
}

/// Sends `n` UDP datagrams from `from_ns` to a receiver in `to_ns` at
/// `addr` and returns how many arrived. Paced so that the receiver's
/// buffer never overflows (only the fault may drop packets).
pub fn udp_delivered(from_ns: &str, to_ns: &str, addr: Ipv4Addr, n: u32) -> u32 {
    let rx = in_netns(to_ns, move || UdpSocket::bind((addr, 0)).expect("bind udp"));
    let to = rx.local_addr().expect("local addr");
    rx.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut got = 0u32;
        while rx.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let tx = in_netns(from_ns, || UdpSocket::bind("0.0.0.0:0").expect("bind sender"));
    for i in 0..n {
        let _ = tx.send_to(&i.to_be_bytes(), to);
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    receiver.join().expect("receiver")
}

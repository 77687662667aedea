//! Bounded fuzz of `recover` over damaged journal files: random bytes,
//! truncations, byte flips and insertions into valid journals (with and
//! without checksums). Recover must never panic, must only ever revert a
//! record whose line is intact, and must report every line it could not
//! verify. The reverts in these journals are harmless by construction (a
//! pid and start time no process has, a namespace that does not exist).

use proptest::prelude::*;
use std::path::Path;

use super::recover_in;
use crate::journal::{record, Entry, RevertAction};

const PID: u32 = 4_000_000_000;
const STARTTIME: u64 = 18_000_000_000_000_000_000;

fn entries(tag: &str) -> Vec<Entry> {
    let apply = |id: u64, revert: RevertAction, lock: Option<&str>| Entry::Apply {
        id,
        fault: format!("fault-{id}"),
        lock: lock.map(str::to_string),
        revert,
    };
    vec![
        Entry::Run { run_id: "fuzz".into(), pid: PID, started_unix: 1 },
        apply(
            0,
            RevertAction::Continue {
                pid: PID,
                starttime: STARTTIME,
                stopped_before: false,
            },
            Some("proc-fuzz"),
        ),
        apply(
            1,
            RevertAction::DeleteNftTable {
                netns: Some(format!("chaos-fuzz-absent-{tag}")),
                family: "inet".into(),
                table: "chaos_fuzz_0".into(),
            },
            Some("net-fuzz"),
        ),
        apply(2, RevertAction::Nothing { note: "kill".into() }, None),
        Entry::Reverted { id: 2 },
        apply(
            3,
            RevertAction::Continue {
                pid: PID,
                starttime: STARTTIME,
                stopped_before: true,
            },
            None,
        ),
    ]
}

/// The journal's lines (newline included), checksummed or legacy.
fn lines(checksums: bool) -> Vec<String> {
    entries("zq7")
        .iter()
        .map(|e| {
            if checksums {
                record::encode(e)
            } else {
                format!("{}\n", serde_json::to_string(e).unwrap())
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Damage {
    Random(Vec<u8>),
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    Insert(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600).prop_map(Damage::Random),
        any::<usize>().prop_map(Damage::Truncate),
        prop::collection::vec((any::<usize>(), 1u8..=255), 1..5).prop_map(Damage::Flip),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(at, b)| Damage::Insert(at, b)),
    ]
}

fn apply_damage(valid: &[u8], d: &Damage) -> Vec<u8> {
    let mut out = valid.to_vec();
    match d {
        Damage::Random(bytes) => out = bytes.clone(),
        Damage::Truncate(at) => out.truncate(at % (valid.len() + 1)),
        Damage::Flip(flips) => {
            for (at, x) in flips {
                let i = at % out.len();
                out[i] ^= x;
            }
        }
        Damage::Insert(at, bytes) => {
            let i = at % (out.len() + 1);
            out.splice(i..i, bytes.iter().copied());
        }
    }
    out
}

/// `recover_in` until the journal is not reported live. Nobody runs this
/// journal, but a test on another thread that spawns a child between our
/// open and close of the journal lends the child our descriptor (and its
/// flock) until the child's exec closes it: for that instant the journal
/// looks held by a live runner and is rightly skipped.
fn recover_unheld(dir: &Path) -> super::RecoverReport {
    for _ in 0..50 {
        let report = recover_in(dir, dir, false).expect("recover reports, never fails");
        if report.live.is_empty() {
            return report;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the fuzz journal stayed locked for 0.5 s: something holds it");
}

fn check(dir: &Path, checksums: bool, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("fuzz.journal");
    std::fs::write(&path, bytes).unwrap();
    let dry = recover_in(dir, dir, true);
    prop_assert!(dry.is_ok());
    let report = recover_unheld(dir);
    prop_assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    if !checksums {
        return Ok(());
    }
    let originals = lines(true);
    // Newline-terminated lines of the damaged file, with their numbers.
    let mut file_lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let torn_tail = file_lines.pop().filter(|l| !l.is_empty());
    for label in &report.reverted {
        let id: u64 = label
            .split('#')
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .expect("a record label names its id");
        let prefix = format!("{{\"type\":\"apply\",\"id\":{id},");
        let want = originals
            .iter()
            .find(|l| l.starts_with(&prefix))
            .expect("the label names an original record")
            .trim_end()
            .as_bytes();
        prop_assert!(
            file_lines.contains(&want),
            "reverted #{id} without an intact record: {label}"
        );
    }
    let damaged_lines: Vec<usize> = report.damaged.iter().map(|(_, d)| d.line).collect();
    for (i, line) in file_lines.iter().enumerate() {
        let intact = originals.iter().any(|o| o.trim_end().as_bytes() == *line);
        if !intact && !line.iter().all(u8::is_ascii_whitespace) {
            prop_assert!(damaged_lines.contains(&(i + 1)), "line {} not reported", i + 1);
        }
    }
    if torn_tail.is_some_and(|t| !t.iter().all(u8::is_ascii_whitespace)) {
        prop_assert!(
            damaged_lines.contains(&(file_lines.len() + 1)),
            "torn tail not reported"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn recover_never_panics_and_never_acts_on_a_record_it_cannot_verify(
        checksums in any::<bool>(),
        d in damage(),
    ) {
        let valid: Vec<u8> = lines(checksums).concat().into_bytes();
        let bytes = apply_damage(&valid, &d);
        let dir = tempfile::tempdir().unwrap();
        check(dir.path(), checksums, &bytes)?;
    }
}

#[test]
fn an_undamaged_journal_reverts_its_three_pending_records_once() {
    let dir = tempfile::tempdir().unwrap();
    let valid = lines(true).concat();
    std::fs::write(dir.path().join("ok.journal"), valid).unwrap();
    let first = recover_in(dir.path(), dir.path(), false).unwrap();
    assert_eq!(first.reverted.len(), 3, "{first:?}");
    assert!(!first.needs_attention(), "{first:?}");
    let second = recover_in(dir.path(), dir.path(), false).unwrap();
    assert!(second.reverted.is_empty(), "{second:?}");
}

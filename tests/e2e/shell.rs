//! Shell completions and man pages read back the way users consume them:
//! the bash script sourced into a real `bash` (registered with `complete`,
//! then asked to complete), the other shells' scripts checked for every
//! subcommand, and the man page rendered by `man -l`.

use std::process::Command;

use clap::CommandFactory;

use crate::support::{chaos, require_capability};

/// The subcommands a user can see (the internal `demo-service` is hidden).
fn visible_subcommands() -> Vec<String> {
    chaos::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

fn completions(shell: &str) -> String {
    let out = chaos(&["completions", shell]);
    assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 script")
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn sourced_bash_completions_register_and_complete_subcommands_and_flags() {
    if !require_capability(have("bash"), "bash") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("chaos.bash");
    std::fs::write(&script, completions("bash")).unwrap();
    // Non-interactive bash has programmable completion too; the function
    // is called the way readline would call it.
    let probe = r#"
source "$1" || exit 3
complete -p chaos || exit 4
complete_words() {
  COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
  COMPREPLY=()
  _chaos chaos "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
  echo "[$*] ${COMPREPLY[*]}"
}
complete_words chaos ""
complete_words chaos ru
complete_words chaos run --dr
complete_words chaos completions ""
"#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", probe, "probe"])
        .arg(&script)
        .output()
        .expect("run bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let registered = text.lines().next().unwrap_or_default();
    assert!(
        registered.starts_with("complete ")
            && registered.contains(" -F _chaos ")
            && registered.ends_with(" chaos"),
        "{text}"
    );
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .to_string()
    };
    let top = line("[chaos ]");
    for sub in visible_subcommands() {
        assert!(top.split(' ').any(|w| w == sub), "{sub} not offered: {top}");
    }
    assert!(!top.split(' ').any(|w| w == "demo-service"), "hidden offered: {top}");
    assert_eq!(line("[chaos ru]"), "[chaos ru] run");
    assert_eq!(line("[chaos run --dr]"), "[chaos run --dr] --dry-run");
    let shells = line("[chaos completions ]");
    for sh in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(shells.split(' ').any(|w| w == sh), "{sh}: {shells}");
    }
}

#[test]
fn zsh_fish_elvish_and_powershell_scripts_mention_every_subcommand() {
    let subs = visible_subcommands();
    assert!(subs.len() >= 15 && subs.contains(&"man".to_string()), "{subs:?}");
    for (shell, marker) in [
        ("zsh", "#compdef chaos"),
        ("fish", "complete -c chaos"),
        ("elvish", "edit:completion:arg-completer[chaos]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = completions(shell);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in &subs {
            assert!(script.contains(sub.as_str()), "{shell} script lacks {sub}");
        }
    }
    let bad = chaos(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
}

/// `man -l FILE` rendered as plain text (no pager, no terminal).
fn man_text(page: &std::path::Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("run man");
    assert!(out.status.success(), "man -l: {}", String::from_utf8_lossy(&out.stderr));
    // Overstrike bold/underline (x\bx) is not expected with a pipe, but
    // strip it anyway so the checks read plain words.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    text
}

#[test]
fn man_renders_the_page_and_one_page_per_subcommand() {
    if !require_capability(have("man"), "man (apt-get install -y man-db)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = chaos(&["man"]);
    assert!(out.status.success());
    let page = dir.path().join("chaos.1");
    std::fs::write(&page, &out.stdout).unwrap();
    let text = man_text(&page);
    assert!(text.contains("NAME") && text.contains("SUBCOMMANDS"), "{text}");
    assert!(text.contains("chaos - Run chaos experiments"), "{text}");
    for sub in visible_subcommands() {
        assert!(text.contains(&format!("chaos-{sub}(1)")), "{sub} missing:\n{text}");
    }

    let pages = dir.path().join("man1");
    let out = chaos(&["man", "--dir", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for sub in visible_subcommands() {
        assert!(pages.join(format!("chaos-{sub}.1")).is_file(), "no page for {sub}");
    }
    assert!(!pages.join("chaos-demo-service.1").exists(), "hidden command paged");
    let run = man_text(&pages.join("chaos-run.1"));
    assert!(run.contains("--dry-run") && run.contains("--report-dir"), "{run}");
    assert!(run.contains("Examples:"), "the page keeps the examples:\n{run}");
}

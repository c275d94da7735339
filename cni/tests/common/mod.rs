//! Helpers shared by the root-only integration tests: unique names, command runners and guards
//! that clean up namespaces, bridges and iptables rules even when a test fails.
#![allow(dead_code, clippy::unwrap_used)] // Shared by several test binaries; tests fail by panicking.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether we can create namespaces and bridges; tests that need it return early otherwise.
pub fn is_root() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("skipping: needs root");
    }
    root
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A per-test unique small number (for bridge names and subnets).
pub fn unique() -> u32 {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// `crt<pid%1000><n>`: at most 15 characters.
pub fn bridge_name(n: u32) -> String {
    format!("crt{}{}", std::process::id() % 1000, n)
}

/// A private /24 unique to this process and test: `10.199.<x>.0/24`.
pub fn subnet_octet(n: u32) -> u32 {
    (std::process::id() % 50) * 5 + n % 5
}

/// Runs a command and returns (success, stdout+stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    match Command::new(cmd).args(args).output() {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("spawn {cmd}: {e}")),
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, out) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed: {out}");
    out
}

/// Removes pinned namespaces on drop.
pub struct NsGuard(pub PathBuf);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Err(e) = crius_cni::remove_pinned(&self.0) {
            eprintln!("cleanup {}: {e}", self.0.display());
        }
    }
}

/// Deletes the bridge, and iptables nat rules/chains mentioning `container_ids`, on drop.
pub struct NetGuard {
    pub bridge: String,
    pub container_ids: Vec<String>,
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.bridge]);
        for id in &self.container_ids {
            remove_nat_rules_mentioning(id);
        }
    }
}

/// `iptables -t nat -S` lines that mention `needle`.
pub fn nat_rules_mentioning(needle: &str) -> Vec<String> {
    let (_, out) = run("iptables", &["-t", "nat", "-S"]);
    out.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Deletes every nat rule mentioning `needle`, then flushes and deletes the `CNI-*` chains those
/// rules jumped to (portmap's per-container chains).
pub fn remove_nat_rules_mentioning(needle: &str) {
    for rule in nat_rules_mentioning(needle) {
        let words = shell_words(&rule);
        if words.first().map(String::as_str) != Some("-A") {
            continue;
        }
        let mut args: Vec<&str> = vec!["-t", "nat", "-D"];
        args.extend(words[1..].iter().map(String::as_str));
        let _ = run("iptables", &args);
        if let Some(pos) = words.iter().position(|w| w == "-j") {
            if let Some(target) = words.get(pos + 1).filter(|t| t.starts_with("CNI-DN-")) {
                let _ = run("iptables", &["-t", "nat", "-F", target]);
                let _ = run("iptables", &["-t", "nat", "-X", target]);
            }
        }
    }
}

/// Splits an `iptables -S` line into words (double quotes with backslash escapes).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut in_quotes, mut has_word) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quotes => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(cur);
    }
    words
}

/// The inode of a path (following symlinks).
pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

/// Whether `/proc/self/mountinfo` has a mount at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()))
}

#[test]
fn shell_words_handles_quoted_comments() {
    let w = shell_words(r#"-A X -m comment --comment "dnat name: \"n\" id: \"c1\"" -j CNI-DN-1"#);
    assert_eq!(
        w,
        vec![
            "-A",
            "X",
            "-m",
            "comment",
            "--comment",
            r#"dnat name: "n" id: "c1""#,
            "-j",
            "CNI-DN-1"
        ]
    );
}

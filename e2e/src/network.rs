//! A private CNI network per test: its own bridge (no masquerade, no default route out of the
//! machine), its own `/24`, its own host-local data dir, and a conflist for the daemon's conf
//! dir. Also the host-side counters tests compare before and after (IP files, veths, nat rules,
//! namespace mounts) and a guard that removes what a failed test left.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

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

/// One test's network.
pub struct TestNetwork {
    /// CNI network name (also in portmap's iptables comments).
    pub name: String,
    pub bridge: String,
    /// `10.A.B` of the `10.A.B.0/24` subnet.
    pub prefix: String,
    /// host-local's data dir (its IP files live in `data_dir/<name>`).
    pub data_dir: PathBuf,
    /// The IPv6 `/64` of a dual-stack network (`fdXX:…::/64`, unique local), if asked for.
    pub ipv6_subnet: Option<String>,
    n: u32,
    _tmp: tempfile::TempDir,
}

impl TestNetwork {
    pub fn new() -> TestNetwork {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tmp = tempfile::Builder::new()
            .prefix("crius-e2e-ipam-")
            .tempdir()
            .expect("ipam dir");
        let net = TestNetwork {
            name: format!("crius-e2e-{pid}-{n}"),
            bridge: format!("cre{}x{n}", pid % 100_000),
            prefix: format!("10.{}.{}", 150 + pid % 50, n % 256),
            data_dir: tmp.path().to_path_buf(),
            ipv6_subnet: None,
            n,
            _tmp: tmp,
        };
        // The names come from our pid, so a bridge or nat rules already under them were left
        // by a dead process that had the same pid (pids wrap at 32768 here), e.g. a run killed
        // before its cleanup: their veths would be counted as ours.
        let _ = run("ip", &["link", "del", &net.bridge]);
        net.remove_nat_rules();
        net
    }

    /// A dual-stack network: host-local also hands out an address from a unique-local IPv6
    /// `/64` (a second range set), so pods get an additional IP. Still no route off the bridge.
    pub fn dual_stack() -> TestNetwork {
        let mut net = TestNetwork::new();
        let n = net.n;
        net.ipv6_subnet = Some(format!(
            "fd9e:{:x}:{:x}::/64",
            std::process::id() % 0xffff,
            n % 0xffff
        ));
        net
    }

    /// The conflist: bridge (gateway, no masquerade) + host-local (no routes) + portmap +
    /// `extra` plugins (JSON objects) appended.
    pub fn conflist(&self, extra: &[&str]) -> String {
        let mut ranges = format!(r#"[{{"subnet":"{}.0/24"}}]"#, self.prefix);
        if let Some(v6) = &self.ipv6_subnet {
            ranges.push_str(&format!(r#",[{{"subnet":"{v6}"}}]"#));
        }
        let mut plugins = vec![
            format!(
                r#"{{"type":"bridge","bridge":"{}","isGateway":true,"ipMasq":false,"hairpinMode":true,
                "ipam":{{"type":"host-local","ranges":[{}],"dataDir":"{}"}}}}"#,
                self.bridge,
                ranges,
                self.data_dir.display()
            ),
            r#"{"type":"portmap","capabilities":{"portMappings":true}}"#.to_string(),
        ];
        plugins.extend(extra.iter().map(|p| p.to_string()));
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{}","plugins":[{}]}}"#,
            self.name,
            plugins.join(",")
        )
    }

    /// Writes the conflist into `conf_dir` as `10-<name>.conflist`.
    pub fn install(&self, conf_dir: &Path, extra: &[&str]) {
        std::fs::write(
            conf_dir.join(format!("10-{}.conflist", self.name)),
            self.conflist(extra),
        )
        .expect("write conflist");
    }

    /// Addresses host-local has handed out and not released.
    pub fn ip_files(&self) -> Vec<String> {
        let dir = self.data_dir.join(&self.name);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut ips: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        ips.sort();
        ips
    }

    /// Interfaces enslaved to the bridge (one veth per attached pod).
    pub fn veths(&self) -> usize {
        let (ok, out) = run("ip", &["-o", "link", "show", "master", &self.bridge]);
        if !ok {
            return 0; // no bridge yet
        }
        out.lines().filter(|l| !l.trim().is_empty()).count()
    }

    /// nat rules that mention this network (portmap comments name it).
    pub fn nat_rules(&self) -> usize {
        let (_, out) = run("iptables", &["-t", "nat", "-S"]);
        out.lines().filter(|l| l.contains(&self.name)).count()
    }
}

impl Default for TestNetwork {
    fn default() -> Self {
        TestNetwork::new()
    }
}

impl Drop for TestNetwork {
    /// Removes the bridge and the nat rules portmap left for this network (a daemon killed
    /// before CNI DEL leaves them): every rule that names the network, then the per-pod
    /// `CNI-DN-*` chains those rules jumped to.
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.bridge]);
        self.remove_nat_rules();
    }
}

impl TestNetwork {
    /// The nat chains portmap created for this network's pods (targets of rules naming it).
    pub fn nat_chains(&self) -> Vec<String> {
        let (_, out) = run("iptables", &["-t", "nat", "-S"]);
        let mut chains: Vec<String> = out
            .lines()
            .filter(|l| l.contains(&self.name))
            .filter_map(|l| {
                let args = iptables_args(l);
                let at = args.iter().position(|a| a == "-j")?;
                args.get(at + 1).cloned()
            })
            .filter(|c| c.starts_with("CNI-DN-"))
            .collect();
        chains.sort();
        chains.dedup();
        chains
    }

    fn remove_nat_rules(&self) {
        let chains = self.nat_chains();
        let (ok, out) = run("iptables", &["-t", "nat", "-S"]);
        if !ok {
            return;
        }
        for line in out.lines().filter(|l| l.contains(&self.name)) {
            let mut args = iptables_args(line);
            if args.first().map(String::as_str) != Some("-A") {
                continue;
            }
            args[0] = "-D".into();
            let mut argv = vec!["-t", "nat"];
            argv.extend(args.iter().map(String::as_str));
            let _ = run("iptables", &argv);
        }
        for chain in &chains {
            let _ = run("iptables", &["-t", "nat", "-F", chain]);
            let _ = run("iptables", &["-t", "nat", "-X", chain]);
        }
    }
}

/// Splits one `iptables -S` line into arguments: words, with double-quoted strings (their `\"`
/// and `\\` escaped) as one argument.
pub fn iptables_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    args.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        args.push(cur);
    }
    args
}

/// Mounts (namespace pins, shm) currently under `dir`.
pub fn mounts_under(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .count()
}

/// A chained CNI plugin whose ADD touches `<dir>/started`, then holds until `<dir>/release`
/// exists (at most 20 s): an RPC that stays in flight for as long as the test wants.
pub fn gate_plugin(dir: &Path) -> String {
    let script = format!(
        "#!/bin/sh\nset -e\ninput=$(cat)\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then\n\
           touch {dir}/started\n\
           i=0\n\
           while [ ! -e {dir}/release ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done\n\
           printf '%s' \"$input\" | jq -c .prevResult\n\
         fi\n",
        dir = dir.display()
    );
    let path = dir.join("crius-gate");
    std::fs::write(&path, script).expect("write the gate plugin");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the gate plugin executable");
    r#"{"type":"crius-gate"}"#.to_string()
}

#[cfg(test)]
mod tests {
    use super::iptables_args;

    #[test]
    fn iptables_args_keep_quoted_comments_whole() {
        let line = r#"-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"n-1\" id: \"ab\"" -m multiport --dports 8080 -j CNI-DN-0f1e"#;
        assert_eq!(
            iptables_args(line),
            [
                "-A",
                "CNI-HOSTPORT-DNAT",
                "-p",
                "tcp",
                "-m",
                "comment",
                "--comment",
                r#"dnat name: "n-1" id: "ab""#,
                "-m",
                "multiport",
                "--dports",
                "8080",
                "-j",
                "CNI-DN-0f1e"
            ]
        );
        assert_eq!(
            iptables_args(r#"-A X --comment """#),
            ["-A", "X", "--comment", ""]
        );
    }
}

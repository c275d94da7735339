//! The default CNI configuration shipped in `cni/conf/` (installed by `make run` when the host
//! has none): it must load with our own loader and name plugins the host actually has.

#![allow(clippy::unwrap_used)] // Tests fail by panicking.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const PLUGIN_DIR: &str = "/usr/lib/cni";

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf")
}

#[test]
fn shipped_conflist_loads_and_names_installed_plugins() {
    let scan = crius_cni::config::scan_dir(&conf_dir()).unwrap();
    assert!(scan.invalid.is_empty(), "{:?}", scan.invalid);
    assert_eq!(scan.networks.len(), 1, "{:?}", scan.networks);
    let net = crius_cni::config::default_network(&conf_dir(), "")
        .unwrap()
        .expect("a default network");
    assert_eq!(net.name, "crius");
    assert_eq!(net.cni_version, "1.0.0");
    assert_eq!(net.source.extension().unwrap(), "conflist");

    // bridge with host-local IPAM on CRI-O's default subnet, then portmap and loopback.
    assert_eq!(net.plugin_types(), ["bridge", "portmap", "loopback"]);
    let bridge = &net.plugins[0];
    assert_eq!(bridge["ipam"]["type"], "host-local");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
    assert_eq!(net.plugins[1]["capabilities"]["portMappings"], true);

    let mut wanted: Vec<&str> = net.plugin_types();
    wanted.push(bridge["ipam"]["type"].as_str().unwrap());
    for plugin in wanted {
        let path = Path::new(PLUGIN_DIR).join(plugin);
        let meta = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("plugin {plugin}: {}: {e}", path.display()));
        assert!(meta.is_file(), "{} is not a file", path.display());
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "{} is not executable",
            path.display()
        );
    }
}

#[test]
fn shipped_conflist_is_what_the_daemon_picks_by_name() {
    // `[network] default_network = "crius"` selects it; an unknown name selects nothing.
    let net = crius_cni::config::default_network(&conf_dir(), "crius").unwrap();
    assert_eq!(net.unwrap().plugin_types()[0], "bridge");
    assert!(crius_cni::config::default_network(&conf_dir(), "other")
        .unwrap()
        .is_none());
}

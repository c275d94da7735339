//! Pinned namespaces against the real kernel (root only).

#![allow(clippy::unwrap_used)] // Tests fail by panicking.

mod common;

use common::*;
use crius_cni::{create_pinned, interface_addrs, loopback_up, remove_pinned, NsKind};

#[test]
fn pinned_net_ipc_uts_with_hostname_and_loopback() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ns");
    let _guard = NsGuard(dir.clone());
    let pinned = create_pinned(
        &[NsKind::Net, NsKind::Ipc, NsKind::Uts],
        &dir,
        Some("pod-a"),
    )
    .unwrap();
    let net = pinned.net().unwrap();
    assert_eq!(net, dir.join("net"));
    for kind in [NsKind::Net, NsKind::Ipc, NsKind::Uts] {
        assert!(is_mounted(&dir.join(kind.name())), "{kind:?} not mounted");
    }

    // Only lo, and it is down until we bring it up.
    let links = must(
        "nsenter",
        &[&format!("--net={}", net.display()), "ip", "-o", "link"],
    );
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains(": lo:"), "{links}");

    let host = must(
        "nsenter",
        &[&format!("--uts={}", dir.join("uts").display()), "hostname"],
    );
    assert_eq!(host.trim(), "pod-a");
    let ours = must("hostname", &[]);
    assert_ne!(ours.trim(), "pod-a");

    assert_ne!(
        inode(&net),
        inode(std::path::Path::new("/proc/self/ns/net"))
    );
    assert_ne!(
        inode(&dir.join("ipc")),
        inode(std::path::Path::new("/proc/self/ns/ipc"))
    );
    assert_ne!(
        inode(&dir.join("uts")),
        inode(std::path::Path::new("/proc/self/ns/uts"))
    );
    // The thread that created them is gone; this thread did not move.
    assert_ne!(
        inode(&net),
        inode(std::path::Path::new("/proc/thread-self/ns/net"))
    );

    loopback_up(&net).unwrap();
    let lo = must(
        "nsenter",
        &[
            &format!("--net={}", net.display()),
            "ip",
            "-o",
            "link",
            "show",
            "lo",
        ],
    );
    assert!(lo.contains("UP"), "{lo}");
    let addrs = interface_addrs(&net, "lo").unwrap();
    assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
    assert!(interface_addrs(&net, "eth0").unwrap().is_empty());

    pinned.remove().unwrap();
    for kind in NsKind::ALL {
        let p = dir.join(kind.name());
        assert!(!p.exists(), "{} still exists", p.display());
        assert!(!is_mounted(&p), "{} still mounted", p.display());
    }
    // Idempotent.
    remove_pinned(&dir).unwrap();
    pinned.remove().unwrap();
}

#[test]
fn pinned_net_only_leaves_no_other_files() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ns");
    let _guard = NsGuard(dir.clone());
    let pinned = create_pinned(&[NsKind::Net], &dir, None).unwrap();
    assert_eq!(pinned.kinds(), &[NsKind::Net]);
    assert!(dir.join("net").exists());
    assert!(!dir.join("uts").exists() && !dir.join("ipc").exists());
    // A netns the test process can enter on a fresh thread without moving itself.
    let before = inode(std::path::Path::new("/proc/thread-self/ns/net"));
    let inside = crius_cni::in_netns(&dir.join("net"), || {
        inode(std::path::Path::new("/proc/thread-self/ns/net"))
    })
    .unwrap();
    assert_eq!(inside, inode(&dir.join("net")));
    assert_eq!(
        before,
        inode(std::path::Path::new("/proc/thread-self/ns/net"))
    );
    remove_pinned(&dir).unwrap();
    assert!(!dir.join("net").exists());
}

#[test]
fn addresses_are_filtered_by_interface_and_report_the_local_side() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ns");
    let _guard = NsGuard(dir.clone());
    let pinned = create_pinned(&[NsKind::Net], &dir, None).unwrap();
    let net = pinned.net().unwrap();
    let ip = |args: &[&str]| {
        let mut argv = vec![format!("--net={}", net.display()), "ip".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        must("nsenter", &argv)
    };
    // Two links in the pod's netns (they vanish with it): one plain address each, the second a
    // point-to-point one whose IFA_ADDRESS is the peer.
    ip(&["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
    ip(&["addr", "add", "10.251.0.1/24", "dev", "a0"]);
    ip(&["addr", "add", "10.251.0.9/24", "dev", "a0"]);
    ip(&[
        "addr",
        "add",
        "10.252.0.2",
        "peer",
        "10.252.0.3",
        "dev",
        "b0",
    ]);

    let a0 = interface_addrs(&net, "a0").unwrap();
    assert_eq!(
        a0,
        vec![
            "10.251.0.1".parse::<std::net::IpAddr>().unwrap(),
            "10.251.0.9".parse().unwrap()
        ]
    );
    let b0 = interface_addrs(&net, "b0").unwrap();
    assert_eq!(b0, vec!["10.252.0.2".parse::<std::net::IpAddr>().unwrap()]);
    // lo is down and was never given an address here: the others' addresses are not reported.
    let lo = interface_addrs(&net, "lo").unwrap();
    assert!(
        lo.iter().all(|a| !a.to_string().starts_with("10.25")),
        "{lo:?}"
    );
    assert!(interface_addrs(&net, "nosuch0").unwrap().is_empty());
    pinned.remove().unwrap();
}

//! CNI ADD results, normalized across spec versions (0.3.x, 0.4.0 and 1.0.0 share one shape;
//! 0.1.0/0.2.0 `ip4`/`ip6` results are lifted into it).
//!
//! Owns: parsing and the questions callers ask of a result (the pod's IPs). Must not: run
//! plugins, touch the disk or the network.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

/// A result that does not follow the CNI result format.
#[derive(Debug, thiserror::Error)]
#[error("invalid cni result: {0}")]
pub struct ResultError(pub String);

/// An address with its prefix length, e.g. `10.88.0.5/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for IpCidr {
    type Err = ResultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ResultError(format!("invalid cidr {s:?}"));
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(bad());
        }
        Ok(IpCidr { addr, prefix_len })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An interface the plugins created or configured; `sandbox` is the netns path when inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub sandbox: String,
}

/// One IP assignment; `interface` indexes [`CniResult::interfaces`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpCidr,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

/// One route inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpCidr,
    pub gw: Option<IpAddr>,
}

/// DNS settings a plugin asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// A normalized ADD result plus the exact JSON the last plugin printed.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The result as the plugin printed it; this is what `prevResult` carries.
    pub raw: Value,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireInterface {
    name: String,
    mac: String,
    sandbox: String,
}

#[derive(Deserialize)]
struct WireIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireDns {
    nameservers: Vec<String>,
    domain: Option<String>,
    search: Vec<String>,
    options: Vec<String>,
}

/// 0.1.0/0.2.0: `{"ip4": {"ip": "...", "gateway": "...", "routes": [...]}, "ip6": ..., "dns": ...}`.
#[derive(Deserialize)]
struct WireLegacyIp {
    ip: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<WireRoute>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireResult {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    interfaces: Vec<WireInterface>,
    ips: Vec<WireIp>,
    routes: Vec<WireRoute>,
    dns: WireDns,
    ip4: Option<WireLegacyIp>,
    ip6: Option<WireLegacyIp>,
}

fn parse_gw(gw: Option<String>) -> Result<Option<IpAddr>, ResultError> {
    match gw.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ResultError(format!("invalid gateway {s:?}"))),
    }
}

fn route(r: WireRoute) -> Result<Route, ResultError> {
    Ok(Route {
        dst: r.dst.parse()?,
        gw: parse_gw(r.gw)?,
    })
}

impl CniResult {
    /// Parses a result printed by a plugin.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ResultError> {
        let raw: Value =
            serde_json::from_slice(bytes).map_err(|e| ResultError(format!("not json: {e}")))?;
        Self::from_value(raw)
    }

    /// Parses a result already decoded as JSON.
    pub fn from_value(raw: Value) -> Result<Self, ResultError> {
        if !raw.is_object() {
            return Err(ResultError("not a json object".into()));
        }
        let wire: WireResult =
            serde_json::from_value(raw.clone()).map_err(|e| ResultError(e.to_string()))?;
        let mut ips = wire
            .ips
            .into_iter()
            .map(|ip| {
                Ok(IpConfig {
                    address: ip.address.parse()?,
                    gateway: parse_gw(ip.gateway)?,
                    interface: ip.interface,
                })
            })
            .collect::<Result<Vec<_>, ResultError>>()?;
        let mut routes = wire
            .routes
            .into_iter()
            .map(route)
            .collect::<Result<Vec<_>, _>>()?;
        for legacy in [wire.ip4, wire.ip6].into_iter().flatten() {
            ips.push(IpConfig {
                address: legacy.ip.parse()?,
                gateway: parse_gw(legacy.gateway)?,
                interface: None,
            });
            for r in legacy.routes {
                routes.push(route(r)?);
            }
        }
        Ok(CniResult {
            cni_version: wire.cni_version,
            interfaces: wire
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: i.mac,
                    sandbox: i.sandbox,
                })
                .collect(),
            ips,
            routes,
            dns: Dns {
                nameservers: wire.dns.nameservers,
                domain: wire.dns.domain.filter(|d| !d.is_empty()),
                search: wire.dns.search,
                options: wire.dns.options,
            },
            raw,
        })
    }

    /// The pod's IPs, IPv4 first: addresses on interfaces inside the sandbox (those with a
    /// `sandbox` path). When the result lists no sandbox interface at all (legacy or IPAM-only
    /// results), every address counts.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let in_sandbox = |ip: &IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|iface| !iface.sandbox.is_empty())
        };
        let any_sandbox = self.interfaces.iter().any(|i| !i.sandbox.is_empty());
        let mut out: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| !any_sandbox || in_sandbox(ip))
            .map(|ip| ip.address.addr)
            .collect();
        out.dedup();
        // Stable: keeps plugin order within each family.
        out.sort_by_key(|ip| ip.is_ipv6());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_result_with_host_and_sandbox_interfaces() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"1.0.0",
                "interfaces":[{"name":"cni0","mac":"aa"},{"name":"veth1","mac":"bb"},
                              {"name":"eth0","mac":"cc","sandbox":"/run/netns/x"}],
                "ips":[{"address":"fd00::5/64","interface":2},
                       {"address":"10.88.0.5/16","gateway":"10.88.0.1","interface":2},
                       {"address":"192.168.9.1/24","interface":0}],
                "routes":[{"dst":"0.0.0.0/0"}],
                "dns":{"nameservers":["10.0.0.10"],"search":["svc"]}}"#,
        )
        .unwrap();
        assert_eq!(
            r.pod_ips(),
            vec![
                "10.88.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(r.ips[1].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.ips[1].address.to_string(), "10.88.0.5/16");
        assert_eq!(r.routes[0].dst.prefix_len, 0);
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.interfaces[2].sandbox, "/run/netns/x");
        assert_eq!(r.dns.nameservers, vec!["10.0.0.10"]);
    }

    #[test]
    fn v040_result_with_version_field_parses() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/n"}],
                "ips":[{"version":"4","address":"10.1.0.2/24","gateway":"10.1.0.1","interface":0}],
                "dns":{}}"#,
        )
        .unwrap();
        assert_eq!(r.pod_ips(), vec!["10.1.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn legacy_ip4_result_is_lifted() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.2.0.3/16","gateway":"10.2.0.1",
                "routes":[{"dst":"0.0.0.0/0"}]}}"#,
        )
        .unwrap();
        assert_eq!(r.pod_ips(), vec!["10.2.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn bad_address_is_refused() {
        let err = CniResult::from_slice(br#"{"ips":[{"address":"10.0.0.1"}]}"#).unwrap_err();
        assert!(err.to_string().contains("10.0.0.1"), "{err}");
        assert!("10.0.0.1/33".parse::<IpCidr>().is_err());
        assert!(CniResult::from_slice(b"[]").is_err());
    }
}

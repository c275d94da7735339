//! Link state and interface addresses over rtnetlink (`NETLINK_ROUTE`), synchronously.
//!
//! A netlink socket belongs to the network namespace of the thread that created it, so every
//! function here opens its own socket and must be called on a thread that already joined the
//! target netns (`ns::in_netns`). Requests are one round trip each: `RTM_GETLINK` by name for the
//! index, `RTM_NEWLINK` with `IFF_UP` (acknowledged), `RTM_GETADDR` dumps.
//!
//! Owns: encoding requests and decoding replies. Must not: choose namespaces or threads (that is
//! `ns.rs`), nor keep sockets beyond one call.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// One rtnetlink socket in the calling thread's network namespace.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Lets the kernel filter address dumps by the header's interface index (Linux ≥ 4.20);
        // older kernels ignore the request and we filter below anyway.
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends `msg` with `flags` (besides `NLM_F_REQUEST`) and collects the replies until the
    /// kernel's ACK (for `NLM_F_ACK`), `NLMSG_DONE` (for dumps) or the single answer.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let multi = flags & (NLM_F_DUMP | NLM_F_ACK) != 0;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            if data.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "rtnetlink socket closed",
                ));
            }
            let mut offset = 0;
            while offset < data.len() {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&data[offset..]).map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {e}"))
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if reply.header.sequence_number != seq {
                    continue; // a stale reply to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !multi {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "rtnetlink: overrun",
                        ))
                    }
                    _ => {}
                }
            }
        }
    }

    /// The interface index of `ifname` (`RTM_GETLINK` by name); `None` when there is no such link.
    fn link_index(&mut self, ifname: &str) -> io::Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(ifname.to_string()));
        let replies = match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
            _ => None,
        }))
    }
}

fn check_name(ifname: &str) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains(['\0', '/']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        ));
    }
    Ok(())
}

/// Sets `IFF_UP` on `ifname` in the calling thread's network namespace (`RTM_NEWLINK`).
pub(crate) fn set_link_up(ifname: &str) -> io::Result<()> {
    check_name(ifname)?;
    let mut rtnl = Rtnl::open()?;
    let index = rtnl.link_index(ifname)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no interface {ifname:?}: {}",
                io::Error::from_raw_os_error(libc::ENODEV)
            ),
        )
    })?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    rtnl.request(RouteNetlinkMessage::NewLink(msg), NLM_F_ACK)?;
    Ok(())
}

/// The IPv4 and IPv6 addresses of `ifname` in the calling thread's network namespace, in the
/// kernel's order (IPv4 first); empty when there is no such interface.
pub(crate) fn interface_addrs(ifname: &str) -> io::Result<Vec<IpAddr>> {
    check_name(ifname)?;
    let mut rtnl = Rtnl::open()?;
    let Some(index) = rtnl.link_index(ifname)? else {
        return Ok(Vec::new());
    };
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    let replies = rtnl.request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => address_of(&a),
            _ => None,
        })
        .collect())
}

/// The local address of an `RTM_NEWADDR` message: `IFA_LOCAL` when present (IPv4; on a
/// point-to-point link `IFA_ADDRESS` is the peer), else `IFA_ADDRESS` (what `getifaddrs` reports).
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_are_refused_before_any_socket() {
        for name in ["", "a/b", "nul\0", "a-name-that-is-too-long"] {
            let err = interface_addrs(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
            assert!(set_link_up(name).is_err());
        }
    }

    #[test]
    fn local_address_wins_over_peer() {
        let mut msg = AddressMessage::default();
        msg.attributes
            .push(AddressAttribute::Address("10.0.0.2".parse().unwrap()));
        assert_eq!(address_of(&msg), Some("10.0.0.2".parse().unwrap()));
        msg.attributes
            .push(AddressAttribute::Local("10.0.0.1".parse().unwrap()));
        assert_eq!(address_of(&msg), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(address_of(&AddressMessage::default()), None);
    }
}

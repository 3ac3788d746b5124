//! A LAN: a Linux bridge in a namespace of its own, which other namespaces (nodes, an outside
//! client) join through veth pairs, like hosts plugged into one switch.

use std::net::Ipv4Addr;

use crate::{netns::NetNs, Result};

/// Name of the bridge inside the LAN namespace.
const BRIDGE: &str = "br0";

/// The bridge's namespace; deleting it (on drop) unplugs every member.
#[derive(Debug)]
pub struct Lan {
    ports: usize,
    netns: NetNs,
}

impl Lan {
    /// Creates the namespace `<id>-lan` with the bridge up.
    pub fn new(id: &str) -> Result<Lan> {
        let netns = NetNs::create(&format!("{id}-lan"))?;
        netns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        netns.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(Lan { ports: 0, netns })
    }

    /// Plugs `member` in: a veth pair whose member end is `iface` with `addr`/`prefix`, up,
    /// and whose other end is a bridge port.
    pub fn join(&mut self, member: &NetNs, iface: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let port = format!("port{}", self.ports);
        self.ports += 1;
        self.netns.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            iface,
            "netns",
            member.name(),
        ])?;
        self.netns.ip(&["link", "set", &port, "master", BRIDGE])?;
        self.netns.ip(&["link", "set", &port, "up"])?;
        member.ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", iface])?;
        member.ip(&["link", "set", iface, "up"])?;
        Ok(())
    }
}

//! A stream of the node's links: every existing link once (a dump), then every change.

use std::collections::VecDeque;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, TokioSocket};
use tracing::{debug, warn};

use super::NetlinkError;

/// rtnetlink multicast group of link changes (`RTNLGRP_LINK`).
const RTNLGRP_LINK: u32 = 1;

/// A network interface as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Whether it is a bridge (never pod-facing: its ports are).
    pub is_bridge: bool,
    /// Whether its packets carry an Ethernet header (veths, VXLAN and Geneve devices; not
    /// `lo` or layer-3 tunnels such as IPIP and WireGuard).
    pub is_ethernet: bool,
}

/// What happened to a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link exists: seen in the dump, created, or changed (renamed, up, down).
    Present(Link),
    /// The link was deleted.
    Gone(Link),
    /// Every link that existed when the watch (re)started has been reported.
    DumpDone,
}

/// Watches the links of the current network namespace.
///
/// It subscribes to link changes before it asks for the dump, so no link is missed; a link
/// can be reported twice, so consumers treat [`LinkEvent::Present`] as idempotent. When the
/// kernel drops notifications (the socket buffer overflowed) it dumps again.
pub struct LinkWatcher {
    socket: TokioSocket,
    queued: VecDeque<LinkEvent>,
}

impl LinkWatcher {
    /// Subscribes to link changes and requests the dump of the existing links.
    pub fn start() -> Result<LinkWatcher, NetlinkError> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        let raw = socket.socket_mut();
        raw.bind_auto().map_err(NetlinkError::Socket)?;
        raw.add_membership(RTNLGRP_LINK)
            .map_err(NetlinkError::Socket)?;
        let watcher = LinkWatcher {
            socket,
            queued: VecDeque::new(),
        };
        watcher.request_dump()?;
        Ok(watcher)
    }

    /// The next link event.
    pub async fn next(&mut self) -> Result<LinkEvent, NetlinkError> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Ok(event);
            }
            match self.socket.recv_from_full().await {
                Ok((bytes, _)) => self.parse(&bytes)?,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    warn!("missed link notifications (socket buffer full): listing links again");
                    self.request_dump()?;
                }
                Err(e) => return Err(NetlinkError::Receive(e)),
            }
        }
    }

    fn request_dump(&self) -> Result<(), NetlinkError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let bytes = serialize(NetlinkMessage::new(header, NetlinkPayload::from(request)));
        // A netlink send on a fresh socket does not block.
        self.socket
            .socket_ref()
            .send(&bytes, 0)
            .map(drop)
            .map_err(NetlinkError::Send)
    }

    /// Queues the events of every message in one datagram.
    fn parse(&mut self, mut bytes: &[u8]) -> Result<(), NetlinkError> {
        while !bytes.is_empty() {
            let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                Ok(message) => message,
                Err(e) => {
                    debug!("skipping an rtnetlink datagram that does not parse: {e}");
                    return Ok(());
                }
            };
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    self.queued.extend(describe(&link).map(LinkEvent::Present));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    self.queued.extend(describe(&link).map(LinkEvent::Gone));
                }
                NetlinkPayload::Done(_) => self.queued.push_back(LinkEvent::DumpDone),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(NetlinkError::Kernel(std::io::Error::from_raw_os_error(
                            -code.get(),
                        )));
                    }
                }
                _ => {}
            }
            if length == 0 || length > bytes.len() {
                break;
            }
            bytes = &bytes[length..];
        }
        Ok(())
    }
}

/// A serialized rtnetlink request.
pub(super) fn serialize(mut message: NetlinkMessage<RouteNetlinkMessage>) -> Vec<u8> {
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// The link's index, name, whether it is a bridge and whether it is Ethernet; `None` without
/// a name.
fn describe(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut is_bridge = false;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                is_bridge |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    Some(Link {
        index: message.header.index,
        name: name?,
        is_bridge,
        is_ethernet: message.header.link_layer_type == LinkLayerType::Ether,
    })
}

//! The interface of the node's IPv4 default route: the external interface that gets XDP.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use super::watch::serialize;
use super::NetlinkError;

/// The name of the interface the main table's IPv4 default route leaves through, if there is
/// such a route.
pub fn default_route_iface() -> Result<Option<String>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet;
    let request = RouteNetlinkMessage::GetRoute(request);
    let bytes = serialize(NetlinkMessage::new(header, NetlinkPayload::from(request)));
    socket.send(&bytes, 0).map_err(NetlinkError::Send)?;

    let mut found = None;
    loop {
        let (datagram, _) = socket.recv_from_full().map_err(NetlinkError::Receive)?;
        let mut bytes = &datagram[..];
        while !bytes.is_empty() {
            let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
                break;
            };
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route))
                    if found.is_none() =>
                {
                    found = default_route_oif(&route);
                }
                NetlinkPayload::Done(_) => return Ok(found.and_then(iface_name)),
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
    }
}

/// The outgoing interface index of an IPv4 default route in the main table.
fn default_route_oif(route: &RouteMessage) -> Option<u32> {
    let main = u32::from(RouteHeader::RT_TABLE_MAIN);
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    if route.header.address_family != AddressFamily::Inet
        || route.header.destination_prefix_length != 0
        || table != main
    {
        return None;
    }
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

fn iface_name(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

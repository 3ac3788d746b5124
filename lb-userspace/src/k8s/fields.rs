//! Field checks shared by the object validators; each error names the field's path.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString};

use crate::model::Protocol;
use crate::objects::FieldError;

/// Namespace and name of an object; the namespace defaults to "default", as with kubectl.
pub fn object_name(metadata: &ObjectMeta) -> Result<(String, String), FieldError> {
    let name = metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FieldError::new("metadata.name", "missing"))?;
    let namespace = metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    Ok((namespace, name))
}

pub(super) fn port_number(port: i32, path: &str) -> Result<u16, FieldError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(path, format!("{port} is not a port (1..=65535)")))
}

/// Checks a Service port's `targetPort`: a port number, or the name of the endpoints' port
/// (an IANA_SVC_NAME). 0 and "" count as unset, as the API server defaults them to `port`.
/// The number itself is not programmed: the EndpointSlices carry the resolved ports.
pub(super) fn check_target_port(
    target: Option<&IntOrString>,
    path: &str,
) -> Result<(), FieldError> {
    match target {
        None | Some(IntOrString::Int(0)) => Ok(()),
        Some(IntOrString::Int(port)) => port_number(*port, path).map(drop),
        Some(IntOrString::String(name)) if name.is_empty() || is_port_name(name) => Ok(()),
        Some(IntOrString::String(name)) => Err(FieldError::new(
            path,
            format!(
                "{name:?} is not a port name (IANA_SVC_NAME: at most 15 lowercase letters, \
                 digits and '-', at least one letter, no '-' at either end or next to another)"
            ),
        )),
    }
}

/// Whether `name` is an IANA_SVC_NAME (RFC 6335), as Kubernetes' `IsValidPortName` checks.
fn is_port_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    (1..=15).contains(&name.len())
        && name.chars().all(allowed)
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// The protocol of a port (TCP when unset).
pub(super) fn protocol(protocol: Option<&str>, path: &str) -> Result<Protocol, FieldError> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(FieldError::new(
            path,
            format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

pub(super) fn parse_ip(text: &str, path: &str) -> Result<IpAddr, FieldError> {
    text.parse()
        .map_err(|_| FieldError::new(path, format!("{text:?} is not an IP address")))
}

/// Parses a list of addresses, naming `path[i]` for a bad one.
pub(super) fn parse_ips(list: Option<&[String]>, path: &str) -> Result<Vec<IpAddr>, FieldError> {
    list.unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, ip)| parse_ip(ip, &format!("{path}[{i}]")))
        .collect()
}

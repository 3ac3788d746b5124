//! The example Service in `manifests/examples/` (used by `cargo xtask demo` and the e2e
//! tests): its addresses and ports, and its EndpointSlice for any subset of the backends of
//! [`Topology::client_and_backends`](crate::topology::Topology::client_and_backends).

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
};

use crate::{
    error::io_context,
    servers::Server,
    topology::{backend_addr, backend_name, Topology},
    Result,
};

/// The Service's ClusterIP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// The Service's TCP port and the port the backends' TCP servers listen on.
pub const TCP_PORT: u16 = 80;
pub const TCP_TARGET_PORT: u16 = 8080;
/// The Service's UDP port and the port the backends' UDP servers listen on.
pub const UDP_PORT: u16 = 53;
pub const UDP_TARGET_PORT: u16 = 8053;
/// Number of backends in the example EndpointSlice.
pub const BACKENDS: usize = 3;
/// File names in the manifests directory.
pub const SERVICE_FILE: &str = "service.yaml";
pub const ENDPOINTSLICE_FILE: &str = "endpointslice.yaml";
/// `default/demo6` and its EndpointSlice: the same ports over IPv6, served by the backends'
/// IPv6 addresses ([`crate::topology::ipv6_of`]). Only the demo reads it.
pub const IPV6_FILE: &str = "service-ipv6.yaml";
/// `default/demo6`'s ClusterIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x53, 0, 0, 0, 0x10);

/// The cluster IP of [`EMPTY_SERVICE`].
pub const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
/// `default/empty`, a ClusterIP Service (TCP 80 -> 8080) whose selector matches no pod: no
/// endpoints, so kube-proxy rejects its connections.
pub const EMPTY_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: empty
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 198.19.0.20
  clusterIPs: [198.19.0.20]
  ipFamilies: [IPv4]
  selector: {app: nothing}
  ports:
    - name: web
      protocol: TCP
      port: 80
      targetPort: 8080
";

/// The TCP frontend.
pub fn tcp_vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, TCP_PORT)
}

/// The UDP frontend.
pub fn udp_vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, UDP_PORT)
}

/// The IPv6 Service's frontend for `port`.
pub fn vip6(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(VIP6, port, 0, 0)
}

/// `manifests/examples` in the source tree.
pub fn manifests_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    fs::canonicalize(&dir).unwrap_or(dir)
}

/// Copies the example manifests into `dir` (to edit them in a test).
pub fn copy_manifests(dir: &Path) -> Result<()> {
    for file in [SERVICE_FILE, ENDPOINTSLICE_FILE] {
        let (from, to) = (manifests_dir().join(file), dir.join(file));
        fs::copy(&from, &to).map_err(io_context(format!(
            "cannot copy {} to {}",
            from.display(),
            to.display()
        )))?;
    }
    Ok(())
}

/// Starts a TCP server on [`TCP_TARGET_PORT`] in each backend pod of
/// [`Topology::client_and_backends`]`(BACKENDS)`; they stop when dropped.
pub fn tcp_backends(topology: &Topology) -> Result<Vec<Server>> {
    (0..BACKENDS)
        .map(|i| {
            let pod = topology.pod(&backend_name(i));
            Server::tcp(
                &pod.netns,
                SocketAddrV4::new(pod.addr, TCP_TARGET_PORT),
                &pod.name,
            )
        })
        .collect()
}

/// Replaces `dir/file` with `contents` in one step (a hidden temporary file renamed over it),
/// so a reader never sees a half-written manifest.
pub fn replace_manifest(dir: &Path, file: &str, contents: &str) -> Result<()> {
    let (temporary, path) = (dir.join(format!(".{file}.tmp")), dir.join(file));
    fs::write(&temporary, contents)
        .and_then(|()| fs::rename(&temporary, &path))
        .map_err(io_context(format!("cannot replace {}", path.display())))
}

/// The example EndpointSlice listing only the backends with the given indexes (all of them
/// for `0..BACKENDS` gives the example file's content, without its comment).
pub fn endpointslice_yaml(backends: &[usize]) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: demo-abc12\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: demo\naddressType: IPv4\n\
         ports:\n  - name: http\n    protocol: TCP\n    port: {TCP_TARGET_PORT}\n  - name: dns\n    \
         protocol: UDP\n    port: {UDP_TARGET_PORT}\nendpoints:\n"
    );
    if backends.is_empty() {
        yaml.truncate(yaml.len() - 1);
        yaml.push_str(" []\n");
    }
    for &i in backends {
        let _ = write!(
            yaml,
            "  - addresses:\n      - {}\n    conditions:\n      ready: true\n    targetRef:\n      \
             kind: Pod\n      namespace: default\n      name: {}\n",
            backend_addr(i),
            backend_name(i)
        );
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn without_comments(text: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn generated_endpointslice_matches_the_example_file() {
        let file = std::fs::read_to_string(manifests_dir().join(ENDPOINTSLICE_FILE)).unwrap();
        assert_eq!(without_comments(&file), endpointslice_yaml(&[0, 1, 2]));
        let one = endpointslice_yaml(&[1]);
        assert!(
            one.contains("198.18.0.12") && !one.contains("198.18.0.11"),
            "{one}"
        );
        assert!(endpointslice_yaml(&[]).ends_with("endpoints: []\n"));
    }

    #[test]
    fn the_ipv6_example_serves_the_backends_ipv6_addresses() {
        let file = std::fs::read_to_string(manifests_dir().join(IPV6_FILE)).unwrap();
        assert!(file.contains(&format!("clusterIP: \"{VIP6}\"\n")), "{file}");
        for i in 0..BACKENDS {
            let addr = crate::topology::ipv6_of(backend_addr(i));
            assert!(
                file.contains(&format!("- \"{addr}\"\n")),
                "{addr} not in {file}"
            );
        }
    }

    #[test]
    fn constants_match_the_example_service() {
        let file = std::fs::read_to_string(manifests_dir().join(SERVICE_FILE)).unwrap();
        for expected in [
            format!("clusterIP: {VIP}\n"),
            format!("protocol: TCP\n      port: {TCP_PORT}\n      targetPort: {TCP_TARGET_PORT}\n"),
            format!("protocol: UDP\n      port: {UDP_PORT}\n      targetPort: {UDP_TARGET_PORT}\n"),
        ] {
            assert!(
                file.contains(&expected),
                "{expected:?} not in {SERVICE_FILE}"
            );
        }
    }
}

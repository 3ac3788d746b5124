//! kube-proxy-style NAT rules for the services the eBPF variant programs, so the baselines
//! translate exactly the same traffic.
//!
//! - [`iptables_restore`]: kube-proxy's iptables mode, an `iptables-restore` input for the nat
//!   table: `KUBE-SERVICES` matches every service in turn, `KUBE-SVC-*` picks an endpoint with
//!   `statistic --mode random`, `KUBE-SEP-*` DNATs to it.
//! - [`nft_sync`] and [`nft_endpoint_change`]: kube-proxy's nftables mode, as the `nft -f`
//!   transactions its knftables library writes: one verdict map on
//!   `daddr . l4proto . dport` -> per-service chain choosing an endpoint chain with
//!   `numgen random`, and small incremental transactions for changes.
//!
//! Only the NAT path is modelled (no filter-table chains, no masquerading in POSTROUTING): the
//! per-packet work of a ClusterIP connection from a pod. Pods are inside [`CLUSTER_CIDR`], so
//! their traffic is not marked for masquerading, as in a cluster.

use std::{fmt::Write as _, net::SocketAddrV4};

/// The pod network of the benchmark's node (kube-proxy's `--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "198.18.0.0/17";
/// The nftables table kube-proxy owns.
pub const NFT_TABLE: &str = "ip kube-proxy";

/// One TCP ClusterIP service port and its endpoints, as the rule generators see it. Its
/// position in the slice passed to a generator is its index (used in names and comments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeService {
    pub vip: SocketAddrV4,
    pub endpoints: Vec<SocketAddrV4>,
}

/// The `iptables-restore` input that replaces the whole nat table with kube-proxy's chains for
/// `services` (kube-proxy's full sync). Services are matched in slice order.
pub fn iptables_restore(services: &[KubeService]) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    for (index, service) in services.iter().enumerate() {
        append_iptables_service(&mut chains, &mut rules, index, service);
    }
    chains + &rules + "COMMIT\n"
}

fn append_iptables_service(
    chains: &mut String,
    rules: &mut String,
    index: usize,
    service: &KubeService,
) {
    let name = port_name(index);
    let svc_chain = format!("KUBE-SVC-{index:016X}");
    let (vip, port) = (service.vip.ip(), service.vip.port());
    let matches = format!(
        "-d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port}"
    );
    // `writeln!` into a String cannot fail.
    let _ = writeln!(chains, ":{svc_chain} - [0:0]");
    let _ = writeln!(rules, "-A KUBE-SERVICES {matches} -j {svc_chain}");
    let _ = writeln!(
        rules,
        "-A {svc_chain} ! -s {CLUSTER_CIDR} {matches} -j KUBE-MARK-MASQ"
    );
    let count = service.endpoints.len();
    for (position, endpoint) in service.endpoints.iter().enumerate() {
        let sep_chain = sep_chain(index, endpoint);
        let _ = writeln!(chains, ":{sep_chain} - [0:0]");
        let comment = format!("-m comment --comment \"{name} -> {endpoint}\"");
        let remaining = count - position;
        if remaining > 1 {
            let probability = 1.0 / remaining as f64;
            let _ = writeln!(
                rules,
                "-A {svc_chain} {comment} -m statistic --mode random --probability {probability:.11} -j {sep_chain}"
            );
        } else {
            let _ = writeln!(rules, "-A {svc_chain} {comment} -j {sep_chain}");
        }
        let ip = endpoint.ip();
        let _ = writeln!(
            rules,
            "-A {sep_chain} -s {ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            rules,
            "-A {sep_chain} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {endpoint}"
        );
    }
}

/// kube-proxy's `namespace/name:port` of service `index`.
fn port_name(index: usize) -> String {
    format!("bench/svc-{index}:http")
}

/// `KUBE-SEP-` and 16 hex digits derived from the service and endpoint, as kube-proxy names
/// endpoint chains by a hash (so a changed endpoint gets a new chain).
fn sep_chain(index: usize, endpoint: &SocketAddrV4) -> String {
    // FNV-1a over the service index and the endpoint's bytes.
    let bytes = (index as u64)
        .to_be_bytes()
        .into_iter()
        .chain(endpoint.ip().octets())
        .chain(endpoint.port().to_be_bytes());
    let hash = bytes.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("KUBE-SEP-{hash:016X}")
}

/// kube-proxy's full nftables sync for `services` as `nft -f` transactions of at most
/// `services_per_transaction` services each; the first one also creates the table, its base
/// chains and the service map. kube-proxy sends one transaction; splitting keeps the kernel's
/// per-transaction cost of binding anonymous verdict maps (linear in the transaction's length
/// for each map) from growing quadratically.
pub fn nft_sync(services: &[KubeService], services_per_transaction: usize) -> Vec<String> {
    let per_transaction = services_per_transaction.max(1);
    let mut transactions = vec![nft_skeleton()];
    for (chunk_index, chunk) in services.chunks(per_transaction).enumerate() {
        if chunk_index > 0 {
            transactions.push(String::new());
        }
        let script = transactions.last_mut().expect("one transaction exists");
        for (offset, service) in chunk.iter().enumerate() {
            append_nft_service(script, chunk_index * per_transaction + offset, service);
        }
    }
    transactions
}

/// The table, kube-proxy's fixed chains and the service map.
fn nft_skeleton() -> String {
    let t = NFT_TABLE;
    format!(
        "add table {t}\n\
         add chain {t} mark-for-masquerade\n\
         add rule {t} mark-for-masquerade mark set mark or 0x4000\n\
         add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}\n\
         add chain {t} services\n\
         add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}\n\
         add rule {t} nat-prerouting jump services\n\
         add chain {t} nat-output {{ type nat hook output priority -100 ; }}\n\
         add rule {t} nat-output jump services\n"
    )
}

fn append_nft_service(script: &mut String, index: usize, service: &KubeService) {
    for endpoint in &service.endpoints {
        append_nft_endpoint(script, index, endpoint);
    }
    let chain = nft_service_chain(index);
    let _ = writeln!(script, "add chain {NFT_TABLE} {chain}");
    append_nft_service_rules(script, index, service);
    let (vip, port) = (service.vip.ip(), service.vip.port());
    let _ = writeln!(
        script,
        "add element {NFT_TABLE} service-ips {{ {vip} . tcp . {port} : goto {chain} }}"
    );
}

fn append_nft_endpoint(script: &mut String, index: usize, endpoint: &SocketAddrV4) {
    let chain = nft_endpoint_chain(index, endpoint);
    let t = NFT_TABLE;
    let ip = endpoint.ip();
    let _ = write!(
        script,
        "add chain {t} {chain}\n\
         add rule {t} {chain} ip saddr {ip} jump mark-for-masquerade\n\
         add rule {t} {chain} meta l4proto tcp dnat to {endpoint}\n"
    );
}

/// The service chain's rules: mark traffic from outside the cluster, then pick an endpoint.
fn append_nft_service_rules(script: &mut String, index: usize, service: &KubeService) {
    let chain = nft_service_chain(index);
    let (vip, port) = (service.vip.ip(), service.vip.port());
    let t = NFT_TABLE;
    let _ = writeln!(
        script,
        "add rule {t} {chain} ip daddr {vip} tcp dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
    );
    if service.endpoints.is_empty() {
        return;
    }
    let arms: Vec<String> = service
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, endpoint)| format!("{i} : goto {}", nft_endpoint_chain(index, endpoint)))
        .collect();
    let _ = writeln!(
        script,
        "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
        arms.len(),
        arms.join(", ")
    );
}

/// The incremental transaction kube-proxy's nftables mode sends when service `index`'s
/// endpoints change from `before` to `after`: new endpoint chains, the service chain rewritten,
/// then the chains of removed endpoints deleted.
pub fn nft_endpoint_change(index: usize, before: &KubeService, after: &KubeService) -> String {
    let mut script = String::new();
    for endpoint in after
        .endpoints
        .iter()
        .filter(|e| !before.endpoints.contains(e))
    {
        append_nft_endpoint(&mut script, index, endpoint);
    }
    let _ = writeln!(
        script,
        "flush chain {NFT_TABLE} {}",
        nft_service_chain(index)
    );
    append_nft_service_rules(&mut script, index, after);
    for endpoint in before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
    {
        let chain = nft_endpoint_chain(index, endpoint);
        let _ = write!(
            script,
            "flush chain {NFT_TABLE} {chain}\ndelete chain {NFT_TABLE} {chain}\n"
        );
    }
    script
}

/// kube-proxy's service chain name: `service-<hash>-<namespace>/<name>/<protocol>/<port>`.
fn nft_service_chain(index: usize) -> String {
    format!("service-{index:08X}-bench/svc-{index}/tcp/http")
}

/// kube-proxy's endpoint chain name: the service chain's suffix and `__<ip>/<port>`.
fn nft_endpoint_chain(index: usize, endpoint: &SocketAddrV4) -> String {
    format!(
        "endpoint-{index:08X}-bench/svc-{index}/tcp/http__{}/{}",
        endpoint.ip(),
        endpoint.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bench::exec, netns::NetNs};

    fn service(index: u8, endpoints: u8) -> KubeService {
        KubeService {
            vip: SocketAddrV4::new([198, 19, 0, index].into(), 80),
            endpoints: (0..endpoints)
                .map(|e| SocketAddrV4::new([198, 18, index, 10 + e].into(), 8080))
                .collect(),
        }
    }

    fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn iptables_matches_services_in_order_and_picks_endpoints_uniformly() {
        let services = [service(1, 3), service(2, 1)];
        let text = iptables_restore(&services);
        assert!(
            text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
            "{text}"
        );
        let portals = lines_starting(&text, "-A KUBE-SERVICES ");
        assert_eq!(portals.len(), 2);
        assert!(portals[0].contains("-d 198.19.0.1/32") && portals[0].contains("--dport 80"));
        assert!(portals[1].ends_with("-j KUBE-SVC-0000000000000001"));
        let svc0 = lines_starting(&text, "-A KUBE-SVC-0000000000000000 ");
        assert_eq!(svc0.len(), 4, "masquerade mark + one rule per endpoint");
        assert!(svc0[0].contains(&format!("! -s {CLUSTER_CIDR}")));
        assert!(svc0[1].contains("--probability 0.33333333333"));
        assert!(svc0[2].contains("--probability 0.50000000000"));
        assert!(!svc0[3].contains("statistic"));
        let dnats: Vec<&str> = text.lines().filter(|l| l.contains("-j DNAT")).collect();
        assert_eq!(dnats.len(), 4);
        assert!(dnats[0].ends_with("--to-destination 198.18.1.10:8080"));
        // Every chain jumped to is declared exactly once.
        for line in text.lines().filter(|l| l.starts_with("-A ")) {
            let target = line
                .rsplit("-j ")
                .next()
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            if target.starts_with("KUBE-") {
                assert_eq!(
                    lines_starting(&text, &format!(":{target} ")).len(),
                    1,
                    "{target}"
                );
            }
        }
    }

    #[test]
    fn endpoint_chains_are_named_by_service_and_endpoint() {
        let a = service(1, 2);
        assert_ne!(sep_chain(0, &a.endpoints[0]), sep_chain(0, &a.endpoints[1]));
        assert_ne!(sep_chain(0, &a.endpoints[0]), sep_chain(1, &a.endpoints[0]));
        assert_eq!(sep_chain(7, &a.endpoints[0]).len(), "KUBE-SEP-".len() + 16);
    }

    #[test]
    fn nft_sync_splits_services_into_transactions_after_the_skeleton() {
        let services: Vec<KubeService> = (1..=5).map(|i| service(i, 3)).collect();
        let transactions = nft_sync(&services, 2);
        assert_eq!(transactions.len(), 3);
        assert!(transactions[0].starts_with("add table ip kube-proxy\n"));
        for t in &transactions[1..] {
            assert!(!t.contains("add table"), "{t}");
        }
        let all = transactions.concat();
        let elements = lines_starting(&all, "add element ip kube-proxy service-ips");
        assert_eq!(elements.len(), 5);
        assert!(elements[4].contains("198.19.0.5 . tcp . 80 : goto service-00000004-"));
        assert_eq!(
            lines_starting(&all, "add chain ip kube-proxy endpoint-").len(),
            15
        );
        let pick = lines_starting(&all, "add rule ip kube-proxy service-00000000-");
        assert_eq!(pick.len(), 2);
        assert!(pick[1].contains("numgen random mod 3 vmap { 0 : goto endpoint-00000000-"));
        // Chains are created before anything refers to them, in the same transaction.
        for t in &transactions {
            for line in t.lines() {
                for target in line.split("goto ").skip(1) {
                    let chain = target.split([' ', ',']).next().unwrap();
                    let created = t.find(&format!("add chain ip kube-proxy {chain}\n"));
                    assert!(
                        created.is_some_and(|at| at < t.find(line).unwrap()),
                        "{chain}"
                    );
                }
            }
        }
    }

    #[test]
    fn nft_endpoint_change_adds_rewrites_then_deletes() {
        let before = service(9, 3);
        let mut after = before.clone();
        after.endpoints[1] = SocketAddrV4::new([198, 18, 99, 1].into(), 8080);
        let script = nft_endpoint_change(8, &before, &after);
        let lines: Vec<&str> = script.lines().collect();
        assert!(lines[0].starts_with("add chain ip kube-proxy endpoint-00000008-"));
        assert!(lines[0].ends_with("__198.18.99.1/8080"));
        let flush_service = lines
            .iter()
            .position(|l| l.starts_with("flush chain ip kube-proxy service-00000008-"))
            .unwrap();
        assert_eq!(flush_service, 3);
        assert!(lines[flush_service + 2].contains("198.18.99.1/8080"));
        assert!(lines.last().unwrap().starts_with("delete chain"));
        assert!(lines.last().unwrap().ends_with("__198.18.9.11/8080"));
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn both_rule_sets_load_in_a_namespace() {
        crate::require_root!();
        let netns = NetNs::create(&format!("{}-rules", crate::netns::unique_prefix())).unwrap();
        let services: Vec<KubeService> = (1..=4).map(|i| service(i, 3)).collect();
        exec::run_in(
            &netns,
            "iptables-restore",
            &[],
            &iptables_restore(&services),
        )
        .unwrap();
        for transaction in nft_sync(&services, 3) {
            exec::run_in(&netns, "nft", &["-f", "-"], &transaction).unwrap();
        }
        let mut changed = services[3].clone();
        changed.endpoints[0] = SocketAddrV4::new([198, 18, 99, 1].into(), 8080);
        let change = nft_endpoint_change(3, &services[3], &changed);
        exec::run_in(&netns, "nft", &["-f", "-"], &change).unwrap();
        let (listed, _) = exec::output_in(
            &netns,
            "nft",
            &["list", "chain", "ip", "kube-proxy", &nft_service_chain(3)],
        )
        .unwrap();
        assert!(listed.contains("__198.18.99.1/8080"), "{listed}");
        let (saved, _) = exec::output_in(&netns, "iptables-save", &["-t", "nat"]).unwrap();
        assert_eq!(
            lines_starting(&saved, "-A KUBE-SERVICES ").len(),
            4,
            "{saved}"
        );
        assert_eq!(saved.matches("-j DNAT").count(), 12);
    }
}

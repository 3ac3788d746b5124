//! Every rejected field is named in the error.

use super::*;

#[test]
fn invalid_service_fields_are_named() {
    let cases = [
        (
            "port: 9090",
            "port: 70000",
            "spec.ports[1].port: 70000 is not a port (1..=65535)",
        ),
        (
            "port: 9090",
            "port: 0",
            "spec.ports[1].port: 0 is not a port (1..=65535)",
        ),
        (
            "protocol: UDP",
            "protocol: QUIC",
            r#"spec.ports[2].protocol: unknown protocol "QUIC" (expected TCP, UDP or SCTP)"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIPs: [198.19.0.10, 198.19.0.300]",
            r#"spec.clusterIPs[1]: "198.19.0.300" is not an IP address"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: web.local",
            r#"spec.clusterIP: "web.local" is not an IP address"#,
        ),
        (
            "{name: web, namespace: shop}",
            "{namespace: shop}",
            "metadata.name: missing",
        ),
        (
            "{name: dns, port: 53, protocol: UDP}",
            "{name: dns, port: 9090}",
            "spec.ports[2]: duplicate port 9090/TCP (also spec.ports[1])",
        ),
        (
            "clusterIP: 198.19.0.10",
            "type: Magic\n  clusterIP: 198.19.0.10",
            r#"spec.type: unknown service type "Magic""#,
        ),
        (
            "port: 9090, protocol: TCP}",
            "port: 9090, protocol: TCP, nodePort: 70000}",
            "spec.ports[1].nodePort: 70000 is not a port (1..=65535)",
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: 198.19.0.10\n  externalIPs: [198.18.8.1, 198.18.8]",
            r#"spec.externalIPs[1]: "198.18.8" is not an IP address"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: 198.19.0.10\n  externalTrafficPolicy: Nearby",
            r#"spec.externalTrafficPolicy: unknown traffic policy "Nearby" (expected Cluster or Local)"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: 198.19.0.10\n  internalTrafficPolicy: local",
            r#"spec.internalTrafficPolicy: unknown traffic policy "local" (expected Cluster or Local)"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: 198.19.0.10\n  sessionAffinity: Cookie",
            r#"spec.sessionAffinity: unknown session affinity "Cookie" (expected None or ClientIP)"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: 198.19.0.10\n  sessionAffinity: ClientIP\n  \
             sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range (1..=86400)",
        ),
        (
            "{name: web, namespace: shop}",
            "{name: web, namespace: shop, annotations: {lb-agent/lb-algorithm: ring}}",
            r#"metadata.annotations[lb-agent/lb-algorithm]: unknown algorithm "ring" (expected random or maglev)"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: 198.19.0.10\n  healthCheckNodePort: 65536",
            "spec.healthCheckNodePort: 65536 is not a port (1..=65535)",
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: 198.19.0.10\n  healthCheckNodePort: -1",
            "spec.healthCheckNodePort: -1 is not a port (1..=65535)",
        ),
        (
            "targetPort: 8080",
            "targetPort: 70000",
            "spec.ports[0].targetPort: 70000 is not a port (1..=65535)",
        ),
        (
            "targetPort: 8080",
            "targetPort: -8080",
            "spec.ports[0].targetPort: -8080 is not a port (1..=65535)",
        ),
        (
            "targetPort: 8080",
            "targetPort: Http_Alt",
            "spec.ports[0].targetPort: \"Http_Alt\" is not a port name (IANA_SVC_NAME: at most \
             15 lowercase letters, digits and '-', at least one letter, no '-' at either end or \
             next to another)",
        ),
    ];
    for (from, to, expected) in cases {
        let yaml = WEB.replace(from, to);
        assert_eq!(service(&yaml).unwrap_err(), expected, "{yaml}");
    }
}

#[test]
fn invalid_slice_fields_are_named() {
    let cases = [
        (
            "port: 9091",
            "port: 65536",
            "ports[0].port: 65536 is not a port (1..=65535)",
        ),
        (
            "protocol: UDP",
            "protocol: udp",
            r#"ports[2].protocol: unknown protocol "udp" (expected TCP, UDP or SCTP)"#,
        ),
        (
            "[198.18.1.2]",
            "[198.18.1.2.5]",
            r#"endpoints[1].addresses[0]: "198.18.1.2.5" is not an IP address"#,
        ),
        (
            "[198.18.1.2]",
            "[\"2001:2::2\"]",
            "endpoints[1].addresses[0]: 2001:2::2 does not match addressType \"IPv4\"",
        ),
        (
            "[198.18.1.2]",
            "[]",
            "endpoints[1].addresses: must contain at least one address",
        ),
        (
            "addressType: IPv4",
            "addressType: IPv5",
            r#"addressType: unknown address type "IPv5" (expected IPv4, IPv6 or FQDN)"#,
        ),
        ("addressType: IPv4", "", "addressType: missing"),
        (
            "protocol: TCP}",
            "protocol: TCP}\n- {name: x, port: 1, protocol: ICMP}",
            r#"ports[2].protocol: unknown protocol "ICMP" (expected TCP, UDP or SCTP)"#,
        ),
    ];
    for (from, to, expected) in cases {
        let yaml = WEB_SLICE_A.replace(from, to);
        assert_eq!(slice(&yaml).unwrap_err(), expected, "{yaml}");
    }
}

#[test]
fn invalid_load_balancer_status_is_named() {
    let lb = |ingress: &str| {
        format!(
            "{}  type: LoadBalancer\nstatus:\n  loadBalancer:\n    ingress: [{ingress}]\n",
            WEB
        )
    };
    assert_eq!(
        service(&lb("{ip: 198.18.9.1}, {ip: 198.18.9.300}")).unwrap_err(),
        r#"status.loadBalancer.ingress[1].ip: "198.18.9.300" is not an IP address"#
    );
    assert_eq!(
        service(&lb("{ip: 198.18.9.1, ipMode: Magic}")).unwrap_err(),
        r#"status.loadBalancer.ingress[0].ipMode: unknown ipMode "Magic" (expected VIP or Proxy)"#
    );
}

#[test]
fn a_slice_larger_than_the_backends_map_is_rejected() {
    let slice: EndpointSlice = serde_yaml::from_str(WEB_SLICE_A).unwrap();
    assert_eq!(
        SliceDef::from_k8s(&slice, 2).unwrap_err().to_string(),
        "endpoints: 3 endpoints do not fit into the backends map (capacity 2)"
    );
    assert!(SliceDef::from_k8s(&slice, 3).is_ok());
}

#[test]
fn invalid_node_addresses_are_named() {
    let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.1}
  - {type: ExternalIP, address: not-an-ip}
"#;
    assert_eq!(
        node(yaml).unwrap_err(),
        r#"status.addresses[1].address: "not-an-ip" is not an IP address"#
    );
}

#[test]
fn target_ports_are_numbers_or_iana_service_names() {
    for (target, valid) in [
        ("0", true), // unset: the API server defaults it to `port`
        ("\"\"", true),
        ("1", true),
        ("65535", true),
        ("65536", false),
        ("http-alt", true),
        ("h2", true),
        ("a23456789012345", true),
        ("a234567890123456", false),
        ("8080", true),
        ("\"8080\"", false), // a name needs a letter
        ("-http", false),
        ("http-", false),
        ("http--alt", false),
        ("HTTP", false),
    ] {
        let yaml = WEB.replace("targetPort: 8080", &format!("targetPort: {target}"));
        assert_eq!(service(&yaml).is_ok(), valid, "targetPort: {target}");
    }
}

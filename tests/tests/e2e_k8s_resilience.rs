//! End to end in Kubernetes mode: the API server misbehaving. Traffic keeps flowing through
//! an API outage and a change made meanwhile applies once it is back; a 410 Gone after a
//! compacted history makes the agent relist without disturbing what did not change; dropped
//! watches resume from their resourceVersion without a relist.

use std::{
    net::SocketAddrV4,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_tests::{
    apiserver::{
        objects::{service, HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL},
        RequestRecord, Resource,
    },
    cluster::{
        kube::{
            tally, wait_for_backends, wait_until, web_ports, KubeCluster, APPLY_TIMEOUT, NAMESPACE,
            NODE_NAME, REQUESTS, REQUEST_TIMEOUT,
        },
        Protocol,
    },
    require_root,
    servers::{tcp_request, TcpClient},
};

/// Upper bound on the background requests of one test (with their pauses, about 40 s).
const MAX_BACKGROUND_REQUESTS: usize = 2000;

fn vip(octet: u8) -> SocketAddrV4 {
    SocketAddrV4::new([198, 19, 0, octet].into(), 80)
}

/// Requests for the full state of Services or EndpointSlices so far: lists, and watches
/// that start from nothing (streaming lists, or no resourceVersion) rather than resume.
fn initial_syncs(cluster: &KubeCluster) -> usize {
    let from_scratch = |r: &RequestRecord| {
        r.param("sendInitialEvents") == Some("true")
            || matches!(r.param("resourceVersion"), None | Some("" | "0"))
    };
    cluster
        .api()
        .requests()
        .iter()
        .filter(|r| {
            let ours = [Resource::Services, Resource::EndpointSlices]
                .iter()
                .any(|res| r.path.ends_with(&format!("/{}", res.plural())));
            ours && (!r.is_watch() || from_scratch(r))
        })
        .count()
}

#[test]
fn traffic_flows_through_an_api_outage_and_a_change_made_during_it_applies_after() {
    require_root!();
    let mut cluster = KubeCluster::start(2).unwrap();
    let target = vip(80);
    cluster
        .api()
        .create(&service(NAMESPACE, "steady", *target.ip(), web_ports()))
        .unwrap();
    cluster
        .api()
        .create(&cluster.web_slice("steady", &[0, 1]))
        .unwrap();
    let client = cluster.client().netns.name().to_string();
    wait_for_backends(
        "created",
        &cluster.client().netns,
        Protocol::Tcp,
        target,
        &[0, 1],
    );
    let mut open = cluster
        .client()
        .netns
        .run(|| TcpClient::connect(target, REQUEST_TIMEOUT))
        .unwrap()
        .unwrap();
    let first = open.ask().unwrap();

    cluster.api().stop().unwrap();
    // The change reaches the server while the agent cannot see it.
    cluster
        .api()
        .apply(&cluster.web_slice("steady", &[0]))
        .unwrap();
    for round in 0..3 {
        let counts = tally(&cluster.client().netns, Protocol::Tcp, target, REQUESTS)
            .unwrap_or_else(|e| panic!("{client}, outage round {round}: {e}"));
        assert_eq!(counts.len(), 2, "outage round {round}: {counts:?}");
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(open.ask().unwrap(), first);
    assert_eq!(
        cluster.agent_mut().exit_status().unwrap(),
        None,
        "the agent exited during the outage:\n{}",
        cluster.agent().log()
    );

    cluster.api().restart().unwrap();
    wait_for_backends(
        "after the outage",
        &cluster.client().netns,
        Protocol::Tcp,
        target,
        &[0],
    );
    assert_eq!(open.ask().unwrap(), first, "the open connection broke");
}

#[test]
fn a_410_gone_relist_applies_missed_changes_and_keeps_the_rest_serving() {
    require_root!();
    let cluster = KubeCluster::start(3).unwrap();
    let api = cluster.api();
    let client = &cluster.client().netns;
    for (name, octet, backends) in [
        ("keep", 81, &[0, 1][..]),
        ("gone", 82, &[2]),
        ("scaled", 83, &[0, 1, 2]),
    ] {
        api.create(&service(NAMESPACE, name, *vip(octet).ip(), web_ports()))
            .unwrap();
        api.create(&cluster.web_slice(name, backends)).unwrap();
        wait_for_backends(name, client, Protocol::Tcp, vip(octet), backends);
    }
    let mut open = client
        .run(|| TcpClient::connect(vip(81), REQUEST_TIMEOUT))
        .unwrap()
        .unwrap();
    let first = open.ask().unwrap();
    let (lists_before, gone_before) = (initial_syncs(&cluster), api.gone_sent());

    let stop = AtomicBool::new(false);
    let (sent, failures) = thread::scope(|scope| {
        // Requests to the unchanged service all along the outage and the relist.
        let background = scope.spawn(|| {
            client.run(|| {
                let (mut sent, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) && sent < MAX_BACKGROUND_REQUESTS {
                    if let Err(e) = tcp_request(vip(81), REQUEST_TIMEOUT) {
                        failures.push(e.to_string());
                    }
                    sent += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                (sent, failures)
            })
        });
        api.stop().unwrap();
        api.delete::<EndpointSlice>(NAMESPACE, "gone-1").unwrap();
        api.delete::<Service>(NAMESPACE, "gone").unwrap();
        api.apply(&cluster.web_slice("scaled", &[2])).unwrap();
        api.compact();
        api.restart().unwrap();

        wait_for_backends(
            "scaled after the relist",
            client,
            Protocol::Tcp,
            vip(83),
            &[2],
        );
        wait_until("the deleted service is unprogrammed", APPLY_TIMEOUT, || {
            let inspect = cluster.inspect().map_err(|e| e.to_string())?;
            let left = inspect
                .frontends()
                .into_iter()
                .filter(|r| r.frontend.starts_with("198.19.0.82:"));
            let left: Vec<_> = left.collect();
            left.is_empty()
                .then_some(())
                .ok_or(format!("still programmed: {left:?}"))
        });
        wait_for_backends(
            "keep after the relist",
            client,
            Protocol::Tcp,
            vip(81),
            &[0, 1],
        );
        stop.store(true, Ordering::Relaxed);
        background.join().unwrap().unwrap()
    });
    assert!(
        sent > 0 && failures.is_empty(),
        "{} of {sent} requests to the unchanged service failed: {failures:?}",
        failures.len()
    );
    assert!(
        api.gone_sent() > gone_before,
        "the agent resumed without a 410 Gone"
    );
    assert!(
        initial_syncs(&cluster) > lists_before,
        "no new initial sync after the 410 Gone"
    );
    assert_eq!(open.ask().unwrap(), first, "the open connection broke");
}

#[test]
fn dropped_watches_resume_from_their_version_without_a_relist() {
    require_root!();
    let cluster = KubeCluster::start(2).unwrap();
    let api = cluster.api();
    let client = &cluster.client().netns;
    api.create(&service(NAMESPACE, "web", *vip(84).ip(), web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("web", &[0])).unwrap();
    wait_for_backends("created", client, Protocol::Tcp, vip(84), &[0]);

    // The agent watches what it was told to, with the documented selectors.
    wait_until(
        "Service, EndpointSlice and Node watches are open",
        APPLY_TIMEOUT,
        || {
            let open = api.open_watches();
            (open >= 3)
                .then_some(())
                .ok_or(format!("{open} watches open"))
        },
    );
    let requests = api.requests();
    let watched = |resource: Resource, check: &dyn Fn(&RequestRecord) -> bool| {
        requests.iter().any(|r| {
            r.is_watch() && r.path.ends_with(&format!("/{}", resource.plural())) && check(r)
        })
    };
    let excludes = |r: &RequestRecord, label: &str| {
        r.param("labelSelector")
            .is_some_and(|s| s.split(',').any(|term| term.trim() == format!("!{label}")))
    };
    assert!(
        watched(Resource::Services, &|r| excludes(
            r,
            SERVICE_PROXY_NAME_LABEL
        )),
        "{requests:#?}"
    );
    assert!(
        watched(Resource::EndpointSlices, &|r| excludes(
            r,
            SERVICE_PROXY_NAME_LABEL
        ) && excludes(
            r,
            HEADLESS_LABEL
        )),
        "{requests:#?}"
    );
    let node_selector = format!("metadata.name={NODE_NAME}");
    assert!(
        watched(Resource::Nodes, &|r| r.param("fieldSelector")
            == Some(node_selector.as_str())),
        "{requests:#?}"
    );

    let lists_before = initial_syncs(&cluster);
    assert!(api.drop_watches() >= 3);
    api.apply(&cluster.web_slice("web", &[1])).unwrap();
    wait_for_backends(
        "changed after the dropped watches",
        client,
        Protocol::Tcp,
        vip(84),
        &[1],
    );
    assert_eq!(
        initial_syncs(&cluster),
        lists_before,
        "the agent relisted instead of resuming its watches"
    );
}

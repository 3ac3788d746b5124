use std::fs;
use std::path::Path;

use super::{ManifestDir, ManifestError, Sync};

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80}]
"#;

const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.1.1]}]
"#;

fn write(dir: &Path, file: &str, contents: &str) {
    fs::write(dir.join(file), contents).unwrap();
}

fn poll(source: &mut ManifestDir) -> Sync {
    source.poll().unwrap().expect("a change")
}

/// Frontend -> backends, as strings.
fn frontends(sync: &Sync) -> Vec<String> {
    sync.state
        .services
        .iter()
        .map(|(fe, svc)| {
            let backends: Vec<String> = svc
                .external
                .endpoints
                .iter()
                .map(|e| e.to_string())
                .collect();
            format!("{fe} -> {}", backends.join(","))
        })
        .collect()
}

fn messages(sync: &Sync) -> Vec<String> {
    sync.errors.iter().map(|e| e.to_string()).collect()
}

#[test]
fn reads_multi_document_yaml_and_yml_files_only() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "web.yaml",
        &format!("{SERVICE}\n---\n{SLICE}\n---\n"),
    );
    write(
        dir.path(),
        "other.yml",
        &SERVICE.replace("web", "api").replace(".10", ".11"),
    );
    write(dir.path(), "notes.txt", &SERVICE.replace("web", "txt"));
    write(
        dir.path(),
        ".hidden.yaml",
        &SERVICE.replace("web", "hidden"),
    );
    write(
        dir.path(),
        "config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
    );
    let mut source = ManifestDir::new(dir.path());
    let sync = poll(&mut source);
    assert_eq!(messages(&sync), Vec::<String>::new());
    assert_eq!(
        frontends(&sync),
        [
            "198.19.0.10:80/TCP -> 198.18.1.1:8080",
            "198.19.0.11:80/TCP -> "
        ]
    );
    assert_eq!((sync.services, sync.endpoint_slices), (2, 1));
}

#[test]
fn unchanged_directory_polls_as_none() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", SERVICE);
    let mut source = ManifestDir::new(dir.path());
    poll(&mut source);
    assert!(source.poll().unwrap().is_none());
    write(dir.path(), "slice.yaml", SLICE);
    assert_eq!(
        frontends(&poll(&mut source)),
        ["198.19.0.10:80/TCP -> 198.18.1.1:8080"]
    );
    fs::remove_file(dir.path().join("web.yaml")).unwrap();
    assert_eq!(frontends(&poll(&mut source)), Vec::<String>::new());
}

#[test]
fn type_errors_name_the_field_and_the_rest_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let bad = SERVICE
        .replace("name: web,", "name: bad,")
        .replace("port: 80", "port: eighty");
    write(
        dir.path(),
        "a.yaml",
        &format!("{bad}\n---\n{SERVICE}\n---\n{SLICE}"),
    );
    let mut source = ManifestDir::new(dir.path());
    let sync = poll(&mut source);
    let file = dir.path().join("a.yaml");
    assert_eq!(
        messages(&sync),
        [format!(
            "{}: Service shop/bad: spec.ports[0].port: invalid type: string \"eighty\", \
             expected i32 (object skipped)",
            file.display()
        )]
    );
    assert_eq!(frontends(&sync), ["198.19.0.10:80/TCP -> 198.18.1.1:8080"]);
}

#[test]
fn an_object_that_becomes_invalid_keeps_its_last_valid_version() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", SERVICE);
    write(dir.path(), "slice.yaml", SLICE);
    let mut source = ManifestDir::new(dir.path());
    let before = frontends(&poll(&mut source));

    write(
        dir.path(),
        "web.yaml",
        &SERVICE.replace("port: 80", "port: 80000"),
    );
    let slice_bad = SLICE.replace("198.18.1.1", "198.18.1.x");
    write(dir.path(), "slice.yaml", &slice_bad);
    let sync = poll(&mut source);
    assert_eq!(frontends(&sync), before);
    assert_eq!(
        messages(&sync),
        [
            format!(
                "{}: Service shop/web: spec.ports[0].port: 80000 is not a port (1..=65535) \
                 (object skipped; its last valid version stays in effect)",
                dir.path().join("web.yaml").display()
            ),
            format!(
                "{}: EndpointSlice shop/web-1: endpoints[0].addresses[0]: \"198.18.1.x\" is not \
                 an IP address (object skipped; its last valid version stays in effect)",
                dir.path().join("slice.yaml").display()
            ),
        ]
    );

    // Still invalid on the next change: the last valid version is still the one in effect.
    write(
        dir.path(),
        "other.yaml",
        &SERVICE.replace("web", "api").replace(".10", ".11"),
    );
    assert_eq!(frontends(&poll(&mut source)).len(), 2);
    // Fixed: the new version replaces it.
    write(
        dir.path(),
        "web.yaml",
        &SERVICE.replace("port: 80", "port: 81"),
    );
    let fixed = frontends(&poll(&mut source));
    assert!(
        fixed.contains(&"198.19.0.10:81/TCP -> 198.18.1.1:8080".to_string()),
        "{fixed:?}"
    );
}

#[test]
fn a_broken_file_keeps_its_last_good_objects() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &format!("{SERVICE}\n---\n{SLICE}"));
    let mut source = ManifestDir::new(dir.path());
    let before = frontends(&poll(&mut source));

    write(
        dir.path(),
        "web.yaml",
        "apiVersion: v1\nkind: Service\n  metadata: [oops\n",
    );
    write(
        dir.path(),
        "other.yaml",
        &SERVICE.replace("web", "api").replace(".10", ".11"),
    );
    let sync = poll(&mut source);
    assert_eq!(sync.errors.len(), 1);
    assert!(
        matches!(&sync.errors[0], ManifestError::InvalidFile { path, .. } if path.ends_with("web.yaml")),
        "{:?}",
        sync.errors
    );
    assert!(messages(&sync)[0].ends_with("(keeping the file's last good objects)"));
    let after = frontends(&sync);
    assert!(after.contains(&before[0]), "{after:?}");
    assert_eq!(after.len(), 2, "the other file still applies");
}

/// The message for `file`'s duplicate of `object` while `in_effect`'s stays in effect.
fn duplicate(dir: &Path, file: &str, object: &str, in_effect: &str) -> String {
    format!(
        "{}: {object} is already defined in {}, whose definition stays in effect; ignored",
        dir.join(file).display(),
        dir.join(in_effect).display()
    )
}

#[test]
fn on_a_cold_start_the_first_file_by_name_wins() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", SERVICE);
    write(dir.path(), "b.yaml", &SERVICE.replace(".10", ".99"));
    let mut source = ManifestDir::new(dir.path());
    let sync = poll(&mut source);
    assert_eq!(frontends(&sync), ["198.19.0.10:80/TCP -> "]);
    assert_eq!(
        messages(&sync),
        [duplicate(
            dir.path(),
            "b.yaml",
            "Service shop/web",
            "a.yaml"
        )]
    );
}

#[test]
fn a_duplicate_in_an_earlier_file_never_displaces_the_object_in_effect() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m-web.yaml",
        &format!("{SERVICE}\n---\n{SLICE}"),
    );
    let mut source = ManifestDir::new(dir.path());
    let before = frontends(&poll(&mut source));
    assert_eq!(before, ["198.19.0.10:80/TCP -> 198.18.1.1:8080"]);

    // Another cluster IP for the Service, another endpoint for its slice, in a file that
    // sorts first; then the valid file changes, and the agent restarts its source.
    let other_service = SERVICE.replace(".10", ".99");
    let other_slice = SLICE.replace("198.18.1.1", "198.18.1.9");
    write(
        dir.path(),
        "a-copy.yaml",
        &format!("{other_service}\n---\n{other_slice}"),
    );
    let sync = poll(&mut source);
    assert_eq!(frontends(&sync), before);
    assert_eq!(
        messages(&sync),
        [
            duplicate(dir.path(), "a-copy.yaml", "Service shop/web", "m-web.yaml"),
            duplicate(
                dir.path(),
                "a-copy.yaml",
                "EndpointSlice shop/web-1",
                "m-web.yaml"
            ),
        ]
    );
    assert_eq!(sync.invalid_objects, 2);
    write(
        dir.path(),
        "m-web.yaml",
        &format!(
            "{SERVICE}\n---\n{}",
            SLICE.replace("198.18.1.1", "198.18.1.2")
        ),
    );
    assert_eq!(
        frontends(&poll(&mut source)),
        ["198.19.0.10:80/TCP -> 198.18.1.2:8080"]
    );

    // Once the file in effect no longer defines them, the duplicates take over.
    fs::remove_file(dir.path().join("m-web.yaml")).unwrap();
    let sync = poll(&mut source);
    assert_eq!(frontends(&sync), ["198.19.0.99:80/TCP -> 198.18.1.9:8080"]);
    assert_eq!(messages(&sync), Vec::<String>::new());
}

#[test]
fn a_broken_file_keeps_the_objects_it_defined_against_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m-web.yaml", SERVICE);
    let mut source = ManifestDir::new(dir.path());
    let before = frontends(&poll(&mut source));
    write(dir.path(), "m-web.yaml", "kind: [oops\n");
    write(dir.path(), "a-copy.yaml", &SERVICE.replace(".10", ".99"));
    let sync = poll(&mut source);
    assert_eq!(frontends(&sync), before);
    assert_eq!(messages(&sync).len(), 2, "{:?}", messages(&sync));
    assert_eq!(
        messages(&sync)[1],
        duplicate(dir.path(), "a-copy.yaml", "Service shop/web", "m-web.yaml")
    );
}

#[test]
fn every_skipped_object_and_file_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", SERVICE);
    write(dir.path(), "b.yaml", SERVICE);
    write(dir.path(), "broken.yaml", "kind: [oops\n");
    write(
        dir.path(),
        "nameless.yaml",
        &SERVICE.replace("name: web, ", ""),
    );
    write(
        dir.path(),
        "invalid.yaml",
        &SERVICE.replace("web", "api").replace("port: 80", "port: 0"),
    );
    let sync = poll(&mut ManifestDir::new(dir.path()));
    assert_eq!(sync.invalid_objects, 4, "{:?}", messages(&sync));
    assert_eq!(sync.errors.len(), 4);
    assert_eq!(frontends(&sync), ["198.19.0.10:80/TCP -> "]);
}

#[test]
fn a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = ManifestDir::new(&missing).poll().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("reading manifests directory {} failed", missing.display())
    );
}

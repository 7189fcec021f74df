//! What the in-process test binaries share: a node with the in-process guest as its VMM, and
//! the requests most tests make of it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ignition_in_process_guest::{placeholder_image, GuestCounters, InProcessGuest};
use ignition_node::{ImageSource, NetworkMode, NodeConfig, RunningNode};
use serde_json::{json, Value};

pub(crate) struct TestNode {
    pub(crate) node: RunningNode,
    pub(crate) counters: Arc<GuestCounters>,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) fn config(dir: &std::path::Path, guest: &InProcessGuest) -> NodeConfig {
    let mut c = NodeConfig::new(dir.join("data"));
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.image = ImageSource::Ready(placeholder_image(&dir.join("image")).unwrap());
    c.vmm.driver = Some(Arc::new(guest.clone()));
    c.run_dir = Some(dir.join("run"));
    c.network.mode = NetworkMode::None;
    c.api.dev = true;
    c.worker.keep_alive = Duration::from_secs(2);
    c.cluster.node_id = Some("n1".to_owned());
    c
}

pub(crate) async fn start_with(
    guest: InProcessGuest,
    tweak: impl FnOnce(&mut NodeConfig),
) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), &guest);
    tweak(&mut c);
    let node = ignition_node::start(c).await.unwrap();
    TestNode {
        node,
        counters: guest.counters(),
        _dir: dir,
    }
}

impl TestNode {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.node.addr())
    }
}

pub(crate) fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub(crate) async fn deploy(
    n: &TestNode,
    name: &str,
    handler: &str,
    extra: Value,
) -> reqwest::Response {
    // The API checks that the handler's module is in the bundle; the in-process guest runs
    // its own closure of that name instead.
    let module = format!("{}.py", handler.split('.').next().unwrap());
    let code = zip_of(&[(&module, b"def handler(event, context):\n    return event\n")]);
    let mut body = json!({
        "runtime": "python3",
        "handler": handler,
        "code": base64::engine::general_purpose::STANDARD.encode(code),
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    reqwest::Client::new()
        .put(n.url(&format!("/v1/functions/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

pub(crate) async fn invoke(n: &TestNode, name: &str, payload: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(n.url(&format!("/2015-03-31/functions/{name}/invocations")))
        .json(payload)
        .send()
        .await
        .unwrap()
}

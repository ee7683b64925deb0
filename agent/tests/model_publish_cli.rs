//! `vigil model publish` as an operator runs it against a real `nats-server -js`: unsigned and
//! foreign bundles are refused before anything is written, a signed one lands in the object
//! store with its group's pointer, and an agent's fleet export following that group verifies
//! it and hands it over. Needs `nats-server` (`cargo xtask setup` installs it); the test starts
//! its own on a free loopback port.

mod common;

use std::time::Duration;

use common::{TempDir, bundle_copy, public_key_hex, run_vigil};
use tokio::io::AsyncReadExt as _;

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn publish_refuses_what_agents_would_refuse_and_lands_what_they_run() {
    let dir = TempDir::new("model-publish");
    let server = common::NatsServer::start(&dir.path().join("nats"));
    let port = server.port;
    let keys = dir.path().join("keys");
    let (code, _, stderr) = run_vigil(&["model", "keygen", "--out", s(&keys)]);
    assert_eq!(code, 0, "{stderr}");
    let public = public_key_hex(&keys.join("vigil-model.pub"));
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[detection]\ntrusted_keys = [\"{public}\"]\n\n[fleet.bus]\nurl = \"nats://127.0.0.1:{port}\"\n\
             allow_plaintext = true\nsite = \"lab\"\nhost = \"web-1\"\n\n[fleet.models]\ngroup = \"canary\"\ndir = \"{}\"\n",
            dir.path().join("kept").display()
        ),
    )
    .unwrap();
    let bundle = bundle_copy(dir.path());
    let publish = |group: &str| {
        run_vigil(&["model", "publish", "-c", s(&config), "--group", group, "--note", "test rollout", s(&bundle)])
    };

    let (code, _, stderr) = publish("canary");
    assert_ne!(code, 0);
    assert!(stderr.contains("not signed; agents refuse unsigned bundles"), "{stderr}");
    // Signed, but by the project's models key, which this configuration does not trust.
    std::fs::copy(common::workspace().join("models/default/manifest.sig"), bundle.join("manifest.sig")).unwrap();
    let (code, _, stderr) = publish("canary");
    assert_ne!(code, 0);
    assert!(stderr.contains("does not verify with 1 trusted key"), "{stderr}");
    let (code, _, stderr) = run_vigil(&["model", "sign", "--key", s(&keys.join("vigil-model.key")), s(&bundle)]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = publish("no.dots");
    assert_ne!(code, 0);
    assert!(stderr.contains("group \"no.dots\" must be letters, digits, - or _"), "{stderr}");

    let sha = vigil::model::Bundle::read_dir(&bundle).unwrap().sha256();
    let (code, stdout, stderr) = publish("canary");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("published {sha} as the model of group canary")), "{stdout}");

    // What the bus holds: the group's pointer and the bundle's files under its hash.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap());
        let kv = js.get_key_value("VIGIL_MODELS").await.unwrap();
        let pointer: vigil::fleet::models::Pointer =
            serde_json::from_slice(&kv.get("canary").await.unwrap().expect("pointer")).unwrap();
        assert_eq!((pointer.sha256.as_str(), pointer.note.as_str()), (sha.as_str(), "test rollout"));
        let store = js.get_object_store("VIGIL_BUNDLES").await.unwrap();
        for file in ["manifest.json", "manifest.sig", "iforest.json", "autoencoder.onnx"] {
            let mut object = store.get(format!("{sha}/{file}")).await.unwrap();
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await.unwrap();
            assert_eq!(bytes, std::fs::read(bundle.join(file)).unwrap(), "{file}");
        }
    });

    // An agent of group canary: its fleet export follows the pointer and hands the bundle over.
    let loaded = vigil::config::Config::load(Some(&config)).unwrap();
    let mut export = vigil::fleet::FleetExport::start(loaded.fleet.as_ref().unwrap()).unwrap();
    let trust = vigil::model::Trust::from_config(&loaded.detection.trusted_keys, false).unwrap();
    let updates = export.follow_models(trust.keys, vigil::features::Schema::flow(), None).expect("follows");
    match updates.recv_timeout(Duration::from_secs(20)).expect("an update") {
        vigil::fleet::models::ModelUpdate::Ready { accepted, group } => {
            assert_eq!((accepted.sha256.as_str(), group.as_str()), (sha.as_str(), "canary"));
        }
        vigil::fleet::models::ModelUpdate::Refused { why, .. } => panic!("refused: {why}"),
    }
    let stats = export.stats().models.expect("model follower stats");
    assert_eq!((stats.accepted, stats.refused), (1, 0));
    export.shutdown(Duration::from_secs(1));
}

//! Models to the fleet: the checks on a downloaded bundle, one by one, and the whole path
//! (publish, pointer, follower, verification) against a real `nats-server -js`, with a
//! tampered bundle, one signed by another key and a rollback.

use std::path::Path;
use std::time::Instant;

use super::*;
use crate::alert::sink::nats::Options;
use crate::alert::sink::nats::tests::{Server, free_port, settings};
use crate::alert::sink::testing::temp_dir;
use crate::model::sign::SecretKey;

/// The built-in bundle with `note` in its training summary (so a hash of its own), signed by
/// `key`.
fn bundle(dir: &Path, note: &str, key: &SecretKey) -> Bundle {
    let dir = dir.join(note);
    Bundle::embedded().expect("built in").write_dir(&dir).expect("writes");
    let path = dir.join(MANIFEST);
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["training"]["note"] = note.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    Bundle::sign_dir(&dir, key).expect("signs");
    Bundle::read_dir(&dir).expect("reads")
}

/// `b` with a small supervised classifier, signed with `key` again.
fn classified(b: Bundle, dir: &Path, key: &SecretKey) -> Bundle {
    let (spec, bytes) = crate::model::kind_classifier::tests::small_forest(Schema::flow().len());
    let dir = dir.join(format!("classified-{}", &b.sha256()[..8]));
    b.with_classifier(spec, bytes).write_dir(&dir).expect("writes");
    Bundle::sign_dir(&dir, key).expect("signs");
    Bundle::read_dir(&dir).expect("reads")
}

fn received(b: &Bundle) -> Received {
    Received {
        manifest: b.manifest_json().to_vec(),
        signature: b.signature().expect("signed").to_vec(),
        iforest: b.iforest.clone(),
        autoencoder: b.autoencoder.clone(),
        classifier: b.classifier.clone(),
    }
}

fn pointer(sha256: &str) -> Pointer {
    Pointer { schema: SCHEMA, sha256: sha256.into(), published_ms: 1, note: String::new() }
}

#[test]
fn a_downloaded_bundle_is_accepted_only_whole_signed_and_named_by_its_pointer() {
    let dir = temp_dir("fleet-models-accept");
    let (key, stranger) = (SecretKey::generate().unwrap(), SecretKey::generate().unwrap());
    let good = bundle(&dir, "a", &key);
    let keys = [key.public()];
    let schema = Schema::flow();
    let accepted = accept(&pointer(&good.sha256()), received(&good), &keys, &schema).expect("accepted");
    assert_eq!((accepted.sha256.as_str(), accepted.key), (good.sha256().as_str(), key.public()));

    let refused = |p: &Pointer, r: Received, keys: &[PublicKey]| match accept(p, r, keys, &schema) {
        Ok(_) => panic!("accepted"),
        Err(why) => why,
    };
    // Another bundle than the pointer names.
    let why = refused(&pointer(&"0".repeat(64)), received(&good), &keys);
    assert!(why.starts_with("manifest.json has sha256") && why.contains("the pointer names 0000"), "{why}");
    // A model file changed on the way (the manifest's checksum catches it).
    let mut tampered = received(&good);
    tampered.iforest[10] ^= 1;
    let why = refused(&pointer(&good.sha256()), tampered, &keys);
    assert!(why.starts_with("iforest.json: sha256"), "{why}");
    tampered = received(&good);
    tampered.autoencoder.push(0);
    let why = refused(&pointer(&good.sha256()), tampered, &keys);
    assert!(why.starts_with("autoencoder.onnx: sha256"), "{why}");
    // Signed by a key this agent does not trust, or not signed at all, or no keys.
    let other = bundle(&dir, "b", &stranger);
    let why = refused(&pointer(&other.sha256()), received(&other), &keys);
    assert!(why.contains("does not verify with 1 trusted key"), "{why}");
    let why = refused(&pointer(&good.sha256()), Received { signature: Vec::new(), ..received(&good) }, &keys);
    assert!(why.contains("not a signature"), "{why}");
    let why = refused(&pointer(&good.sha256()), received(&good), &[]);
    assert!(why.starts_with("no trusted keys"), "{why}");

    // A bundle with a classifier: its file comes along, checked like the others.
    let with = classified(good, &dir, &key);
    let accepted = accept(&pointer(&with.sha256()), received(&with), &keys, &schema).expect("accepted");
    assert_eq!(accepted.detector.classifier.as_ref().map(|c| c.spec.classes.len()), Some(3));
    let why = refused(&pointer(&with.sha256()), Received { classifier: None, ..received(&with) }, &keys);
    assert!(why.contains("classifier.json has no entry in files, or its bytes are missing"), "{why}");
    let mut tampered = received(&with);
    tampered.classifier.as_mut().expect("has one")[5] ^= 1;
    let why = refused(&pointer(&with.sha256()), tampered, &keys);
    assert!(why.starts_with("classifier.json: sha256"), "{why}");
}

#[test]
fn models_settings_name_the_key() {
    let good = ModelsSection {
        group: "canary".into(),
        pointers: default_pointers(),
        objects: default_objects(),
        dir: default_dir(),
    };
    good.validate().expect("valid");
    for (bad, key) in [
        (ModelsSection { group: String::new(), ..good.clone() }, "fleet.models.group"),
        (ModelsSection { group: "web.eu".into(), ..good.clone() }, "fleet.models.group"),
        (ModelsSection { pointers: "a b".into(), ..good.clone() }, "fleet.models.pointers"),
        (ModelsSection { objects: "*".into(), ..good.clone() }, "fleet.models.objects"),
    ] {
        assert_eq!(bad.validate().expect_err("invalid").0, key, "{bad:?}");
    }
}

/// The follower's next update, within 20 s.
fn next(rx: &mpsc::Receiver<ModelUpdate>) -> ModelUpdate {
    rx.recv_timeout(Duration::from_secs(20)).expect("an update from the follower")
}

#[test]
fn a_group_runs_what_its_pointer_names_and_refuses_tampered_or_foreign_bundles() {
    let dir = temp_dir("fleet-models");
    let port = free_port();
    let _server = Server::start(&dir.join("nats"), port);
    let (key, stranger) = (SecretKey::generate().unwrap(), SecretKey::generate().unwrap());
    // A carries a supervised classifier: its file travels through the object store too.
    let a = classified(bundle(&dir, "a", &key), &dir, &key);
    let (b, c) = (bundle(&dir, "b", &key), bundle(&dir, "c", &stranger));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let js = runtime.block_on(async {
        async_nats::jetstream::new(async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap())
    });
    let (pointers, objects) = (default_pointers(), default_objects());
    let publish = |bundle: &Bundle, group: &str| {
        runtime.block_on(publish(&js, &pointers, &objects, group, bundle, "test")).expect("published")
    };

    // The follower of group canary starts before anything is published (no bucket yet).
    let section = ModelsSection {
        group: "canary".into(),
        pointers: pointers.clone(),
        objects: objects.clone(),
        dir: dir.join("kept"),
    };
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(Mutex::new(ModelStats::default()));
    let options = Options::new(&settings(port)).unwrap();
    runtime.spawn(follow(options, section, vec![key.public()], Schema::flow(), tx, Arc::clone(&stats), None));

    let started = Instant::now();
    let written = publish(&a, "canary");
    assert_eq!(written.sha256, a.sha256());
    match next(&rx) {
        ModelUpdate::Ready { accepted, group } => {
            assert_eq!((accepted.sha256.as_str(), group.as_str()), (a.sha256().as_str(), "canary"));
            assert!(accepted.detector.classifier.is_some(), "the classifier came with the bundle");
        }
        ModelUpdate::Refused { why, .. } => panic!("refused: {why}"),
    }
    eprintln!("bundle published and verified by the follower in {:?}", started.elapsed());

    // Another group's pointer is not this agent's business.
    publish(&b, "web");
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "group web is not followed");

    // B's iforest.json changed in the object store after publishing, then canary pointed at it.
    runtime.block_on(async {
        let store = js.get_object_store(&objects).await.unwrap();
        let mut bytes = b.iforest.clone();
        let last = bytes.len() - 2;
        bytes[last] = b' ';
        store.put(object_name(&b.sha256(), IFOREST).as_str(), &mut bytes.as_slice()).await.unwrap();
        let kv = js.get_key_value(&pointers).await.unwrap();
        kv.put("canary", serde_json::to_vec(&pointer(&b.sha256())).unwrap().into()).await.unwrap();
    });
    match next(&rx) {
        ModelUpdate::Refused { sha256, why, .. } => {
            assert_eq!(sha256, b.sha256());
            assert!(why.starts_with("iforest.json: sha256"), "{why}");
        }
        ModelUpdate::Ready { .. } => panic!("a tampered bundle was accepted"),
    }
    // A bundle signed by a key the agent does not trust.
    publish(&c, "canary");
    match next(&rx) {
        ModelUpdate::Refused { why, .. } => assert!(why.contains("does not verify"), "{why}"),
        ModelUpdate::Ready { .. } => panic!("a foreign bundle was accepted"),
    }
    // A pointer to a bundle that is not in the object store.
    runtime.block_on(async {
        let kv = js.get_key_value(&pointers).await.unwrap();
        kv.put("canary", serde_json::to_vec(&pointer(&"e".repeat(64))).unwrap().into()).await.unwrap();
    });
    match next(&rx) {
        ModelUpdate::Refused { why, .. } => assert!(why.contains("not in the object store"), "{why}"),
        ModelUpdate::Ready { .. } => panic!("accepted from nothing"),
    }
    // Rolling back: canary points at A again.
    publish(&a, "canary");
    match next(&rx) {
        ModelUpdate::Ready { accepted, .. } => assert_eq!(accepted.sha256, a.sha256()),
        ModelUpdate::Refused { why, .. } => panic!("refused: {why}"),
    }
    assert_eq!(*stats.lock().unwrap(), ModelStats { accepted: 2, refused: 3, failed: 0 });
    // The accepted bundle is kept for the next start (A, taken back last).
    let kept = kept(&dir.join("kept"), &[key.public()], &Schema::flow()).expect("loads").expect("kept");
    assert_eq!(kept.sha256, a.sha256());
    runtime.shutdown_background();
}

#[test]
fn the_bundle_kept_for_the_next_start_is_verified_again_and_only_the_last_two_stay() {
    let dir = temp_dir("fleet-models-kept");
    let kept_dir = dir.join("kept");
    let (key, stranger) = (SecretKey::generate().unwrap(), SecretKey::generate().unwrap());
    let keys = [key.public()];
    let schema = Schema::flow();
    assert!(kept(&kept_dir, &keys, &schema).expect("nothing kept is no error").is_none());
    let bundles: Vec<Bundle> = ["a", "b", "c"].iter().map(|n| bundle(&dir, n, &key)).collect();
    for b in &bundles {
        keep(&kept_dir, b).expect("kept");
        // Distinct modification times, so that the oldest is known.
        std::thread::sleep(Duration::from_millis(20));
    }
    let back = kept(&kept_dir, &keys, &schema).expect("loads").expect("kept");
    assert_eq!((back.sha256.as_str(), back.key), (bundles[2].sha256().as_str(), key.public()));
    let mut left: Vec<String> = std::fs::read_dir(&kept_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 64)
        .collect();
    left.sort();
    let mut expected = vec![bundles[1].sha256(), bundles[2].sha256()];
    expected.sort();
    assert_eq!(left, expected, "the current bundle and the one before");
    // Not trusted any more, or changed on disk: refused with the reason.
    let e = kept(&kept_dir, &[stranger.public()], &schema).err().expect("another key");
    assert!(e.contains("does not verify"), "{e}");
    let manifest = kept_dir.join(bundles[2].sha256()).join(MANIFEST);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replacen("\"note\": \"c\"", "\"note\": \"d\"", 1)).unwrap();
    let e = kept(&kept_dir, &keys, &schema).err().expect("tampered");
    assert!(e.contains("does not verify"), "{e}");
    std::fs::write(kept_dir.join(CURRENT), "../../etc\n").unwrap();
    let e = kept(&kept_dir, &keys, &schema).err().expect("not a name");
    assert!(e.contains("not a bundle's sha256"), "{e}");
}

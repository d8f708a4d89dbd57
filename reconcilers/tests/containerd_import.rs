//! Importing an OCI layout into a private containerd: image record, blobs with gc labels, committed snapshots, no leftover lease.

mod containerd_support;

use containerd_support::{Env, IMAGE};
use converge_reconcilers::containerd::{SnapshotKind, chain_ids, import_oci_layout};

#[tokio::test]
async fn importing_busybox_creates_the_image_and_committed_snapshots() {
    let env = Env::start().await;
    let record = import_oci_layout(&env.client, &env.layout.dir, IMAGE)
        .await
        .expect("import");
    assert_eq!(record.name, IMAGE);
    assert_eq!(record.target.digest, env.layout.manifest.digest);

    let got = env
        .client
        .get_image(IMAGE)
        .await
        .expect("get")
        .expect("image exists");
    assert_eq!(got.target.digest, env.layout.manifest.digest);

    let diff_ids: Vec<String> = env
        .layout
        .layers
        .iter()
        .map(|l| l.diff_id.clone())
        .collect();
    let chain = chain_ids(&diff_ids);
    let top = env
        .client
        .stat_snapshot(chain.last().expect("one layer"))
        .await
        .expect("stat")
        .expect("top snapshot exists");
    assert_eq!(top.kind, SnapshotKind::Committed);

    let manifest = env
        .client
        .content_info(&env.layout.manifest.digest)
        .await
        .expect("info")
        .expect("manifest stored");
    assert_eq!(
        manifest.labels.get("containerd.io/gc.ref.content.config"),
        Some(&env.layout.config.digest)
    );
    let config = env
        .client
        .content_info(&env.layout.config.digest)
        .await
        .expect("info")
        .expect("config stored");
    assert_eq!(
        config.labels.get("containerd.io/gc.ref.snapshot.overlayfs"),
        chain.last()
    );
    assert!(
        env.client.list_leases().await.expect("leases").is_empty(),
        "import lease deleted"
    );

    let resolved = env.client.resolve_image(IMAGE).await.expect("resolve");
    assert_eq!(resolved.chain_ids, chain);
    let cmd = resolved
        .config
        .config()
        .as_ref()
        .and_then(|c| c.cmd().clone());
    assert_eq!(cmd, Some(vec!["sh".to_string()]));
    env.ctrd.stop().await.expect("stop containerd");
}

#[tokio::test]
async fn importing_the_same_image_twice_changes_nothing() {
    let env = Env::start().await;
    import_oci_layout(&env.client, &env.layout.dir, IMAGE)
        .await
        .expect("first import");
    let before = env.client.list_snapshots().await.expect("list");
    let record = import_oci_layout(&env.client, &env.layout.dir, IMAGE)
        .await
        .expect("second import");
    let after = env.client.list_snapshots().await.expect("list");
    assert_eq!(record.target.digest, env.layout.manifest.digest);
    assert_eq!(before.len(), after.len());
    assert_eq!(env.client.list_images(&[]).await.expect("images").len(), 1);
}

#[tokio::test]
async fn a_layout_with_a_corrupt_blob_fails_clearly_and_creates_no_image() {
    let env = Env::start().await;
    let layer = env.layout.blob_path(&env.layout.layers[0].blob.digest);
    let mut bytes = std::fs::read(&layer).expect("read layer");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer, bytes).expect("corrupt layer");
    let err = import_oci_layout(&env.client, &env.layout.dir, IMAGE)
        .await
        .expect_err("corrupt layer refused");
    assert!(
        err.to_string().contains(&env.layout.layers[0].blob.digest),
        "{err}"
    );
    assert!(env.client.get_image(IMAGE).await.expect("get").is_none());
}

#[tokio::test]
async fn a_missing_layout_is_an_error_not_a_panic() {
    let env = Env::start().await;
    let err = import_oci_layout(&env.client, env.ctrd.dir().join("nope"), IMAGE)
        .await
        .expect_err("missing layout");
    assert!(err.to_string().contains("index.json"), "{err}");
}

#[tokio::test]
async fn garbage_collection_keeps_an_imported_image_whole_and_takes_it_once_deleted() {
    let env = Env::start().await;
    import_oci_layout(&env.client, &env.layout.dir, IMAGE)
        .await
        .expect("import");
    env.client.collect_garbage().await.expect("gc");
    let blobs = [
        &env.layout.manifest.digest,
        &env.layout.config.digest,
        &env.layout.layers[0].blob.digest,
    ];
    for digest in blobs {
        assert!(
            env.client
                .content_info(digest)
                .await
                .expect("info")
                .is_some(),
            "{digest} survived gc"
        );
    }
    let diff_ids: Vec<String> = env
        .layout
        .layers
        .iter()
        .map(|l| l.diff_id.clone())
        .collect();
    let top = chain_ids(&diff_ids).pop().expect("one layer");
    assert!(
        env.client
            .stat_snapshot(&top)
            .await
            .expect("stat")
            .is_some()
    );

    env.client.delete_image(IMAGE).await.expect("delete image");
    env.client
        .delete_image(IMAGE)
        .await
        .expect("delete again is fine");
    env.client.collect_garbage().await.expect("gc");
    for digest in blobs {
        assert!(
            env.client
                .content_info(digest)
                .await
                .expect("info")
                .is_none(),
            "{digest} collected"
        );
    }
    assert!(
        env.client
            .stat_snapshot(&top)
            .await
            .expect("stat")
            .is_none()
    );
    assert!(env.client.list_snapshots().await.expect("list").is_empty());
}

#[tokio::test]
async fn image_records_can_be_labelled_updated_and_listed_by_label() {
    let env = Env::start().await;
    let record = import_oci_layout(&env.client, &env.layout.dir, IMAGE)
        .await
        .expect("import");
    let mut labelled = record.clone();
    labelled.name = "test.local/other:v1".into();
    labelled.labels = [(
        "runtime.computer/entity-id".to_string(),
        "artifact/demo".to_string(),
    )]
    .into();
    env.client.put_image(&labelled).await.expect("create");
    labelled.labels.insert("extra".into(), "1".into());
    let stored = env.client.put_image(&labelled).await.expect("update");
    assert_eq!(stored.labels, labelled.labels);
    for filter in [
        r#"labels."runtime.computer/entity-id"=="artifact/demo""#,
        r#"labels."runtime.computer/entity-id"==artifact/demo"#,
    ] {
        let listed = env
            .client
            .list_images(&[filter.to_string()])
            .await
            .expect("list by label");
        let names: Vec<_> = listed.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["test.local/other:v1"], "{filter}");
    }
    assert_eq!(env.client.list_images(&[]).await.expect("all").len(), 2);
}

//! A sandbox whose image lives only in the artifact registry: the controller pulls it into
//! the private containerd, runs it, and tears it down on delete.

mod sandbox_support;

use converge::artifact::{ImportRequest, push_image};
use converge_testkit::{busybox_image_layout, unique_name};
use sandbox_support::{Env, sandbox_id};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_in_the_registry_is_pulled_and_run() {
    let mut env = Env::start().await;
    let url = env.start_registry().await;
    let layout = busybox_image_layout(env.ctrd.dir().join("push-layout")).expect("layout");
    let archive = env.ctrd.dir().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("archive");
    let req = ImportRequest::new(archive, "pulled:v1", None, &url).expect("request");
    push_image(&req).await.expect("push to the registry");
    let image = "cluster.local:5000/pulled:v1";
    assert!(
        env.containerd
            .get_image(image)
            .await
            .expect("get")
            .is_none(),
        "not in containerd before the sandbox asks for it"
    );
    env.registry_url = url;
    env.start_controller(false);

    let name = unique_name("pull");
    env.apply(
        &name,
        json!({"containers": [{"name": "app", "image": image, "command": ["sleep", "1000"]}]}),
    )
    .await;
    env.wait_status(&name, "phase running", |s| s["phase"] == "running")
        .await;
    assert!(
        env.containerd
            .get_image(image)
            .await
            .expect("get")
            .is_some()
    );

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    env.eventually("the sandbox's containers are gone", || async {
        env.containers_of(&name).await.is_empty()
    })
    .await;
    env.shutdown().await;
}

//! The adapter survives a containerd restart: calls fail as Unavailable, then work again, and the event stream resubscribes.

mod containerd_support;

use std::time::Duration;

use containerd_support::{Env, sandbox_name};
use converge_reconcilers::containerd::{ContainerdClient, ContainerdEvent};
use converge_testkit::unique_name;
use futures::StreamExt;

#[tokio::test]
async fn calls_and_events_recover_after_containerd_restarts() {
    let (mut env, image) = Env::with_busybox().await;
    let mut events = Box::pin(env.client.subscribe());
    env.client.version().await.expect("version before restart");
    env.ctrd.restart().await.expect("restart containerd");
    env.client
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("ready again");
    env.client
        .list_images(&[])
        .await
        .expect("calls work after restart");
    let resubscribed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.next().await {
            if event == ContainerdEvent::Resubscribed {
                return true;
            }
        }
        false
    })
    .await
    .expect("resubscribed within 20 s");
    assert!(resubscribed);

    let id = env
        .create(&image, &sandbox_name(), &["sh", "-c", "exit 5"])
        .await;
    env.client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start after restart");
    let exit = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.next().await {
            if let ContainerdEvent::TaskExit {
                container_id,
                exit_status,
                ..
            } = event
                && container_id == id
            {
                return Some(exit_status);
            }
        }
        None
    })
    .await
    .expect("TaskExit after restart within 20 s");
    assert_eq!(exit, Some(5));
    env.client
        .remove_container(&id, Duration::from_millis(200))
        .await
        .expect("remove");
}

#[tokio::test]
async fn a_client_of_a_missing_socket_reports_unavailable_until_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = ContainerdClient::new(dir.path().join("none.sock"), &unique_name("ns"))
        .expect("lazy client");
    let err = client
        .wait_ready(Duration::from_millis(300))
        .await
        .expect_err("nothing listens");
    assert!(err.is_unavailable(), "{err}");
}

//! Container lifecycle against a private containerd: run to exit, logs, stop with grace, events, idempotency, cleanup, bad commands.

mod containerd_support;

use std::time::{Duration, Instant};

use containerd_support::{Env, sandbox_name};
use converge_reconcilers::containerd::{ContainerdEvent, LABEL_ENTITY_ID, TaskState};
use futures::StreamExt;

#[tokio::test]
async fn a_container_that_prints_and_exits_reports_zero_and_leaves_its_output_in_the_log() {
    let (env, image) = Env::with_busybox().await;
    let id = env
        .create(
            &image,
            &sandbox_name(),
            &["sh", "-c", "echo hello from converge; echo oops >&2"],
        )
        .await;
    let io = env.io(&id);
    env.client.start_task(&id, &io).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(20), env.client.wait_task(&id))
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(exit, 0);
    let status = env
        .client
        .task_status(&id)
        .await
        .expect("status")
        .expect("task");
    assert_eq!(status.state, TaskState::Stopped);
    assert_eq!(status.exit_code, Some(0));
    let log = std::fs::read_to_string(&io.stdout).expect("log file");
    assert!(log.contains("hello from converge"), "{log:?}");
    assert!(log.contains("oops"), "{log:?}");
    env.client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn a_long_running_container_stops_on_sigterm_within_its_grace() {
    let (env, image) = Env::with_busybox().await;
    let id = env
        .create(
            &image,
            &sandbox_name(),
            &["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
        )
        .await;
    env.client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    // Let the shell install its trap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let exit = env
        .client
        .stop_task(&id, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!(exit, Some(0), "the TERM trap ran, so no SIGKILL was needed");
    assert!(started.elapsed() < Duration::from_secs(10));
    env.client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn a_container_ignoring_sigterm_is_killed_after_the_grace() {
    let (env, image) = Env::with_busybox().await;
    // PID 1 without a handler ignores SIGTERM.
    let id = env
        .create(&image, &sandbox_name(), &["sleep", "1000"])
        .await;
    env.client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    let exit = env
        .client
        .stop_task(&id, Duration::from_millis(500))
        .await
        .expect("stop");
    assert_eq!(exit, Some(128 + 9), "killed by SIGKILL");
    env.client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn task_start_exit_and_container_delete_arrive_on_the_event_subscription() {
    let (env, image) = Env::with_busybox().await;
    let mut events = Box::pin(env.client.subscribe());
    let id = env
        .create(&image, &sandbox_name(), &["sh", "-c", "exit 3"])
        .await;
    let started = env
        .client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    let mut next_for = async |want: &str| {
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(event) = events.next().await {
                let matches = match &event {
                    ContainerdEvent::TaskStart { container_id, .. } => {
                        want == "start" && *container_id == id
                    }
                    ContainerdEvent::TaskExit { container_id, .. } => {
                        want == "exit" && *container_id == id
                    }
                    ContainerdEvent::ContainerDelete { container_id } => {
                        want == "delete" && *container_id == id
                    }
                    _ => false,
                };
                if matches {
                    return event;
                }
            }
            panic!("event stream ended");
        })
        .await
        .unwrap_or_else(|_| panic!("no {want} event within 20 s"))
    };
    assert_eq!(
        next_for("start").await,
        ContainerdEvent::TaskStart {
            container_id: id.clone(),
            pid: started.pid
        }
    );
    match next_for("exit").await {
        ContainerdEvent::TaskExit { exit_status, .. } => assert_eq!(exit_status, 3),
        other => panic!("unexpected {other:?}"),
    }
    env.client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
    assert_eq!(
        next_for("delete").await,
        ContainerdEvent::ContainerDelete {
            container_id: id.clone()
        }
    );
}

#[tokio::test]
async fn removing_a_container_leaves_no_container_task_snapshot_or_lease() {
    let (env, image) = Env::with_busybox().await;
    let id = env
        .create(&image, &sandbox_name(), &["sleep", "1000"])
        .await;
    env.client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    env.client
        .remove_container(&id, Duration::from_millis(200))
        .await
        .expect("remove");
    assert!(env.client.get_container(&id).await.expect("get").is_none());
    assert!(
        env.client
            .list_containers(&[])
            .await
            .expect("list")
            .is_empty()
    );
    assert!(env.client.list_tasks().await.expect("tasks").is_empty());
    assert!(env.client.stat_snapshot(&id).await.expect("stat").is_none());
    assert!(env.client.list_leases().await.expect("leases").is_empty());
    // Removing again is a no-op.
    env.client
        .remove_container(&id, Duration::from_millis(200))
        .await
        .expect("remove again");
}

#[tokio::test]
async fn creating_and_starting_the_same_container_twice_is_idempotent() {
    let (env, image) = Env::with_busybox().await;
    let sandbox = sandbox_name();
    let id = env.create(&image, &sandbox, &["sleep", "1000"]).await;
    let again = env.create(&image, &sandbox, &["sleep", "1000"]).await;
    assert_eq!(id, again);
    let first = env
        .client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    let second = env
        .client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start again");
    assert_eq!(first.pid, second.pid, "the running task was left alone");
    let owner = format!("sandbox/{sandbox}");
    let listed = env
        .client
        .list_containers(&[(LABEL_ENTITY_ID, owner.as_str())])
        .await
        .expect("list by label");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    env.client
        .remove_container(&id, Duration::from_millis(200))
        .await
        .expect("remove");
}

#[tokio::test]
async fn a_command_that_does_not_exist_fails_clearly_and_leaves_no_task() {
    let (env, image) = Env::with_busybox().await;
    let id = env.create(&image, &sandbox_name(), &["/nonexistent"]).await;
    let err = env
        .client
        .start_task(&id, &env.io(&id))
        .await
        .expect_err("cannot start a missing executable");
    assert!(err.to_string().contains("/nonexistent"), "{err}");
    assert!(env.client.task_status(&id).await.expect("status").is_none());
    env.client
        .remove_container(&id, Duration::from_millis(200))
        .await
        .expect("remove");
}

#[tokio::test]
async fn a_created_container_keeps_its_rootfs_through_garbage_collection() {
    let (env, image) = Env::with_busybox().await;
    let id = env
        .create(&image, &sandbox_name(), &["echo", "still here"])
        .await;
    env.client
        .delete_image(containerd_support::IMAGE)
        .await
        .expect("delete image");
    env.client.collect_garbage().await.expect("gc");
    assert!(env.client.stat_snapshot(&id).await.expect("stat").is_some());
    let io = env.io(&id);
    env.client.start_task(&id, &io).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(20), env.client.wait_task(&id))
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(exit, 0);
    let log = std::fs::read_to_string(&io.stdout).expect("log");
    assert!(log.contains("still here"), "{log:?}");
    env.client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn dropping_the_test_containerd_with_a_running_task_leaves_nothing_behind() {
    let (env, image) = Env::with_busybox().await;
    let id = env
        .create(&image, &sandbox_name(), &["sleep", "1000"])
        .await;
    let status = env
        .client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    let dir = env.ctrd.dir().to_path_buf();
    let cgroup = format!("/sys/fs/cgroup/memory/converge/{}", env.client.namespace());
    drop(env);
    assert!(!dir.exists(), "temp dir removed");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", status.pid)).exists(),
        "container process killed"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(dir.to_str().expect("utf-8 dir")),
        "nothing mounted under the temp dir"
    );
    assert!(
        !std::path::Path::new(&cgroup).exists(),
        "namespace cgroup removed"
    );
}

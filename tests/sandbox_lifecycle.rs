//! The sandbox reconciler against a private containerd and an in-process entity server:
//! run, stop, spec change, delete, restart policies, and failures.

mod sandbox_support;

use std::time::{Duration, Instant};

use converge_reconcilers::containerd::{
    LABEL_CONTAINER_NAME, LABEL_ENTITY_ID, LABEL_SANDBOX_REVISION, TaskState,
};
use sandbox_support::{Env, IMAGE};
use serde_json::{Value, json};

fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_runs_labelled_stops_on_request_is_recreated_on_change_and_vanishes_on_delete() {
    let mut env = Env::start().await;
    env.start_controller(false);
    let name = converge_testkit::unique_name("web");
    let spec = |state: &str, command: &[&str]| {
        json!({"state": state, "restart": "always",
               "containers": [{"name": "app", "image": IMAGE, "command": command}]})
    };
    let applied = env.apply(&name, spec("running", &["sleep", "1000"])).await;

    let status = env
        .wait_status(&name, "phase running", |s| phase(s) == "running")
        .await;
    assert_eq!(status["containers"][0]["name"], "app");
    assert_eq!(status["containers"][0]["state"], "running");
    assert_eq!(status["observed_revision"], applied.revision);
    let records = env
        .containerd
        .list_containers(&[(LABEL_ENTITY_ID, &format!("sandbox/{name}"))])
        .await
        .expect("list");
    assert_eq!(records.len(), 1, "one container, labelled with its owner");
    let record = &records[0];
    assert_eq!(record.id, format!("sandbox.{name}.app"));
    assert_eq!(record.labels[LABEL_CONTAINER_NAME], "app");
    let first_revision = record.labels[LABEL_SANDBOX_REVISION].clone();
    let task = env.containerd.task_status(&record.id).await.expect("task");
    assert_eq!(task.map(|t| t.state), Some(TaskState::Running));
    let log = env.data_dir.join("logs").join(&name).join("app.log");
    assert!(log.exists(), "task output goes to {}", log.display());

    env.apply(&name, spec("stopped", &["sleep", "1000"])).await;
    env.wait_status(&name, "phase stopped", |s| phase(s) == "stopped")
        .await;
    let task = env.containerd.task_status(&record.id).await.expect("task");
    assert_ne!(task.map(|t| t.state), Some(TaskState::Running));
    assert_eq!(
        env.containers_of(&name).await.len(),
        1,
        "stopping keeps the container"
    );

    env.apply(&name, spec("running", &["sleep", "1000"])).await;
    let status = env
        .wait_status(&name, "running again", |s| phase(s) == "running")
        .await;
    assert_eq!(
        status["containers"][0]["restart_count"], 0,
        "starting again on request is not a restart: {status}"
    );

    let changed = env.apply(&name, spec("running", &["sleep", "999"])).await;
    env.wait_status(&name, "running the new spec", |s| {
        phase(s) == "running" && s["observed_revision"] == changed.revision
    })
    .await;
    let records = env
        .containerd
        .list_containers(&[(LABEL_ENTITY_ID, &format!("sandbox/{name}"))])
        .await
        .expect("list");
    assert_eq!(records.len(), 1);
    assert_ne!(
        records[0].labels[LABEL_SANDBOX_REVISION], first_revision,
        "a changed container is recreated from the new revision"
    );

    env.client
        .delete(&sandbox_support::sandbox_id(&name), None)
        .await
        .expect("delete");
    let cid = record.id.clone();
    env.eventually("the container, task and snapshot are gone", || async {
        env.containers_of(&name).await.is_empty()
            && env
                .containerd
                .task_status(&cid)
                .await
                .expect("task")
                .is_none()
            && env
                .containerd
                .stat_snapshot(&cid)
                .await
                .expect("snapshot")
                .is_none()
    })
    .await;
    assert!(!log.exists(), "the sandbox's logs go with it");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_exit_event_with_restart_never_leaves_the_sandbox_dead_with_the_exit_code() {
    let mut env = Env::start().await;
    // No resync within the test: only containerd's exit event can reveal the exit.
    let mut config = env.config(false);
    config.resync = Duration::from_secs(3600);
    env.start_controller_with(config);
    let name = converge_testkit::unique_name("once");
    env.apply(
        &name,
        json!({"restart": "never",
               "containers": [{"name": "app", "image": IMAGE, "command": ["sh", "-c", "exit 3"]}]}),
    )
    .await;
    let status = env
        .wait_status(&name, "phase dead", |s| phase(s) == "dead")
        .await;
    assert_eq!(status["containers"][0]["exit_code"], 3);
    assert_eq!(status["containers"][0]["restart_count"], 0);
    assert!(
        status["message"].as_str().unwrap_or("").contains("code 3"),
        "{status}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_always_restarts_an_exiting_container_with_growing_delays() {
    let mut env = Env::start().await;
    env.start_controller(false);
    let name = converge_testkit::unique_name("flappy");
    env.apply(
        &name,
        json!({"restart": "always",
               "containers": [{"name": "app", "image": IMAGE, "command": ["sh", "-c", "exit 1"]}]}),
    )
    .await;
    // Restart n waits 300 ms * 2^(n-1): the gaps between restarts must grow.
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while seen.last().map_or(0, |s| s.0) < 4 {
        assert!(Instant::now() < deadline, "too few restarts: {seen:?}");
        let status = env.status(&name).await;
        let count = status["containers"][0]["restart_count"]
            .as_u64()
            .unwrap_or(0);
        if count > seen.last().map_or(0, |s| s.0) {
            seen.push((count, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = env.status(&name).await;
    assert_eq!(status["containers"][0]["exit_code"], 1, "{status}");
    let at = |n: u64| seen.iter().find(|s| s.0 >= n).map(|s| s.1).expect("seen");
    let early = at(2) - at(1);
    let late = at(4) - at(3);
    assert!(
        late > early,
        "delays must grow: restart 1->2 took {early:?}, 3->4 took {late:?} ({seen:?})"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_exist_fails_the_sandbox_with_a_message() {
    let mut env = Env::start().await;
    env.start_controller(false);
    let name = converge_testkit::unique_name("badcmd");
    env.apply(
        &name,
        json!({"containers": [{"name": "app", "image": IMAGE, "command": ["/no/such/binary"]}]}),
    )
    .await;
    let status = env
        .wait_status(&name, "phase failed", |s| phase(s) == "failed")
        .await;
    let message = status["message"].as_str().unwrap_or("");
    assert!(message.contains("container app"), "{message}");
    assert_eq!(status["containers"][0]["state"], "failed");
    env.shutdown().await;
}

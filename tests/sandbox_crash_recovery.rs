//! Crash safety of sandbox creation and teardown: `converge controller` (a child process)
//! is aborted by `CONVERGE_FAULT_AT` at each named step in turn, restarted without the
//! fault, and the sandbox must converge (running, its page served from its address) and
//! then be deleted leaving no container, task, snapshot, netns pin, veth, address, mount,
//! volume or log directory. Each test has its own private containerd, bridge and subnet
//! `10.199.<140..=155>.0/24` (no other test uses those).

mod crash_support;
mod sandbox_support;

use converge_testkit::unique_name;
use crash_support::{CrashEnv, PAGE, web_sandbox};

/// Creation crashes at `step`; a restarted controller finishes it; delete leaves nothing.
async fn crash_during_creation(step: &str, octet: u8) {
    let world = CrashEnv::start(octet).await;
    let name = unique_name("crash");
    let mut crashing = world.controller(Some(step));
    world.env.apply(&name, web_sandbox()).await;
    crashing.wait_abort(step).await;

    let mut controller = world.controller(None);
    let ip = world.wait_running(&name).await;
    world.wait_page(&ip, PAGE).await;
    world.delete(&name).await;
    world.wait_clean(&name).await;
    controller.kill().await;
    world.env.shutdown().await;
}

/// The sandbox runs; its deletion crashes at `step`; a restarted controller finishes the
/// teardown and leaves nothing.
async fn crash_during_teardown(step: &str, octet: u8) {
    let world = CrashEnv::start(octet).await;
    let name = unique_name("crash");
    let mut crashing = world.controller(Some(step));
    world.env.apply(&name, web_sandbox()).await;
    let ip = world.wait_running(&name).await;
    world.wait_page(&ip, PAGE).await;
    // The leak check sees every kind of thing a running sandbox holds.
    let held = world.leaks(&name).await;
    for kind in [
        "container ",
        "task ",
        "snapshot ",
        "netns pin ",
        "veth ",
        "ip ",
        "mount ",
        "volumes dir ",
        "logs dir ",
    ] {
        assert!(
            held.iter().any(|l| l.starts_with(kind)),
            "a running sandbox shows no {kind:?} in {held:#?}"
        );
    }
    world.delete(&name).await;
    crashing.wait_abort(step).await;

    let mut controller = world.controller(None);
    world.wait_clean(&name).await;
    controller.kill().await;
    world.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_address_is_allocated_converges_and_deletes_cleanly() {
    crash_during_creation("ip-allocated", 140).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_netns_is_pinned_converges_and_deletes_cleanly() {
    crash_during_creation("netns-pinned", 141).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_network_is_ready_converges_and_deletes_cleanly() {
    crash_during_creation("network-ready", 142).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_volumes_are_made_converges_and_deletes_cleanly() {
    crash_during_creation("volumes-ready", 143).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_container_record_and_its_rootfs_converges_and_deletes_cleanly() {
    crash_during_creation("container-record-created", 155).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_first_container_is_created_converges_and_deletes_cleanly() {
    crash_during_creation("container-created", 144).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_second_container_is_created_converges_and_deletes_cleanly() {
    crash_during_creation("container-created@2", 145).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_task_is_created_but_not_started_converges_and_deletes_cleanly() {
    crash_during_creation("task-created", 146).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_second_task_is_created_converges_and_deletes_cleanly() {
    crash_during_creation("task-created@2", 147).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_task_is_started_converges_and_deletes_cleanly() {
    crash_during_creation("task-started", 148).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_ports_are_ready_converges_and_deletes_cleanly() {
    crash_during_creation("ports-ready", 149).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_status_is_written_converges_and_deletes_cleanly() {
    crash_during_creation("status-written", 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_task_is_killed_in_teardown_still_deletes_cleanly() {
    crash_during_teardown("teardown-task-killed", 151).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_container_record_and_its_snapshot_still_deletes_cleanly() {
    crash_during_teardown("teardown-record-deleted", 152).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_containers_are_deleted_still_deletes_cleanly() {
    crash_during_teardown("teardown-containers-deleted", 153).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_network_is_removed_still_releases_the_address() {
    crash_during_teardown("teardown-network-removed", 154).await;
}

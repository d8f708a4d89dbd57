//! The runtime spec as runc applies it: the security profile and resource limits seen from inside and from the cgroup tree.

mod containerd_support;

use std::time::Duration;

use containerd_support::{Env, IMAGE, sandbox_name};
use converge_reconcilers::containerd::TaskState;
use converge_watch::spec::{ContainerSpec, Resources};

/// Docker's default capability set as a CapBnd mask.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

#[tokio::test]
async fn a_container_runs_with_the_default_profile_not_privileged() {
    let (env, image) = Env::with_busybox().await;
    let container = ContainerSpec {
        name: "app".into(),
        image: IMAGE.into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "grep -E 'CapBnd|CapEff|NoNewPrivs' /proc/self/status; \
             [ -s /proc/kcore ] && echo kcore-visible || echo kcore-masked; \
             echo x > /proc/sysrq-trigger || echo sysrq-readonly; \
             echo \"env=$GREETING\""
                .into(),
        ],
        env: [("GREETING".to_string(), "hello".to_string())].into(),
        ..Default::default()
    };
    let id = env.create_with(&image, &sandbox_name(), &container).await;
    let io = env.io(&id);
    env.client.start_task(&id, &io).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(20), env.client.wait_task(&id))
        .await
        .expect("exits")
        .expect("wait");
    let log = std::fs::read_to_string(&io.stdout).expect("log");
    assert_eq!(exit, 0, "{log}");
    assert!(
        log.contains(&format!("CapBnd:\t{DOCKER_DEFAULT_CAPS}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("CapEff:\t{DOCKER_DEFAULT_CAPS}")),
        "{log}"
    );
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    assert!(log.contains("kcore-masked"), "{log}");
    assert!(log.contains("sysrq-readonly"), "{log}");
    assert!(log.contains("env=hello"), "{log}");
    env.client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn memory_and_cpu_limits_land_in_the_container_cgroup() {
    let (env, image) = Env::with_busybox().await;
    let container = ContainerSpec {
        name: "app".into(),
        image: IMAGE.into(),
        command: vec!["sleep".into(), "1000".into()],
        resources: Some(Resources {
            memory_mb: Some(64),
            cpu_millis: Some(250),
        }),
        ..Default::default()
    };
    let id = env.create_with(&image, &sandbox_name(), &container).await;
    let status = env
        .client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    assert_eq!(status.state, TaskState::Running);
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", status.pid)).expect("cgroup");
    let expected = format!("/converge/{}/{id}", env.client.namespace());
    assert!(cgroup.contains(&expected), "{cgroup}");
    let v1_memory = format!("/sys/fs/cgroup/memory{expected}/memory.limit_in_bytes");
    let v2_memory = format!("/sys/fs/cgroup{expected}/memory.max");
    let memory = std::fs::read_to_string(&v1_memory)
        .or_else(|_| std::fs::read_to_string(&v2_memory))
        .expect("memory limit file");
    assert_eq!(memory.trim(), (64 * 1024 * 1024).to_string());
    let v1_quota = format!("/sys/fs/cgroup/cpu{expected}/cpu.cfs_quota_us");
    if let Ok(quota) = std::fs::read_to_string(&v1_quota) {
        assert_eq!(quota.trim(), "25000");
    } else {
        let max =
            std::fs::read_to_string(format!("/sys/fs/cgroup{expected}/cpu.max")).expect("cpu.max");
        assert_eq!(max.trim(), "25000 100000");
    }
    env.client
        .remove_container(&id, Duration::from_millis(200))
        .await
        .expect("remove");
}

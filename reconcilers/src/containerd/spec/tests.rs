//! Unit tests of the runtime spec builder: security profile, namespaces, limits, env and args.
use super::*;
use converge_watch::spec::Resources;
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

fn image(env: &[&str], entrypoint: &[&str], cmd: &[&str], user: &str) -> ImageConfiguration {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ImageConfigurationBuilder::default()
        .config(
            ConfigBuilder::default()
                .env(strings(env))
                .entrypoint(strings(entrypoint))
                .cmd(strings(cmd))
                .user(user.to_string())
                .build()
                .expect("config"),
        )
        .build()
        .expect("image")
}

fn spec_for(image: &ImageConfiguration, container: &ContainerSpec) -> Result<Spec, SpecError> {
    build_runtime_spec(&RuntimeSpecInput {
        container_id: "sandbox.web.app",
        namespace: "converge",
        hostname: "web",
        image,
        container,
        netns: None,
        extra_mounts: Vec::new(),
    })
}

#[test]
fn the_default_profile_is_not_privileged() {
    let img = image(&[], &[], &["sh"], "");
    let spec = spec_for(&img, &ContainerSpec::default()).expect("spec");
    let process = spec.process().as_ref().expect("process");
    assert_eq!(process.no_new_privileges(), Some(true));
    let caps = process.capabilities().as_ref().expect("caps");
    let bounding = caps.bounding().as_ref().expect("bounding");
    assert!(bounding.contains(&Capability::NetBindService));
    assert!(bounding.contains(&Capability::Chown));
    assert!(!bounding.contains(&Capability::SysAdmin));
    assert!(!bounding.contains(&Capability::NetAdmin));
    assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
    let linux = spec.linux().as_ref().expect("linux");
    let masked = linux.masked_paths().as_ref().expect("masked");
    assert!(masked.contains(&"/proc/kcore".to_string()));
    assert!(masked.contains(&"/proc/keys".to_string()));
    let ro = linux.readonly_paths().as_ref().expect("ro");
    assert!(ro.contains(&"/proc/sys".to_string()));
    assert!(ro.contains(&"/proc/sysrq-trigger".to_string()));
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/converge/converge/sandbox.web.app"))
    );
    let destinations: Vec<_> = spec
        .mounts()
        .as_ref()
        .expect("mounts")
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
    ] {
        assert!(destinations.contains(&d.to_string()), "{d}");
    }
}

#[test]
fn host_network_unless_a_netns_path_is_given() {
    let img = image(&[], &[], &["sh"], "");
    let container = ContainerSpec::default();
    let spec = spec_for(&img, &container).expect("spec");
    let has_net = |spec: &Spec| {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network)
    };
    assert!(!has_net(&spec));
    let spec = build_runtime_spec(&RuntimeSpecInput {
        container_id: "c",
        namespace: "n",
        hostname: "h",
        image: &img,
        container: &container,
        netns: Some(Path::new("/var/run/netns/x")),
        extra_mounts: Vec::new(),
    })
    .expect("spec");
    assert!(has_net(&spec));
}

#[test]
fn memory_and_cpu_limits_come_from_resources() {
    let img = image(&[], &[], &["sh"], "");
    let container = ContainerSpec {
        resources: Some(Resources {
            memory_mb: Some(64),
            cpu_millis: Some(250),
        }),
        ..Default::default()
    };
    let spec = spec_for(&img, &container).expect("spec");
    let res = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .expect("resources");
    assert_eq!(
        res.memory().as_ref().and_then(|m| m.limit()),
        Some(64 * 1024 * 1024)
    );
    let cpu = res.cpu().as_ref().expect("cpu");
    assert_eq!(cpu.quota(), Some(25_000));
    assert_eq!(cpu.period(), Some(CPU_PERIOD_US));
}

#[test]
fn container_env_overrides_image_env_and_path_defaults() {
    let img = image(&["A=image", "B=image"], &[], &["sh"], "");
    let container = ContainerSpec {
        env: BTreeMap::from([("B".to_string(), "container".to_string())]),
        ..Default::default()
    };
    let env = process_env(&img, &container);
    assert!(env.contains(&"A=image".to_string()));
    assert!(env.contains(&"B=container".to_string()));
    assert!(!env.contains(&"B=image".to_string()));
    assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
}

#[test]
fn command_replaces_entrypoint_and_cmd() {
    let img = image(&[], &["/entry"], &["arg"], "");
    assert_eq!(
        process_args(&img, &ContainerSpec::default()),
        vec!["/entry", "arg"]
    );
    let container = ContainerSpec {
        command: vec!["echo".into(), "hi".into()],
        ..Default::default()
    };
    assert_eq!(process_args(&img, &container), vec!["echo", "hi"]);
}

#[test]
fn missing_command_and_named_users_are_clear_errors() {
    let img = image(&[], &[], &[], "");
    let err = spec_for(&img, &ContainerSpec::default()).expect_err("no command");
    assert!(err.to_string().contains("command"), "{err}");
    let img = image(&[], &[], &["sh"], "www-data");
    let err = spec_for(&img, &ContainerSpec::default()).expect_err("named user");
    assert!(err.to_string().contains("www-data"), "{err}");
    let img = image(&[], &[], &["sh"], "1000:100");
    let spec = spec_for(&img, &ContainerSpec::default()).expect("numeric user");
    let user = spec.process().as_ref().expect("process").user().clone();
    assert_eq!((user.uid(), user.gid()), (1000, 100));
}

//! `cargo xtask image` and `cargo xtask image-check`: the images of `deploy/Dockerfile`, built
//! with the container runtime this machine has (docker, or podman), and the agent image run the
//! way the DaemonSet runs it.
//!
//! Registries may be out of reach: the base images are then built from Debian packages
//! (`mmdebstrap`, the host's apt sources) and imported. Outbound TLS may be intercepted: the
//! host's CA bundle is handed to the build as a secret, which no layer keeps.

use std::{
    collections::BTreeSet,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use crate::{fixture, run, run_quietly, setup, stage, workspace_root};

/// The tags the compose file uses too.
pub(crate) const AGENT_IMAGE: &str = "flowtap:local";
pub(crate) const DEMO_IMAGE: &str = "flowtap-demo:local";

/// The images the Dockerfile's `FROM` arguments default to, and the local equivalents built
/// when they cannot be pulled.
const DEBIAN_IMAGE: &str = "debian:bookworm-slim";
const DEBIAN_BASE: &str = "flowtap-base/debian:bookworm-slim";

/// Where the official rust image keeps rustup and cargo; the local base does the same.
const RUST_ENV: [&str; 3] = [
    "RUSTUP_HOME=/usr/local/rustup",
    "CARGO_HOME=/usr/local/cargo",
    "PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
];

/// What the rust image has beyond minbase that the build needs.
const RUST_BASE_PACKAGES: &str = "ca-certificates,curl,git,gcc,libc6-dev,make,pkg-config,xz-utils";

fn rust_image() -> String {
    format!("rust:{}-bookworm", setup::RUST_TOOLCHAIN)
}

fn rust_base() -> String {
    format!("flowtap-base/rust:{}-bookworm", setup::RUST_TOOLCHAIN)
}

fn out_dir() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/image");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A container runtime's client.
pub(crate) struct Runtime {
    client: PathBuf,
    podman: bool,
    /// Podman's configuration, when its defaults do not fit this machine.
    containers_conf: Option<PathBuf>,
}

impl Runtime {
    fn docker(client: impl Into<PathBuf>) -> Self {
        Self {
            client: client.into(),
            podman: false,
            containers_conf: None,
        }
    }

    fn podman() -> Self {
        Self {
            client: "podman".into(),
            podman: true,
            containers_conf: None,
        }
    }

    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(&self.client);
        self.environment(&mut command);
        command
    }

    /// What every command talking to this runtime needs in its environment.
    fn environment(&self, command: &mut Command) {
        if !self.podman {
            command.env("DOCKER_BUILDKIT", "1");
        }
        if let Some(conf) = &self.containers_conf {
            command.env("CONTAINERS_CONF", conf);
        }
    }

    fn succeeds(&self, args: &[&str]) -> bool {
        self.command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self
            .command()
            .args(args)
            .output()
            .with_context(|| format!("cannot start {}", self.client.display()))?;
        ensure!(
            output.status.success(),
            "{} {} failed: {}",
            self.client.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Docker when an engine answers (started, and installed, here when needed), else podman.
pub(crate) fn runtime() -> anyhow::Result<Runtime> {
    if !engine_answers() {
        if on_path("podman") {
            return Ok(Runtime::podman());
        }
        start_docker_engine()?;
    }
    Ok(Runtime::docker(buildkit_client()?))
}

fn engine_answers() -> bool {
    on_path("docker")
        && Command::new("docker")
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

/// Installs Debian's docker.io when there is no dockerd, starts it in its own session (it
/// outlives xtask, like a service would), and waits for it to answer.
fn start_docker_engine() -> anyhow::Result<()> {
    if !on_path("dockerd") {
        stage("installing Debian's docker.io (no container runtime found)");
        run_quietly(Command::new("apt-get").args(["install", "-y", "-q", "docker.io"]))?;
    }
    stage("starting dockerd");
    spawn_service(&mut Command::new("dockerd"), "dockerd")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !engine_answers() {
        ensure!(
            Instant::now() < deadline,
            "dockerd did not answer within 60 s: see target/image/dockerd.log"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// Starts a daemon in its own session (it outlives xtask, like a service would), its output
/// in target/image/NAME.log.
fn spawn_service(command: &mut Command, name: &str) -> anyhow::Result<()> {
    let log = std::fs::File::create(out_dir()?.join(format!("{name}.log")))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let new_session = || {
        // SAFETY: setsid in the forked child before exec; it allocates nothing.
        if unsafe { libc::setsid() } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure calls only setsid, which is async-signal-safe.
    unsafe { command.pre_exec(new_session) };
    command
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(())
}

/// A docker client that builds with BuildKit (the Dockerfile mounts its secret and caches):
/// one with the buildx plugin, or a client older than 23.0, which has BuildKit built in
/// (Debian's docker.io installs one as /usr/bin/docker).
fn buildkit_client() -> anyhow::Result<PathBuf> {
    for client in ["docker", "/usr/bin/docker"] {
        let runtime = Runtime::docker(client);
        let builtin = runtime
            .output(&["version", "--format", "{{.Client.Version}}"])
            .ok()
            .and_then(|version| version.trim().split('.').next()?.parse::<u32>().ok())
            .is_some_and(|major| major < 23);
        if builtin || runtime.succeeds(&["buildx", "version"]) {
            return Ok(client.into());
        }
    }
    bail!(
        "no docker client that builds with BuildKit: install the buildx plugin (docker-buildx) or Debian's docker.io"
    )
}

/// The image to build `FROM`: the public one when it is here or can be pulled, else the
/// local equivalent, built from Debian packages the first time.
fn base_image(
    runtime: &Runtime,
    public: &str,
    local: &str,
    build: impl FnOnce(&Runtime, &str) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    if runtime.succeeds(&["image", "inspect", public]) || runtime.succeeds(&["pull", public]) {
        return Ok(public.to_string());
    }
    if !runtime.succeeds(&["image", "inspect", local]) {
        stage(&format!(
            "{public} cannot be pulled: building {local} from Debian packages"
        ));
        build(runtime, local)?;
    }
    Ok(local.to_string())
}

/// `deb URI SUITE COMPONENTS` lines of the host's Debian sources (deb822 or one-line), for
/// mmdebstrap; other repositories (third-party keys, https) are left out.
fn debian_sources() -> Vec<String> {
    let deb822 =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let mut lines: Vec<String> = deb822
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            (field("Types")? == "deb").then_some(())?;
            let (uri, components) = (field("URIs")?, field("Components")?);
            Some(
                field("Suites")?
                    .split_whitespace()
                    .map(|suite| format!("deb {uri} {suite} {components}"))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    lines.extend(
        list.lines()
            .map(str::trim)
            .filter(|line| line.starts_with("deb http") && line.contains("/debian"))
            .map(String::from),
    );
    if lines.is_empty() {
        lines = ["bookworm", "bookworm-updates"]
            .map(|suite| format!("deb http://deb.debian.org/debian {suite} main"))
            .into_iter()
            .chain(["deb http://deb.debian.org/debian-security bookworm-security main".into()])
            .collect();
    }
    lines
}

/// `mmdebstrap --variant=minbase bookworm` into a tarball, imported as `tag`.
fn debootstrap_image(
    runtime: &Runtime,
    tag: &str,
    options: &[String],
    env: &[&str],
) -> anyhow::Result<()> {
    if !on_path("mmdebstrap") {
        run_quietly(Command::new("apt-get").args(["install", "-y", "-q", "mmdebstrap"]))?;
    }
    let tarball = out_dir()?.join("rootfs.tar");
    run_quietly(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--quiet"])
            .args(options)
            .arg("bookworm")
            .arg(&tarball)
            .args(debian_sources()),
    )
    .with_context(|| format!("building the root file system of {tag}"))?;
    let mut import = runtime.command();
    import.arg("import");
    for variable in env {
        import.args(["--change", &format!("ENV {variable}")]);
    }
    run_quietly(import.arg(&tarball).arg(tag))?;
    std::fs::remove_file(&tarball)?;
    Ok(())
}

/// Like debian:bookworm-slim: minbase without documentation.
fn build_debian_base(runtime: &Runtime, tag: &str) -> anyhow::Result<()> {
    let options = [
        "/usr/share/doc/*",
        "/usr/share/man/*",
        "/usr/share/locale/*",
    ]
    .map(|path| format!("--dpkgopt=path-exclude={path}"));
    debootstrap_image(runtime, tag, &options, &[])
}

/// Like the rust image: the compilers' packages, and rustup with the pinned toolchain in
/// /usr/local. The host's rustup installs it (run as rustup-init, into the new root).
fn build_rust_base(runtime: &Runtime, tag: &str) -> anyhow::Result<()> {
    let rustup = Command::new("sh")
        .args(["-c", "command -v rustup"])
        .output()
        .context("looking for rustup")?;
    let rustup = String::from_utf8_lossy(&rustup.stdout).trim().to_string();
    ensure!(
        !rustup.is_empty(),
        "rustup is not on PATH: run `cargo xtask setup`"
    );
    let rustup_init = out_dir()?.join("rustup-init");
    std::fs::copy(&rustup, &rustup_init)?;
    let hook = format!(
        "env -u RUSTUP_TOOLCHAIN -u CARGO -u RUSTC RUSTUP_HOME=\"$1/usr/local/rustup\" \
         CARGO_HOME=\"$1/usr/local/cargo\" {} -y --no-modify-path --profile minimal \
         --default-toolchain {}",
        rustup_init.display(),
        setup::RUST_TOOLCHAIN
    );
    let options = [
        format!("--include={RUST_BASE_PACKAGES}"),
        format!("--customize-hook={hook}"),
    ];
    let mut env = RUST_ENV.to_vec();
    let version = format!("RUST_VERSION={}", setup::RUST_TOOLCHAIN);
    env.push(&version);
    debootstrap_image(runtime, tag, &options, &env)
}

/// The CA bundle the host trusts (and, behind an intercepting proxy, the proxy's CA with it).
fn host_ca_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .or_else(|| Some("/etc/ssl/certs/ca-certificates.crt".into()))
        .filter(|path| path.is_file())
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map_or_else(
            || "unknown".into(),
            |output| String::from_utf8_lossy(&output.stdout).trim().to_string(),
        )
}

/// One `docker build --target`, its output in target/image/build-TARGET.log (the end of it
/// shown when it fails).
fn build_target(
    runtime: &Runtime,
    target: &str,
    tag: &str,
    bases: &[(&str, &str)],
) -> anyhow::Result<Duration> {
    let log_path = out_dir()?.join(format!("build-{target}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut build = runtime.command();
    build
        .args([
            "build",
            "--file",
            "deploy/Dockerfile",
            "--target",
            target,
            "--tag",
            tag,
        ])
        .args([
            "--build-arg",
            &format!("FLOWTAP_GIT_COMMIT={}", git_commit()),
        ]);
    if !runtime.podman {
        build.arg("--progress=plain");
    }
    for (arg, image) in bases {
        build.args(["--build-arg", &format!("{arg}={image}")]);
    }
    if let Some(bundle) = host_ca_bundle() {
        build.args(["--secret", &format!("id=ca,src={}", bundle.display())]);
    }
    let started = Instant::now();
    let status = build
        .arg(".")
        .current_dir(workspace_root())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("cannot start the image build")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        bail!(
            "building {tag} failed: the whole log is {}",
            log_path.display()
        );
    }
    Ok(started.elapsed())
}

/// `cargo xtask image`: the base images, then the demo and agent images; prints what is in
/// the agent image.
pub(crate) fn build() -> anyhow::Result<Built> {
    let runtime = runtime()?;
    stage(&format!(
        "images with {} (base images, then the demo and the agent)",
        runtime.client.display()
    ));
    let rust = base_image(&runtime, &rust_image(), &rust_base(), build_rust_base)?;
    let debian = base_image(&runtime, DEBIAN_IMAGE, DEBIAN_BASE, build_debian_base)?;
    let bases = [
        ("RUST_IMAGE", rust.as_str()),
        ("DEBIAN_IMAGE", debian.as_str()),
    ];
    // The demo first: it builds the toolchain and the build stages the agent then reuses.
    let demo_time = build_target(&runtime, "demo", DEMO_IMAGE, &bases)?;
    let agent_time = build_target(&runtime, "flowtap", AGENT_IMAGE, &bases)?;
    println!(
        "image: built {DEMO_IMAGE} in {} s and then {AGENT_IMAGE} in {} s (from {rust} and {debian})",
        demo_time.as_secs(),
        agent_time.as_secs()
    );
    describe(&runtime, &rust)?;
    Ok(Built { runtime, debian })
}

/// The runtime the images were built with, and the Debian base they used.
pub(crate) struct Built {
    runtime: Runtime,
    debian: String,
}

fn size_mb(runtime: &Runtime, image: &str) -> anyhow::Result<f64> {
    let bytes: f64 = runtime
        .output(&["image", "inspect", "--format", "{{.Size}}", image])?
        .trim()
        .parse()
        .context("image size")?;
    Ok(bytes / 1e6)
}

/// The images' sizes, the agent's shared libraries (its loader's `--list`: the image has no
/// ldd) and `flowtap --version` inside it; and that no layer holds a certificate that only the
/// host trusts (the proxy's CA of the build secret).
fn describe(runtime: &Runtime, rust_image: &str) -> anyhow::Result<()> {
    let agent = size_mb(runtime, AGENT_IMAGE)?;
    let demo = size_mb(runtime, DEMO_IMAGE)?;
    let libraries = runtime.output(&[
        "run",
        "--rm",
        "--entrypoint",
        "/lib64/ld-linux-x86-64.so.2",
        AGENT_IMAGE,
        "--list",
        "/usr/local/bin/flowtap",
    ])?;
    let version = runtime.output(&["run", "--rm", AGENT_IMAGE, "--version"])?;
    let host_only = host_only_certificates(runtime, rust_image)?;
    let leaked = certificates_in_images(runtime, &host_only)?;
    ensure!(
        leaked == 0,
        "{leaked} of the host's own CA certificates are in a layer of the images"
    );
    println!("image: {AGENT_IMAGE} {agent:.1} MB, {DEMO_IMAGE} {demo:.1} MB");
    println!(
        "image: the agent's shared libraries:\n{}",
        libraries.trim_end()
    );
    println!(
        "image: `flowtap --version` in {AGENT_IMAGE}:\n{}",
        version.trim_end()
    );
    println!(
        "image: none of the {} certificates only the host trusts is in either image",
        host_only.len()
    );
    Ok(())
}

/// Base64 lines of the certificates in the host's bundle that Debian's bundle (the build
/// image's) lacks: the ones the build secret brings.
fn host_only_certificates(runtime: &Runtime, rust_image: &str) -> anyhow::Result<Vec<String>> {
    let Some(bundle) = host_ca_bundle() else {
        return Ok(Vec::new());
    };
    let host = std::fs::read_to_string(bundle)?;
    let debian = runtime.output(&[
        "run",
        "--rm",
        "--entrypoint",
        "cat",
        rust_image,
        "/etc/ssl/certs/ca-certificates.crt",
    ])?;
    let certificate_lines = |pem: &str| -> Vec<String> {
        pem.split("-----END CERTIFICATE-----")
            .filter_map(|certificate| {
                // The last full line before the end: unique to the certificate.
                let lines: Vec<&str> = certificate.lines().map(str::trim).collect();
                lines
                    .iter()
                    .rev()
                    .find(|line| line.len() == 64)
                    .map(|line| line.to_string())
            })
            .collect()
    };
    let known = certificate_lines(&debian);
    Ok(certificate_lines(&host)
        .into_iter()
        .filter(|line| !known.contains(line))
        .collect())
}

/// How many of `lines` occur in the saved images (their layers uncompressed).
fn certificates_in_images(runtime: &Runtime, lines: &[String]) -> anyhow::Result<usize> {
    if lines.is_empty() {
        return Ok(0);
    }
    let archive = out_dir()?.join("images.tar");
    run(runtime
        .command()
        .args(["save", "--output"])
        .arg(&archive)
        .args([AGENT_IMAGE, DEMO_IMAGE]))?;
    let bytes = std::fs::read(&archive)?;
    std::fs::remove_file(&archive)?;
    // A PEM file in a layer keeps its lines whole.
    let wanted: BTreeSet<&[u8]> = lines.iter().map(|line| line.as_bytes()).collect();
    let found: BTreeSet<&[u8]> = bytes
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| wanted.contains(line))
        .collect();
    Ok(found.len())
}

/// `cargo xtask image-check`: builds the images and the host's fixture, then runs the
/// container tests (`tests/tests/image.rs`, ignored by the plain test run) and the compose
/// stack.
pub(crate) fn check(agent_tests: &mut Command) -> anyhow::Result<()> {
    let Built { runtime, debian } = build()?;
    let fixture = fixture::build()?;
    fixture::mount_tracefs()?;
    let started = Instant::now();
    let runner = container_runner(runtime, &debian)?;
    stage(&format!(
        "the agent image run as the DaemonSet runs it, with {} (tests/tests/image.rs)",
        runner.client.display()
    ));
    runner.environment(agent_tests);
    run(agent_tests
        .args(["--test", "image", "--", "--ignored", "--test-threads=1"])
        .env("FLOWTAP_CONTAINER_CLIENT", &runner.client)
        .env("FLOWTAP_IMAGE", AGENT_IMAGE)
        .env("FLOWTAP_DEMO_IMAGE", DEMO_IMAGE)
        .env("FLOWTAP_FIXTURE", fixture))?;
    compose_check(&runner, &debian)?;
    println!(
        "image-check: the container tests and the compose stack took {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// The runtime that runs the containers: the one that built them when it can grant CAP_BPF
/// and CAP_PERFMON; else podman (Debian's), the images copied over. Docker 20.10 (Debian
/// 12's docker.io) refuses them: "invalid CapAdd: unknown capability: CAP_BPF".
fn container_runner(built: Runtime, debian: &str) -> anyhow::Result<Runtime> {
    let probe = built
        .command()
        .args([
            "run",
            "--rm",
            "--cap-drop=ALL",
            "--cap-add=BPF",
            "--cap-add=PERFMON",
        ])
        .args([AGENT_IMAGE, "--version"])
        .output()?;
    if built.podman || probe.status.success() {
        return Ok(built);
    }
    println!(
        "image-check: {} cannot grant CAP_BPF and CAP_PERFMON ({}); running the containers with podman",
        built.client.display(),
        String::from_utf8_lossy(&probe.stderr)
            .lines()
            .next()
            .unwrap_or_default()
    );
    if !on_path("podman") {
        stage("installing Debian's podman");
        run_quietly(Command::new("apt-get").args(["install", "-y", "-q", "podman"]))?;
    }
    let podman = Runtime {
        containers_conf: Some(podman_conf()?),
        ..Runtime::podman()
    };
    let archive = out_dir()?.join("images.tar");
    run_quietly(
        built
            .command()
            .args(["save", "--output"])
            .arg(&archive)
            // The Debian base too: compose builds Prometheus from it.
            .args([AGENT_IMAGE, DEMO_IMAGE, debian]),
    )?;
    run_quietly(podman.command().args(["load", "--input"]).arg(&archive))?;
    std::fs::remove_file(&archive)?;
    Ok(podman)
}

/// Podman raises the containers' open-file and process limits to values only
/// CAP_SYS_RESOURCE may set, which this machine kind's root lacks ("error setting rlimits
/// ... operation not permitted"): these fit under its limits.
fn podman_conf() -> anyhow::Result<PathBuf> {
    let path = out_dir()?.join("containers.conf");
    std::fs::write(
        &path,
        "[containers]\ndefault_ulimits = [\"nofile=16384:16384\", \"nproc=8192:8192\"]\n",
    )?;
    Ok(path)
}

/// The compose stack of deploy/compose with the Debian override, as project
/// flowtap-image-check: the v2 plugin when the client has it, else Debian's docker-compose
/// (installed when absent).
struct Compose {
    program: PathBuf,
    plugin: bool,
    debian: String,
    /// Where compose finds the engine's API.
    runtime_env: Vec<(String, String)>,
}

impl Compose {
    fn new(runtime: &Runtime, debian: &str) -> anyhow::Result<Self> {
        let plugin = runtime.succeeds(&["compose", "version"]);
        if !plugin && !on_path("docker-compose") {
            stage("installing Debian's docker-compose");
            run_quietly(Command::new("apt-get").args(["install", "-y", "-q", "docker-compose"]))?;
        }
        let runtime_env = if runtime.podman {
            vec![("DOCKER_HOST".to_string(), podman_socket(runtime)?)]
        } else {
            Vec::new()
        };
        Ok(Self {
            program: if plugin {
                runtime.client.clone()
            } else {
                "docker-compose".into()
            },
            plugin,
            debian: debian.to_string(),
            runtime_env,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        self.runtime_env.iter().for_each(|(k, v)| {
            command.env(k, v);
        });
        if self.plugin {
            command.arg("compose");
        }
        command
            .current_dir(workspace_root().join("deploy/compose"))
            .env("DEBIAN_IMAGE", &self.debian)
            .args(["-p", "flowtap-image-check", "-f", "docker-compose.yaml"])
            .args(["-f", "docker-compose.debian.yaml"])
            .args(args);
        command
    }

    /// PromQL `expr` evaluated by promtool inside the Prometheus container.
    fn query(&self, expr: &str) -> anyhow::Result<String> {
        let output = self
            .command(&["exec", "-T", "prometheus", "promtool", "query", "instant"])
            .args(["http://localhost:9090", expr])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }
}

/// Podman's Docker-compatible API for compose, started when it does not answer; returns its
/// DOCKER_HOST.
fn podman_socket(podman: &Runtime) -> anyhow::Result<String> {
    let socket = std::path::Path::new("/run/podman/podman.sock");
    if std::os::unix::net::UnixStream::connect(socket).is_err() {
        stage("starting podman's API service for compose");
        std::fs::create_dir_all("/run/podman")?;
        let mut service = podman.command();
        service
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()));
        spawn_service(&mut service, "podman-service")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            ensure!(
                Instant::now() < deadline,
                "podman's API service did not start: see target/image/podman-service.log"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(format!("unix://{}", socket.display()))
}

/// The compose stack's services that build here (the demo and flowtap from the images, and
/// Prometheus from Debian's package) started together; passes when Prometheus, inside the
/// compose network, scrapes flowtap and has its call counts. Jaeger and Grafana are images
/// only a registry has.
fn compose_check(runtime: &Runtime, debian: &str) -> anyhow::Result<()> {
    stage("compose: demo, flowtap and Prometheus (Debian's) started; Prometheus scrapes flowtap");
    let compose = Compose::new(runtime, debian)?;
    run_quietly(&mut compose.command(&["build", "prometheus"]))?;
    let up = run_quietly(&mut compose.command(&[
        "up",
        "-d",
        "--no-deps",
        "--no-build",
        "demo",
        "flowtap",
        "prometheus",
    ]));
    let scraped = up.and_then(|()| wait_for_scrape(&compose));
    if scraped.is_err()
        && let Ok(logs) = compose.command(&["logs", "--no-color", "flowtap"]).output()
    {
        eprintln!("{}", String::from_utf8_lossy(&logs.stdout));
    }
    // flowtap first: it shares the demo's PID namespace, and podman refuses to remove the demo
    // while it exists ("has dependent containers"), which `down` alone may try.
    let down = run_quietly(&mut compose.command(&["rm", "--stop", "--force", "flowtap"]))
        .and_then(|()| run_quietly(&mut compose.command(&["down", "--volumes"])));
    scraped.and(down)
}

/// Asks Prometheus until flowtap's target is up and its call counts are stored, at most 90 s.
fn wait_for_scrape(compose: &Compose) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let up = compose.query(r#"up{job="flowtap"}"#)?;
        let calls = compose.query("sum(flowtap_function_calls_total)")?;
        if up.contains("=> 1 @") && calls.contains("=> ") && !calls.contains("=> 0 @") {
            println!("compose: Prometheus scrapes flowtap: {up}; {calls}");
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "Prometheus did not scrape flowtap's calls within 90 s: `{up}` `{calls}`"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

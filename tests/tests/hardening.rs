//! flowtap runs as root or with capabilities: files other users control do not steer it, its
//! outputs are not a way to overwrite files, and what it launches gets none of its privileges.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
};

use flowtap_tests::*;

const NOBODY: u32 = 65534;

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// A directory anyone may write to, as `/tmp` or a shared project directory.
fn shared_dir(test: &str) -> std::path::PathBuf {
    let dir = scratch_dir(test);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

#[test]
fn a_config_file_planted_by_another_user_is_ignored() {
    let dir = shared_dir("planted-config");
    let victim = dir.join("root-only");
    std::fs::write(&victim, "root's data").unwrap();
    let marker = dir.join("ran");
    let config = dir.join("flowtap.toml");
    std::fs::write(
        &config,
        format!(
            "output = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"touch {}\"]\n",
            victim.display(),
            marker.display()
        ),
    )
    .unwrap();
    chown(&config, NOBODY);
    let output = flowtap()
        .current_dir(&dir)
        .args(["run", "--symbols", "libc.so.6:getpid"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ignoring ./flowtap.toml: it is owned by uid 65534"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the planted command ran");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's data");

    // Owned by root but writable by others: the same.
    chown(&config, 0);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = flowtap()
        .current_dir(&dir)
        .args(["run", "--symbols", "libc.so.6:getpid", "--", "/bin/true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("writable by group or others (mode 666)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's data");
}

#[test]
fn a_command_from_a_config_file_is_shown_before_it_runs() {
    let dir = scratch_dir("config-command");
    let config = dir.join("flowtap.toml");
    std::fs::write(
        &config,
        "symbols = [\"libc.so.6:getpid\"]\ncommand = [\"/bin/true\", \"--from-config\"]\n",
    )
    .unwrap();
    let output = flowtap().current_dir(&dir).arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("launching the command of flowtap.toml: /bin/true --from-config"),
        "{stderr}"
    );
}

#[test]
fn a_refused_run_leaves_an_existing_output_as_it_was() {
    let dir = scratch_dir("refused-output");
    let report = dir.join("report.json");
    let spans = dir.join("spans.jsonl");
    std::fs::write(&report, "yesterday's report").unwrap();
    let (code, _, stderr) = run_flowtap(&[
        "run",
        "--pid",
        "999999999",
        "--output",
        report.to_str().unwrap(),
        "--spans-out",
        spans.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        "yesterday's report"
    );
    assert!(!spans.exists(), "a refused run left a spans file behind");

    // A run that starts writes the report, and a new file is private.
    let fresh = dir.join("fresh.json");
    let (code, _, stderr) = run_flowtap(&[
        "run",
        "--symbols",
        "libc.so.6:getpid",
        "--output",
        fresh.to_str().unwrap(),
        "--",
        "/bin/true",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fresh.metadata().unwrap().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&fresh)
            .unwrap()
            .starts_with("FUNCTION")
    );
}

#[test]
fn an_output_through_another_users_symlink_is_refused() {
    let dir = shared_dir("output-symlink");
    let victim = dir.join("root-only");
    std::fs::write(&victim, "root's data").unwrap();
    let link = dir.join("report.txt");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    chown(&link, NOBODY);
    let (code, _, stderr) = run_flowtap(&[
        "run",
        "--symbols",
        "libc.so.6:getpid",
        "--output",
        link.to_str().unwrap(),
        "--",
        "/bin/true",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("is a symbolic link owned by uid 65534"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's data");
}

#[test]
fn two_outputs_naming_the_same_file_are_refused() {
    let dir = scratch_dir("same-output");
    let path = dir.join("out");
    let (code, _, stderr) = run_flowtap(&[
        "run",
        "--output",
        path.to_str().unwrap(),
        "--spans-out",
        &format!("{}/./out", dir.display()),
        "--",
        "/bin/true",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--output and --spans-out name the same file"),
        "{stderr}"
    );
}

/// A selector naming the launched shell (`sh`, `dash`, `bash`), so that it is the target itself
/// rather than a wrapper that launch mode follows to the program it executes.
const SHELL_TARGET: [&str; 2] = ["--symbols", "*sh:getpid"];

/// The `Uid:` and `Cap*:` lines of a launched shell's own status; `flags` for `run`.
fn launched_status(flowtap: &mut Command, flags: &[&str]) -> String {
    let output = flowtap
        .args(["run", "--symbols", "libc.so.6:getpid"])
        .args(SHELL_TARGET)
        .args(flags)
        .arg("--")
        .args(["/bin/sh", "-c", "grep -E '^(Uid|Cap)' /proc/$$/status"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
}

#[test]
fn under_sudo_the_command_runs_as_the_user_without_capabilities() {
    let status = launched_status(
        flowtap()
            .env("SUDO_UID", NOBODY.to_string())
            .env("SUDO_GID", NOBODY.to_string()),
        &[],
    );
    assert_eq!(status_field(&status, "Uid:"), "65534\t65534\t65534\t65534");
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:", "CapBnd:"] {
        assert_eq!(
            status_field(&status, key),
            "0000000000000000",
            "{key} {status}"
        );
    }
    // --as-root keeps root.
    let status = launched_status(
        flowtap()
            .env("SUDO_UID", NOBODY.to_string())
            .env("SUDO_GID", NOBODY.to_string()),
        &["--as-root"],
    );
    assert!(status_field(&status, "Uid:").starts_with("0\t"), "{status}");
}

/// flowtap as user nobody holding exactly the four capabilities, as ambient ones (what a file
/// attribute gives, and what a launched command could otherwise inherit).
fn flowtap_as_user_with_capabilities() -> Command {
    let flowtap = flowtap();
    let caps = "+bpf,+perfmon,+sys_ptrace,+dac_read_search";
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
        ])
        .arg(flowtap.get_program())
        .envs(flowtap.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir("/");
    command
}

#[test]
fn a_user_with_capabilities_passes_none_on_and_reaches_only_their_own() {
    let status = launched_status(&mut flowtap_as_user_with_capabilities(), &[]);
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, key),
            "0000000000000000",
            "{key} {status}"
        );
    }

    // A root process: the user could not ptrace it.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let output = flowtap_as_user_with_capabilities()
        .args(["run", "--duration", "1", "--pid", &sleeper.id().to_string()])
        .output()
        .unwrap();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("belongs to another user"), "{stderr}");

    // A root-only file is not read, so its contents cannot show in an error.
    let dir = scratch_dir("secret-config");
    let secret = dir.join("secret.toml");
    std::fs::write(&secret, "password = \"hunter2\"\n").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    for flag in ["--config", "--profile"] {
        let output = flowtap_as_user_with_capabilities()
            .args(["run", flag, secret.to_str().unwrap(), "--", "/bin/true"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("permission denied"), "{flag}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{flag}: {stderr}");
    }

    // --exe would trace every user's processes.
    let output = flowtap_as_user_with_capabilities()
        .args(["run", "--exe", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs root"));
}

/// Raises this process's descriptor limit so that a test can hold `wanted` connections.
fn allow_descriptors(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0);
    limit.rlim_cur = limit.rlim_max.min(wanted.max(limit.rlim_cur));
    // SAFETY: valid in-pointer; a soft limit within the hard one.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(set, 0);
}

#[test]
fn idle_and_trickling_clients_do_not_keep_a_scrape_out() {
    use std::{
        io::{Read, Write},
        net::TcpStream,
        time::{Duration, Instant},
    };
    allow_descriptors(4096);
    let running = Running::start(flowtap().args([
        "run",
        "--symbols",
        "libc.so.6:getpid",
        "--duration",
        "60",
        "--",
        "sleep",
        "60",
    ]));
    let host = running
        .metrics_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // A client sending its request one byte a second is closed within the header timeout.
    let trickler = {
        let host = host.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut stream = TcpStream::connect(&host).unwrap();
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" {
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
                let mut probe = [0u8; 1];
                stream.set_nonblocking(true).unwrap();
                let closed = stream.read(&mut probe).is_ok();
                stream.set_nonblocking(false).unwrap();
                if closed {
                    break;
                }
            }
            started.elapsed()
        })
    };

    let held = trickler.join().unwrap();
    assert!(
        held > Duration::from_secs(3) && held < Duration::from_secs(10),
        "a trickling client held on for {held:?} (the header timeout is 5 s)"
    );

    // 1,100 connections that never send anything.
    let idle: Vec<TcpStream> = (0..1100)
        .map(|_| TcpStream::connect(&host).unwrap())
        .collect();
    let started = Instant::now();
    let body = running.scrape();
    let took = started.elapsed();
    assert!(body.contains("flowtap_probes_attached 1"), "{body}");
    assert!(took < Duration::from_secs(5), "a scrape took {took:?}");
    let body = running.scrape();
    let evicted = sample(
        &body,
        "flowtap_metrics_clients_turned_away_total",
        &["reason=\"evicted\""],
    );
    assert!(evicted >= 1100.0 - 256.0, "{evicted} evicted\n{body}");
    drop(idle);
    running.interrupt();
    let (code, stderr) = running.finish();
    // The command's own code: `sleep` got the interrupt too.
    assert_eq!(code, 130, "{stderr}");
}

/// Runs flowtap with `args`, killed if it takes more than 20 s (a FIFO read would hang).
fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut child = flowtap()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn fifos_devices_and_odd_paths_are_refused_without_reading() {
    let dir = scratch_dir("odd-paths");
    let fifo = dir.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let looped = dir.join("loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let fifo = fifo.to_str().unwrap();
    let dir_text = dir.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["run", "--exe", fifo], "is a FIFO, not a regular file"),
        (
            &["run", "--exe", "/dev/zero"],
            "is a device, not a regular file",
        ),
        (
            &["symbols", "--exe", "/dev/zero"],
            "is a device, not a regular file",
        ),
        (&["run", "--", fifo], "is a FIFO, not a program"),
        (&["run", "--", dir_text], "is a directory, not a program"),
        (
            &["run", "--", looped.to_str().unwrap()],
            "is a loop of symbolic links",
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run_bounded(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn a_huge_sparse_library_costs_only_its_tables() {
    let dir = scratch_dir("sparse-library");
    let library = dir.join("libsparse.so");
    std::fs::copy(library_path(), &library).unwrap();
    // 6 GB, nearly all of it a hole after the real library.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&library)
        .unwrap()
        .set_len(6 << 30)
        .unwrap();
    let output = flowtap()
        .args(["symbols", "--exe", library.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("wf_workflow_run"));
    let mut usage: libc::rusage = unsafe_zeroed_rusage();
    // SAFETY: valid out-pointer.
    let got = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(got, 0);
    // ru_maxrss is in KiB; the largest child of this test process so far.
    let peak_mib = usage.ru_maxrss / 1024;
    assert!(peak_mib < 200, "peak RSS {peak_mib} MiB");
}

fn unsafe_zeroed_rusage() -> libc::rusage {
    // SAFETY: rusage is plain integers, for which all zeroes is valid.
    unsafe { std::mem::zeroed() }
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate it signed, in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &key[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=flowtap test CA",
            ],
        ]
        .concat(),
    );
    for (name, extension) in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let (key_file, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &[
                &["req"],
                &key[..],
                &[
                    "-keyout",
                    &key_file,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        std::fs::write(dir.join(format!("{name}.ext")), extension).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

/// The receiver's TLS settings: its certificate, and client certificates of the test CA required.
fn receiver_tls(dir: &Path) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// flowtap launching the demo for `runs` workflow runs, its spans of `wf_workflow_run` sent
/// over OTLP to `endpoint`.
fn demo_exporting_to(endpoint: &str, protocol: &str, runs: &str) -> Command {
    let mut command = flowtap();
    command
        .args([
            "run",
            "--otlp-endpoint",
            endpoint,
            "--otlp-protocol",
            protocol,
        ])
        .args(["--symbols", "wf_workflow_run", "--"])
        .arg(demo_path())
        .args(["--runs", runs]);
    command
}

#[test]
fn spans_reach_an_https_collector_with_its_own_ca_and_a_client_certificate() {
    let dir = scratch_dir("otlp-https");
    make_certificates(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let receiver = flowtap_tests::otlp::HttpReceiver::start_tls(listener, receiver_tls(&dir));
    let output = demo_exporting_to(&endpoint, "http/protobuf", "7")
        .env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", dir.join("ca.pem"))
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            dir.join("client.pem"),
        )
        .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", dir.join("client.key"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(receiver.spans().len(), 7, "{output:?}");

    // Without the client certificate the collector refuses, and flowtap says so.
    let output = demo_exporting_to(&endpoint, "http/protobuf", "2")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", dir.join("ca.pem"))
        .output()
        .unwrap();
    assert_eq!(receiver.spans().len(), 7);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("OTLP export to {endpoint} failed")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "2 spans not delivered to the OTLP collector {endpoint}"
        )),
        "{stderr}"
    );
}

#[test]
fn a_collector_that_never_answers_is_named_and_every_span_accounted_for() {
    let dir = scratch_dir("silent-collector");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepts, reads nothing, answers nothing.
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let report = dir.join("report.json");
    let output = flowtap()
        .args([
            "run",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "http/protobuf",
        ])
        .args([
            "--symbols",
            "wf_workflow_run",
            "--report",
            "json",
            "--output",
        ])
        .arg(&report)
        .arg("--")
        .arg(demo_path())
        .args(["--runs", "3"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "3 spans not delivered to the OTLP collector {endpoint}"
        )),
        "{stderr}"
    );
    let spans = &read_report(&report)["spans"];
    let count = |key: &str| spans[key].as_u64().unwrap();
    assert_eq!(count("received"), 3, "{spans}");
    assert_eq!(
        count("exported") + count("dropped"),
        count("received"),
        "{spans}"
    );
}

#[test]
fn a_full_disk_under_the_spans_file_costs_spans_not_the_run() {
    let dir = scratch_dir("full-disk");
    let report = dir.join("report.json");
    let output = flowtap()
        .args([
            "run",
            "--spans-out",
            "/dev/full",
            "--report",
            "json",
            "--output",
        ])
        .arg(&report)
        .arg("--")
        .arg(demo_path())
        .args(["--runs", "20"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("cannot write spans to /dev/full").count(),
        1,
        "{stderr}"
    );
    let report = read_report(&report);
    let expected = demo_counts(&String::from_utf8(output.stdout).unwrap());
    assert_same_counts(&expected, &report_counts(&report), "disk full");
    let spans = &report["spans"];
    assert!(spans["received"].as_u64().unwrap() > 0, "{spans}");
    assert_eq!(spans["file_dropped"], spans["received"], "{spans}");
}

fn terminate(running: &Running) {
    // SAFETY: signalling a child we own and have not reaped.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
}

#[test]
fn sigterm_reaches_the_command_and_a_second_one_ends_flowtap_with_its_report() {
    let dir = scratch_dir("sigterm");
    // Exits 7 on SIGTERM; SIGINT would end it with 130.
    let running = Running::start(
        flowtap()
            .args(["run", "--symbols", "libc.so.6:getpid"])
            .args(SHELL_TARGET)
            .arg("--")
            .args([
                "/bin/sh",
                "-c",
                "trap 'exit 7' TERM; while :; do sleep 0.1; done",
            ]),
    );
    // Time for the shell to set its trap.
    std::thread::sleep(std::time::Duration::from_millis(500));
    terminate(&running);
    let (code, stderr) = running.finish();
    assert_eq!(code, 7, "{stderr}");

    // A command that ignores SIGTERM: the second one stops flowtap, report written.
    let report = dir.join("report.json");
    let pid_file = dir.join("pid");
    let running = Running::start(
        flowtap()
            .args([
                "run",
                "--symbols",
                "libc.so.6:getpid",
                "--report",
                "json",
                "--output",
            ])
            .arg(&report)
            .args(SHELL_TARGET)
            .args(["--", "/bin/sh", "-c"])
            .arg(format!(
                "echo $$ > {}; trap '' TERM; exec sleep 30",
                pid_file.display()
            )),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    terminate(&running);
    std::thread::sleep(std::time::Duration::from_millis(500));
    terminate(&running);
    // The command keeps running untraced (and holds flowtap's stderr): end it here.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: killing the command this test launched.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (code, stderr) = running.finish();
    assert_eq!(code, 128 + libc::SIGTERM, "{stderr}");
    assert!(stderr.contains("stopping on a second signal"), "{stderr}");
    assert!(read_report(&report)["functions"].is_array());
    let _ = Command::new("pkill")
        .args(["-f", "trap '' TERM; sleep 30"])
        .status();
}

#[test]
fn a_closed_stderr_never_panics() {
    let mut child = flowtap()
        .args(["run", "--pid", "999999999"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before flowtap writes its error.
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "{status:?}");
}

#[test]
fn a_thread_id_given_as_pid_names_its_process() {
    // A second thread of this test process.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = done_rx.recv();
    });
    let tid = rx.recv().unwrap();
    let (code, _, stderr) = run_flowtap(&["run", "--pid", &tid.to_string()]);
    done_tx.send(()).unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{tid} is a thread of process {}: give the process ID, --pid {}",
            std::process::id(),
            std::process::id()
        )),
        "{stderr}"
    );
}

#[test]
fn argument_errors_are_one_line_with_the_prefix() {
    let (code, _, stderr) = run_flowtap(&["run", "--bogus"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("flowtap: error: unexpected argument '--bogus'"),
        "{stderr}"
    );
}

#[test]
fn profile_compilation_is_linear_in_rules() {
    let dir = scratch_dir("big-profile");
    let path = dir.join("big.toml");
    let mut text = String::from("[profile]\nname = \"big\"\n");
    for i in 0..20_000 {
        text.push_str(&format!(
            "[[function]]\nmatch = \"fn_{i}\"\nreturns = {{ type = \"i32\", error = \"negative\" }}\n[[function.metric]]\ncounter = \"calls_total\"\nlabels = {{ f = \"fn_{i}\" }}\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run_flowtap(&["profile", "check", path.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("20000 function rules"), "{stdout}");
    // Quadratic, this took 16 s on the test VM; linear, well under a second.
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
}

/// A program that exits the moment a probe lands in `victim`: its code changes when the kernel
/// writes the first breakpoint there, and flowtap still has probes to attach.
const EXITS_WHEN_PROBED: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) int victim(int x) { return x * 3 + 1; }
int main(void) {
    unsigned char before[32];
    memcpy(before, (const void *)victim, sizeof before);
    printf("ready\n");
    fflush(stdout);
    const volatile unsigned char *code = (const volatile unsigned char *)victim;
    for (;;)
        for (size_t i = 0; i < sizeof before; i++)
            if (code[i] != before[i])
                _exit(0);
}
"#;

#[test]
fn a_process_exiting_during_attach_is_told_in_one_line() {
    let dir = scratch_dir("exits-during-attach");
    let source = dir.join("exits.c");
    let program = dir.join("exits");
    std::fs::write(&source, EXITS_WHEN_PROBED).unwrap();
    let compiled = Command::new("cc")
        .args(["-O1", "-rdynamic", "-o"])
        .arg(&program)
        .arg(&source)
        .status()
        .unwrap();
    assert!(compiled.success());
    // The exit races flowtap's next attach; it loses that race only when descheduled long.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let mut target = Command::new(&program)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(target.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready, "ready\n");
        let pid = target.id().to_string();
        // Reaped at once, as a parent would: a zombie would still accept probes.
        let reaper = std::thread::spawn(move || target.wait().unwrap());
        let (code, stderr) = run_bounded(&["run", "--pid", &pid, "--symbols", "victim"]);
        assert!(reaper.join().unwrap().success());
        if code == Some(2) {
            // Notes on the probes may come first; the error is one line, the last.
            let errors = stderr.lines().filter(|line| line.contains("error"));
            assert_eq!(errors.count(), 1, "{stderr}");
            assert!(!stderr.contains("bpf_link_create"), "{stderr}");
            let last = stderr.lines().last().unwrap_or_default();
            if last.contains(&format!(
                "process {pid} exited while flowtap was attaching its probes"
            )) {
                return;
            }
        }
        seen.push((code, stderr));
    }
    panic!("the process never exited during attach: {seen:?}");
}

#[test]
fn no_cause_is_printed_twice() {
    let dir = scratch_dir("cause-once");
    let dir_text = dir.to_str().unwrap();
    let missing = dir.join("missing.toml");
    let missing = missing.to_str().unwrap();
    let pid = std::process::id().to_string();
    let cases: [(&[&str], &str); 6] = [
        (
            &["run", "--output", dir_text, "--pid", &pid],
            "(os error 21)",
        ),
        (
            &["run", "--spans-out", dir_text, "--pid", &pid],
            "(os error 21)",
        ),
        (
            &["run", "--profile", dir_text, "--pid", &pid],
            "(os error 21)",
        ),
        (
            &["run", "--config", dir_text, "--pid", &pid],
            "(os error 21)",
        ),
        (&["profile", "check", dir_text], "(os error 21)"),
        (
            &["run", "--profile", missing, "--pid", &pid],
            "(os error 2)",
        ),
    ];
    for (args, cause) in cases {
        let (code, _, stderr) = run_flowtap(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("flowtap: error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.matches(cause).count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(dir_text), "{args:?}: {stderr}");
    }
}

/// An OTLP/gRPC collector counting the spans it receives.
#[derive(Default, Clone)]
struct GrpcCollector(std::sync::Arc<std::sync::atomic::AtomicUsize>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for GrpcCollector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.0
            .fetch_add(spans, std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// Serves `collector` over gRPC with TLS: the test CA's server certificate, client
/// certificates required.
fn serve_grpc_tls(dir: &Path, collector: GrpcCollector) -> String {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.pem"), read("server.key")))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        runtime.block_on(async move {
            Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
    });
    endpoint
}

#[test]
fn spans_reach_a_grpc_collector_over_tls_with_its_own_ca() {
    let dir = scratch_dir("otlp-grpc-tls");
    make_certificates(&dir);
    let collector = GrpcCollector::default();
    let endpoint = serve_grpc_tls(&dir, collector.clone());
    let run = |runs: &str, client_certificate: bool| {
        let mut command = demo_exporting_to(&endpoint, "grpc", runs);
        command.env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", dir.join("ca.pem"));
        if client_certificate {
            command
                .env(
                    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                    dir.join("client.pem"),
                )
                .env(
                    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
                    dir.join("client.key"),
                );
        }
        command.output().unwrap()
    };
    let output = run("7", true);
    assert!(output.status.success(), "{output:?}");
    let received = || collector.0.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(received(), 7, "{output:?}");

    // Without the client certificate the collector refuses the handshake, and flowtap says so.
    let output = run("2", false);
    assert_eq!(received(), 7);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "2 spans not delivered to the OTLP collector {endpoint}"
        )),
        "{stderr}"
    );
}

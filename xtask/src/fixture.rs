//! The fixture workflow runtime (`tests/fixture`): built with the system C compiler.

use std::{
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{run, workspace_root};

/// Builds `libwfrt.so`, `wfdemo` and the probe-placement programs into `target/fixture`;
/// returns that directory.
pub(crate) fn build() -> anyhow::Result<PathBuf> {
    let source = workspace_root().join("tests/fixture");
    let out = workspace_root().join("target/fixture");
    std::fs::create_dir_all(&out)?;
    // Frame pointers, as distributions now build: every function then starts with `push %rbp`.
    let flags = [
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fno-omit-frame-pointer",
    ];
    run(compile(
        "cc",
        &flags,
        &out.join("libwfrt.so"),
        &source.join("wfrt.c"),
    )
    .args(["-fPIC", "-shared", "-lpthread"]))?;
    run(
        compile("cc", &flags, &out.join("wfdemo"), &source.join("wfdemo.c"))
            .arg("-L")
            .arg(&out)
            .args(["-lwfrt", "-Wl,-rpath,$ORIGIN"]),
    )?;
    build_probe_placement(&source, &out, &flags)?;
    build_bookkeeping(&source, &out)?;
    run(&mut compile(
        "cc",
        &flags,
        &out.join("forkdemo"),
        &source.join("forkdemo.c"),
    ))?;
    run(&mut compile(
        "cc",
        &flags,
        &out.join("pidreuse"),
        &source.join("pidreuse.c"),
    ))?;
    build_stripped(&out)?;
    build_loaded_later(&source, &out, &flags)?;
    // Linked by soname: machines with curl have libcurl4, not always its -dev package.
    run(compile(
        "cc",
        &flags,
        &out.join("llmflow"),
        &source.join("llmflow.c"),
    )
    .arg("-l:libcurl.so.4"))?;
    Ok(out)
}

/// Stripped copies of `forkdemo`, whose `fk_work` is local (in `.symtab` only): `stripdemo`,
/// whose symbols are in `stripdemo.debug` beside it, named by its `.gnu_debuglink`, as
/// `objcopy --only-keep-debug` leaves them; and `strippeddemo`, with none anywhere.
fn build_stripped(out: &Path) -> anyhow::Result<()> {
    let objcopy = |args: &[&str]| {
        let mut command = Command::new("objcopy");
        command.args(args).current_dir(out);
        command
    };
    run(&mut objcopy(&[
        "--only-keep-debug",
        "forkdemo",
        "stripdemo.debug",
    ]))?;
    for copy in ["stripdemo", "strippeddemo"] {
        std::fs::copy(out.join("forkdemo"), out.join(copy))?;
        run(Command::new("strip").arg("--strip-all").arg(out.join(copy)))?;
    }
    run(&mut objcopy(&[
        "--add-gnu-debuglink=stripdemo.debug",
        "stripdemo",
    ]))
}

/// `dlopendemo`, which loads `libdlplug.so.1.0` (soname `libdlplug.so.1`) while it runs.
fn build_loaded_later(source: &Path, out: &Path, flags: &[&str]) -> anyhow::Result<()> {
    run(compile(
        "cc",
        flags,
        &out.join("libdlplug.so.1.0"),
        &source.join("dlplug.c"),
    )
    .args(["-fPIC", "-shared", "-Wl,-soname,libdlplug.so.1"]))?;
    run(compile(
        "cc",
        flags,
        &out.join("dlopendemo"),
        &source.join("dlopendemo.c"),
    )
    .arg("-ldl"))
}

/// Programs whose code is where a careless probe harms them: `cold` (a GCC `.cold` fragment
/// entered by a jump, and `_start`), `throws` (C++ exceptions through member functions),
/// `stdthrow` (exceptions thrown inside libstdc++) and `panics` (a Rust panic caught with
/// `catch_unwind` through two functions).
fn build_probe_placement(source: &Path, out: &Path, flags: &[&str]) -> anyhow::Result<()> {
    run(&mut compile(
        "cc",
        flags,
        &out.join("cold"),
        &source.join("cold.c"),
    ))?;
    run(&mut compile(
        "c++",
        flags,
        &out.join("throws"),
        &source.join("throws.cpp"),
    ))?;
    run(&mut compile(
        "c++",
        flags,
        &out.join("stdthrow"),
        &source.join("stdthrow.cpp"),
    ))?;
    run(Command::new("rustup")
        .args(["run", crate::setup::RUST_TOOLCHAIN, "rustc"])
        .current_dir(workspace_root())
        .args(["--edition", "2024", "-O", "-C", "panic=unwind"])
        .args(["-C", "force-frame-pointers=yes", "-o"])
        .arg(out.join("panics"))
        .arg(source.join("panics.rs")))
}

/// `compiler FLAGS -o OUTPUT SOURCE`, to which callers add libraries and link options.
fn compile(compiler: &str, flags: &[&str], output: &Path, source: &Path) -> Command {
    let mut command = Command::new(compiler);
    command.args(flags).arg("-o").arg(output).arg(source);
    command
}

/// The bookkeeping fixture: `libbk.so` (calls that longjmp, recurse, end with their thread)
/// and `bkdemo`. No sibling calls, inlining or folding of identical functions: every call in
/// the source is a real call of its own function; and every function starts with `push %rbp`.
fn build_bookkeeping(source: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let flags = [
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fno-omit-frame-pointer",
        "-mno-omit-leaf-frame-pointer",
        "-fno-shrink-wrap",
        "-fno-optimize-sibling-calls",
        "-fno-inline",
        "-fno-ipa-icf",
    ];
    run(
        compile("cc", &flags, &out.join("libbk.so"), &source.join("bk.c"))
            .args(["-fPIC", "-shared"]),
    )?;
    run(
        compile("cc", &flags, &out.join("bkdemo"), &source.join("bkdemo.c"))
            .arg("-L")
            .arg(out)
            .args(["-lbk", "-lpthread", "-Wl,-rpath,$ORIGIN"]),
    )
}

/// Builds the benchmark's programs into `target/bench`: `bench` (a tight loop over one tiny
/// function), `probe_cost` (tiny functions that differ in their first instruction) and
/// `libsyms.so` (10,000 functions, for attach times); returns that directory.
pub(crate) fn build_bench() -> anyhow::Result<PathBuf> {
    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    run(Command::new("cc")
        .args(["-O2", "-fno-omit-frame-pointer", "-o"])
        .arg(out.join("bench"))
        .arg(workspace_root().join("tests/fixture/bench.c"))
        .arg("-lpthread"))?;
    run(Command::new("cc")
        .args(["-O2", "-o"])
        .arg(out.join("probe_cost"))
        .arg(workspace_root().join("tests/fixture/probe_cost.c")))?;
    let symbols: String = (0..10_000)
        .map(|i| format!("int sym_{i:05}(int x) {{ return x + {i}; }}\n"))
        .collect();
    let source = out.join("syms.c");
    std::fs::write(&source, symbols)?;
    run(Command::new("cc")
        .args(["-O1", "-fno-omit-frame-pointer", "-fPIC", "-shared", "-o"])
        .arg(out.join("libsyms.so"))
        .arg(&source))?;
    Ok(out)
}

/// Starts flowtap and waits (60 s at most) until it tells, on the descriptor `--ready-fd` names
/// (here through FLOWTAP_READY_FD), that its probes are attached.
pub(crate) fn start_until_ready(command: &mut Command) -> anyhow::Result<Child> {
    let (ready, writer) = std::io::pipe().context("a pipe for flowtap's ready line")?;
    let fd = writer.as_raw_fd();
    command.env("FLOWTAP_READY_FD", fd.to_string());
    let inherit = move || {
        // SAFETY: fcntl on a descriptor of this (forked) process; it only changes its flags.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: between fork and exec the closure calls only fcntl, which is async-signal-safe,
    // and allocates nothing.
    unsafe { command.pre_exec(inherit) };
    let mut child = command.spawn().context("starting flowtap")?;
    // Only flowtap holds the writing end now: its exit ends the line.
    drop(writer);
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(ready).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    match line_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line.starts_with("ready ") => Ok(child),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("flowtap did not attach its probes (its messages say why)")
        }
    }
}

/// bpftrace, the reference the tests compare with, needs tracefs.
pub(crate) fn mount_tracefs() -> anyhow::Result<()> {
    if std::path::Path::new("/sys/kernel/tracing/uprobe_events").exists() {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

//! Builds `agent-sandbox-init` as a static executable and embeds it, so
//! Rust, Python and Node users get it with no manual step. It is one std-only
//! source file, so a direct rustc call is enough.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let src = manifest.join("../agent-sandbox-init/src/main.rs");
    // Every file of the init crate (main.rs pulls in its modules).
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../agent-sandbox-init/src").display()
    );
    let out =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("agent-sandbox-init");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition=2021",
            "--crate-type=bin",
            "--crate-name=agent_sandbox_init",
            "-O",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "target-feature=+crt-static",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run rustc for agent-sandbox-init");
    assert!(
        status.success(),
        "building the static agent-sandbox-init failed"
    );
}

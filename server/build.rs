//! Records the git commit the binary was built from, so every run can name
//! the code that produced it.

use std::process::Command;

fn main() {
    let version = std::env::var("RLT_CODE_VERSION")
        .ok()
        .or_else(git_version)
        .unwrap_or_else(|| format!("{}-unknown", std::env::var("CARGO_PKG_VERSION").unwrap_or_default()));
    println!("cargo:rustc-env=RLT_CODE_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RLT_CODE_VERSION");
    for path in ["../.git/HEAD", "../.git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn git_version() -> Option<String> {
    let out = Command::new("git").args(["describe", "--always", "--dirty", "--abbrev=12"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
}

//! Records the commit hearth is built from as `HEARTH_BUILD_COMMIT` (for `hearth bench`'s
//! report): `HEARTH_COMMIT` from the build environment if set, else `git rev-parse --short
//! HEAD`, else "unknown". Reruns when HEAD or the branch it points to moves; never fails the
//! build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HEARTH_COMMIT");
    let from_env = std::env::var("HEARTH_COMMIT").ok().filter(|c| !c.trim().is_empty());
    let commit = from_env.or_else(|| git(&["rev-parse", "--short", "HEAD"])).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HEARTH_BUILD_COMMIT={}", commit.trim());
    // Watch only files that exist: a missing one would rerun this script on every build.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        let mut watched = vec![git_dir.join("HEAD"), git_dir.join("packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(git_dir.join(branch));
        }
        for path in watched.iter().filter(|p| Path::exists(p)) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

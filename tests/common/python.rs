//! A Python with pika, for tests where a foreign client publishes: a venv
//! under the target directory (`target/test-venv`), made and filled from
//! PyPI on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// How to get what this helper needs, for failure messages.
const HOW_TO_INSTALL: &str = "these tests need python3 with the venv module and pip, \
     and network access to PyPI for `pika` (Debian/Ubuntu: `apt-get install python3 python3-venv`; \
     offline: `python3 -m venv target/test-venv && target/test-venv/bin/pip install pika` \
     from a local wheel)";

/// **The Python interpreter of `target/test-venv`, with pika importable.**
///
/// Makes the venv with `python3 -m venv` and installs pika into it with pip
/// when either is missing; later calls reuse it.
///
/// # Panics
///
/// Fails the test, saying how to install what is missing, when python3, the
/// venv or pika cannot be had. Never skips.
pub fn python_with_pika() -> PathBuf {
    // Tests of one binary may ask at once; one makes the venv.
    static MAKING: Mutex<()> = Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .stdout(Stdio::null())
            .output();
        match made {
            Err(e) => panic!("cannot run python3 ({e}): {HOW_TO_INSTALL}"),
            Ok(out) if !out.status.success() => panic!(
                "`python3 -m venv {}` failed: {}\n{HOW_TO_INSTALL}",
                venv.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Ok(_) => {}
        }
    }
    if !imports_pika(&python) {
        let installed = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "pika",
            ])
            .stdout(Stdio::null())
            .output();
        match installed {
            Err(e) => panic!("cannot run {} ({e}): {HOW_TO_INSTALL}", python.display()),
            Ok(out) if !out.status.success() => panic!(
                "pip could not install pika into {}: {}\n{HOW_TO_INSTALL}",
                venv.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Ok(_) => {}
        }
        assert!(
            imports_pika(&python),
            "pika was installed into {} but does not import: {HOW_TO_INSTALL}",
            venv.display()
        );
    }
    python
}

/// `target/test-venv`, beside `target/tmp`, wherever the target directory is.
fn venv_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("test-venv")
}

fn imports_pika(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import pika"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A script of the crate's `scripts/` directory.
pub fn script(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

//! The Python peer: the naive row's work with pika's `BlockingConnection`.

/// The Python peer: `scripts/pika_bench.py` in a venv under `target/`,
/// made (and pika installed into it from PyPI) on first use. `--no-python`
/// skips it.
pub(crate) fn pika(url: &str, events: u64) -> Result<f64, String> {
    use std::process::Command;
    if std::env::args().any(|a| a == "--no-python") {
        return Err("--no-python given".to_owned());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("bench-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            return Err("python3 -m venv failed or python3 is missing".to_owned());
        }
    }
    let has_pika = Command::new(&python)
        .args(["-c", "import pika"])
        .stderr(std::process::Stdio::null())
        .status();
    if !has_pika.is_ok_and(|s| s.success()) {
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "pika"])
            .status();
        if !installed.is_ok_and(|s| s.success()) {
            return Err("pip could not install pika".to_owned());
        }
    }
    let output = Command::new(&python)
        .arg(root.join("scripts").join("pika_bench.py"))
        .args([url, &events.to_string(), "100"])
        .output()
        .map_err(|e| format!("running pika_bench.py: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "pika_bench.py failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("pika_bench.py printed no rate: {stdout}"))
}

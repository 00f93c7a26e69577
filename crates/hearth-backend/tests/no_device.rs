//! A backend that is compiled in but has no device is a typed error from
//! [`hearth_backend::open_device`], not a panic. This test hides every Vulkan driver from the
//! Vulkan loader of its own process (it is the only test of this binary).
#![cfg(feature = "wgpu")]

use hearth_backend::{BackendError, BackendKind, DType, Wgpu, open_device};

#[test]
fn wgpu_without_adapter_is_a_typed_error() {
    // SAFETY: the only test of this binary, run before any other thread reads the environment.
    unsafe {
        std::env::set_var("VK_ICD_FILENAMES", "/nonexistent/hearth-no-icd.json");
        std::env::set_var("VK_DRIVER_FILES", "/nonexistent/hearth-no-icd.json");
    }
    let err = open_device::<Wgpu>(BackendKind::Wgpu, &Default::default(), DType::F32).unwrap_err();
    assert!(
        matches!(&err, BackendError::DeviceUnavailable { backend: "wgpu", .. }),
        "{err:?}"
    );
    println!("{err}");
    assert!(err.to_string().starts_with("backend `wgpu` has no usable device: "));
}

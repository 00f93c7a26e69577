//! On-disk layouts: a sharded checkpoint (`model.safetensors.index.json`) loads like the single
//! file, and f16 weights load like the same values stored as f32.

mod common;
use common::{host, model_dir};
use hearth_models::{CausalLm, ForwardOptions, WeightStore};
use safetensors::Dtype;
use std::path::{Path, PathBuf};

type B = hearth_backend::Cpu;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-formats-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model_dir("llama").join(f), d.join(f)).unwrap();
    }
    d
}

fn write(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn logits(dir: &Path) -> Vec<f32> {
    let m = CausalLm::<B>::from_dir(dir, &Default::default()).unwrap();
    let mut cache = m.new_cache(1, None);
    host(
        m.forward(&[vec![0, 17, 42, 99, 7]], &mut cache, ForwardOptions::default())
            .unwrap()
            .logits,
    )
}

fn fixture_tensors() -> Vec<(String, Vec<f32>, Vec<usize>)> {
    let store = WeightStore::open(&model_dir("llama")).unwrap();
    let mut names: Vec<String> = store.names().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let (v, s) = store.f32(&n, None).unwrap();
            (n, v, s)
        })
        .collect()
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let d = tmp("sharded");
    let all = fixture_tensors();
    let (a, b) = all.split_at(all.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let ts: Vec<_> = part
            .iter()
            .map(|(n, v, s)| (n.clone(), Dtype::F32, s.clone(), bytemuck::cast_slice(v).to_vec()))
            .collect();
        write(&d.join(file), &ts);
        for (n, _, _) in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert!(!d.join("model.safetensors").exists());
    assert_eq!(logits(&d), logits(&model_dir("llama")));
}

#[test]
fn f16_weights_load_like_their_f32_values() {
    let all = fixture_tensors();
    let (d16, d32) = (tmp("f16"), tmp("f16as32"));
    let mut t16 = Vec::new();
    let mut t32 = Vec::new();
    for (n, v, s) in &all {
        let h: Vec<half::f16> = v.iter().map(|x| half::f16::from_f32(*x)).collect();
        let back: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
        t16.push((n.clone(), Dtype::F16, s.clone(), bytemuck::cast_slice(&h).to_vec()));
        t32.push((n.clone(), Dtype::F32, s.clone(), bytemuck::cast_slice(&back).to_vec()));
    }
    write(&d16.join("model.safetensors"), &t16);
    write(&d32.join("model.safetensors"), &t32);
    let (a, b) = (logits(&d16), logits(&d32));
    // f16 matrices are computed on in place by the F16 kernel (exact conversion, its own
    // summation order), f32 ones by the F32 kernel
    let num: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    assert!((num / den).sqrt() <= 1e-5, "rel err {}", (num / den).sqrt());
    // and the rounding did change something, so the test can tell formats apart
    assert_ne!(a, logits(&model_dir("llama")));
}

#[test]
fn unsupported_dtype_is_a_typed_error() {
    let d = tmp("i32");
    let mut ts: Vec<_> = fixture_tensors()
        .into_iter()
        .map(|(n, v, s)| (n, Dtype::F32, s, bytemuck::cast_slice(&v).to_vec()))
        .collect();
    let norm = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
    norm.1 = Dtype::I32;
    write(&d.join("model.safetensors"), &ts);
    match CausalLm::<B>::from_dir(&d, &Default::default()) {
        Err(hearth_models::ModelError::Dtype { tensor, dtype, .. }) => {
            assert_eq!(tensor, "model.norm.weight");
            assert!(dtype.contains("I32"), "{dtype}");
        }
        Err(e) => panic!("expected Dtype error, got {e}"),
        Ok(_) => panic!("expected Dtype error"),
    }
}

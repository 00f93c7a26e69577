//! RoPE inverse-frequency tables and attention scaling against transformers
//! (`components/rope.safetensors`, `rope.json`).

use hearth_attention::RopeConfig;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn components() -> PathBuf {
    let dir = std::env::var_os("HEARTH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"))
        .join("components");
    assert!(
        dir.join("rope.json").is_file(),
        "rope fixtures missing at {} (set HEARTH_FIXTURES)",
        dir.display()
    );
    dir
}

#[test]
fn every_variant_matches_transformers() {
    let dir = components();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("rope.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("rope.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = meta.as_object().unwrap();
    assert!(cases.len() >= 5);
    for (name, case) in cases {
        let t = st.tensor(&format!("{name}.inv_freq")).unwrap();
        let want: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let dim = want.len() * 2;
        // The fixture gives the `rope_parameters` object (v5 form); feed it as a config.
        let cfg = serde_json::json!({ "rope_parameters": case["config"] });
        // max_position_embeddings as in make_fixtures.py (only used where the variant needs it).
        let max_pos = match name.as_str() {
            "llama3" | "yarn" => 131072,
            "yarn_deepseek" => 163840,
            "linear" => 8192,
            _ => 2048,
        };
        let rope = RopeConfig::from_hf(&cfg, dim, max_pos).unwrap_or_else(|e| panic!("{name}: {e}"));
        let table = rope.table(16).unwrap();
        for (i, (g, w)) in table.inv_freq.iter().zip(&want).enumerate() {
            let rel = (*g as f32 - w).abs() / w.abs();
            assert!(rel <= 1e-6, "{name}: inv_freq[{i}] = {g} want {w}");
        }
        let scale = case["attention_scaling"].as_f64().unwrap();
        assert!(
            (table.attention_scaling - scale).abs() < 1e-9,
            "{name}: scaling {} want {scale}",
            table.attention_scaling
        );
    }
}

#[test]
fn legacy_keys_parse_like_rope_parameters() {
    let legacy = serde_json::json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}});
    let v5 = serde_json::json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}});
    assert_eq!(
        RopeConfig::from_hf(&legacy, 16, 256).unwrap(),
        RopeConfig::from_hf(&v5, 16, 256).unwrap()
    );
    let bad = serde_json::json!({"rope_scaling": {"rope_type": "longrope2"}});
    assert!(RopeConfig::from_hf(&bad, 16, 256).is_err());
}

#[test]
fn dynamic_ntk_grows_base_only_past_the_original_context() {
    let cfg = serde_json::json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "rope_theta": 10000.0});
    let rope = RopeConfig::from_hf(&cfg, 8, 64).unwrap();
    let short = rope.table(32).unwrap().inv_freq;
    let long = rope.table(256).unwrap().inv_freq;
    let plain: Vec<f64> = (0..4).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / 8.0)).collect();
    assert_eq!(short, plain);
    // independent formula: base' = base · (factor·len/orig − (factor−1))^(dim/(dim−2))
    let base = 10000.0 * (2.0 * 256.0 / 64.0 - 1.0f64).powf(8.0 / 6.0);
    for (i, f) in long.iter().enumerate() {
        assert!((f - 1.0 / base.powf(2.0 * i as f64 / 8.0)).abs() < 1e-12);
    }
}

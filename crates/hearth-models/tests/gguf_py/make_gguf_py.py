#!/usr/bin/env python3
"""Writes GGUF files of the qwen2_moe, qwen3_moe and deepseek_v3 fixture models with gguf-py,
the way llama.cpp's convert_hf_to_gguf.py lays them out (tensor names from gguf-py's own
TensorNameMap, merged 3-D expert tensors, DeepSeek's kv_b split into attn_k_b/attn_v_b, the
metadata keys its converters write). hearth's loader is tested against these files, so the
mapping is checked against gguf-py rather than against hearth's own writer.

Run: pip install gguf numpy safetensors && python3 make_gguf_py.py [FIXTURES_DIR]
(FIXTURES_DIR defaults to ../../../../../shared/fixtures/models)."""
import json
import os
import re
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ARCH = {
    "qwen2_moe": gguf.MODEL_ARCH.QWEN2MOE,
    "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE,
    "deepseek_v3": gguf.MODEL_ARCH.DEEPSEEK2,
}
EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")


def metadata(w, name, c):
    n_layer = c["num_hidden_layers"]
    w.add_block_count(n_layer)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    # DeepseekV2Model.set_gguf_parameters: MLA becomes MQA over the latent (one KV head)
    w.add_head_count_kv(1 if name == "deepseek_v3" else c["num_key_value_heads"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    w.add_bos_token_id(c["bos_token_id"])
    w.add_eos_token_id(c["eos_token_id"])
    n_exp = c.get("num_experts") or c.get("num_local_experts") or c.get("n_routed_experts")
    w.add_expert_count(n_exp)
    w.add_expert_used_count(c["num_experts_per_tok"])
    w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    if name == "qwen2_moe":
        w.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])
    if name == "qwen3_moe":
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
    if name == "deepseek_v3":
        w.add_leading_dense_block_count(c["first_k_dense_replace"])
        if c.get("q_lora_rank") is not None:
            w.add_q_lora_rank(c["q_lora_rank"])
        w.add_kv_lora_rank(c["kv_lora_rank"])
        w.add_key_length(c["kv_lora_rank"] + c["qk_rope_head_dim"])
        w.add_value_length(c["kv_lora_rank"])
        w.add_key_length_mla(c["qk_nope_head_dim"] + c["qk_rope_head_dim"])
        w.add_value_length_mla(c["v_head_dim"])
        w.add_expert_shared_count(c["n_shared_experts"])
        w.add_expert_weights_scale(c["routed_scaling_factor"])
        w.add_expert_weights_norm(c["norm_topk_prob"])
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_expert_group_count(c["n_group"])
        w.add_expert_group_used_count(c["topk_group"])
        w.add_rope_dimension_count(c["qk_rope_head_dim"])
        rs = c["rope_scaling"]
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        w.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])


def tensors(name, c, st):
    arch = ARCH[name]
    tmap = gguf.get_tensor_name_map(arch, c["num_hidden_layers"])
    experts = {}
    out = []
    for hf, t in st.items():
        t = t.astype(np.float32)
        m = EXPERT.fullmatch(hf)
        if m:
            experts.setdefault((int(m[1]), m[3]), {})[int(m[2])] = t
            continue
        if hf.endswith("e_score_correction_bias"):
            hf = hf.replace("e_score_correction_bias", "e_score_correction.bias")
        if name == "deepseek_v3" and hf.endswith("kv_b_proj.weight"):
            h, nope, vd = c["num_attention_heads"], c["qk_nope_head_dim"], c["v_head_dim"]
            kv_b = t.reshape(h, nope + vd, t.shape[-1])
            k_b, v_b = kv_b[:, :nope], kv_b[:, nope:]
            for part, arr in (("k_b_proj", k_b.transpose(0, 2, 1)), ("v_b_proj", v_b)):
                g = tmap.get_name(hf.replace("kv_b_proj", part), try_suffixes=(".weight", ".bias"))
                out.append((g, np.ascontiguousarray(arr)))
            continue
        g = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise SystemExit(f"{name}: gguf-py has no mapping for {hf}")
        out.append((g, t))
    for (layer, kind), by_e in sorted(experts.items()):
        stacked = np.stack([by_e[e] for e in sorted(by_e)])
        g = tmap.get_name(f"model.layers.{layer}.mlp.experts.{kind}_proj.weight", try_suffixes=(".weight",))
        out.append((g, stacked))
    return out


def main():
    fixtures = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../../../../shared/fixtures/models")
    for name in ARCH:
        d = os.path.join(fixtures, name)
        c = json.load(open(os.path.join(d, "config.json")))
        st = load_file(os.path.join(d, "model.safetensors"))
        path = os.path.join(HERE, f"{name}.gguf")
        w = gguf.GGUFWriter(path, arch=gguf.MODEL_ARCH_NAMES[ARCH[name]])
        w.add_name(f"hearth-fixture-{name}")
        metadata(w, name, c)
        for g, t in tensors(name, c, st):
            w.add_tensor(g, t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print(path, os.path.getsize(path))


if __name__ == "__main__":
    main()

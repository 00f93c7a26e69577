#!/usr/bin/env python3
"""MoE checkpoints no other test has seen, with float64 transformers references.

Same layout as /work/shared/fixtures/models/* (config.json in the hub's legacy rope format,
model.safetensors in f32, tokenizer files, reference.safetensors with `prompt{0,1}.input_ids`,
`.prefill_logits`, `.hidden_states`, `.greedy_ids`, `.greedy_step_logits`, meta.json), built with
make_fixtures.py's helpers (`reinit`, `legacy_rope`, `tokenizer_config`, `TINY`), but:

* configs the shared fixtures do not cover: other expert counts and top-k, Qwen2-MoE
  `decoder_sparse_step` / `mlp_only_layers`, DeepSeek-V3 without `q_lora_rank`, with 8 groups,
  `first_k_dense_replace=2`, a non-zero `e_score_correction_bias` (make_fixtures' `reinit` only
  touches parameters, so the shared fixture's bias — a buffer — is all zeros) and
  `rope_interleave=false`, `rms_norm_eps` ≠ the low-rank norms' fixed 1e-6; Mixtral with a sliding window shorter than the prompts;
* longer prompts (40 and 64 tokens) and 16 greedy tokens;
* weights are rounded to f32 before the float64 reference runs, so the reference is exactly the
  checkpoint on disk;
* a seed is kept only if every routing decision — over both prompts *and* their greedy
  continuations, every MoE layer, including DeepSeek's group choice — has a decisive margin.

usage: make_unseen.py [OUT_DIR]   (default: this file's directory)
       make_fixtures.py is found via $HEARTH_TOOLS or /work/shared/tools.
"""
import json, os, shutil, sys

sys.path.insert(0, os.environ.get("HEARTH_TOOLS", "/work/shared/tools"))
import make_fixtures as mf  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_grad_enabled(False)
HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(os.environ.get("HEARTH_FIXTURES", "/work/shared/fixtures"), "models", "llama",
                         "tokenizer.json")
PROMPT_LENS, NEW_TOKENS = (40, 64), 16
LOGIT_MARGIN = 5e-4    # softmax routers: gap between k-th and (k+1)-th router logit
SIGMOID_MARGIN = 2e-4  # DeepSeek: gap in sigmoid(logit) + bias, for groups and experts
GREEDY_MARGIN = 2e-3   # gap between the top two vocabulary logits at each greedy step
T = mf.TINY
ROPE = dict(rope_type="default", rope_theta=1000000.0)

UNSEEN = {
    "mixtral_4e_top1": ("MixtralForCausalLM", dict(
        T, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=1, rope_parameters=ROPE), 101),
    "mixtral_16e_top4_swa": ("MixtralForCausalLM", dict(
        T, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, num_local_experts=16, num_experts_per_tok=4, sliding_window=24,
        rope_parameters=ROPE), 102),
    "qwen2_moe_step2": ("Qwen2MoeForCausalLM", dict(
        T, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=48, norm_topk_prob=True, decoder_sparse_step=2, mlp_only_layers=[0],
        qkv_bias=True, rope_parameters=ROPE), 103),
    "qwen2_moe_mlp_only": ("Qwen2MoeForCausalLM", dict(
        T, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, num_experts=12, num_experts_per_tok=3, moe_intermediate_size=32,
        shared_expert_intermediate_size=0, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1],
        qkv_bias=True, rope_parameters=ROPE), 104),
    "qwen3_moe_32e_top8": ("Qwen3MoeForCausalLM", dict(
        T, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=32, num_experts_per_tok=8, moe_intermediate_size=16,
        norm_topk_prob=False, rope_parameters=ROPE), 105),
    "olmoe_8e_top2_norm": ("OlmoeForCausalLM", dict(
        T, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0)), 106),
    "deepseek_v3_no_qlora": ("DeepseekV3ForCausalLM", dict(
        T, hidden_size=64, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=4,
        first_k_dense_replace=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=32,
        n_shared_experts=1, num_experts_per_tok=6, n_group=8, topk_group=3, routed_scaling_factor=2.5,
        norm_topk_prob=True, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=16, qk_nope_head_dim=16,
        v_head_dim=16, rope_interleave=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, original_max_position_embeddings=32,
                             beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)), 107),
    "deepseek_v3_rope_half": ("DeepseekV3ForCausalLM", dict(
        T, hidden_size=64, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=3,
        first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16,
        n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=1.0,
        norm_topk_prob=False, kv_lora_rank=24, q_lora_rank=40, qk_rope_head_dim=8, qk_nope_head_dim=16,
        v_head_dim=24, rope_interleave=False, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        # q_a/kv_a_layernorm keep eps 1e-6 whatever rms_norm_eps says: a large one tells them apart
        rms_norm_eps=1e-3), 108),
}


def capture_router_inputs(model, ids):
    """(router input [N, hidden], router weight, correction bias or None) of every MoE layer."""
    captured, hooks = [], []
    for name, mod in model.named_modules():
        if name.endswith(".gate") and getattr(mod, "weight", None) is not None and mod.weight.ndim == 2:
            bias = getattr(mod, "e_score_correction_bias", None)
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, bias=bias: captured.append((inp[0].reshape(-1, inp[0].shape[-1]), m.weight, bias))))
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return captured


def router_margin(model, cfg, ids):
    """Smallest routing margin, as a fraction of the threshold that applies (≥ 1 is decisive).

    Softmax routers: k-th vs (k+1)-th logit. DeepSeek (sigmoid + bias, group-limited): the
    `topk_group`-th vs next group score (sum of each group's top two) and, among the experts of
    the kept groups, the k-th vs (k+1)-th score.
    """
    k = cfg.num_experts_per_tok
    worst = float("inf")
    for x, w, bias in capture_router_inputs(model, ids):
        logits = x.double() @ w.double().T
        if bias is None:
            s = logits.sort(dim=-1, descending=True).values
            worst = min(worst, (s[:, k - 1] - s[:, k]).min().item() / LOGIT_MARGIN)
            continue
        scores = logits.sigmoid() + bias.double()
        n, e = scores.shape
        g, kg = cfg.n_group, cfg.topk_group
        if g > 1:
            grp = scores.view(n, g, e // g).topk(2, dim=-1).values.sum(-1)
            gs = grp.sort(dim=-1, descending=True).values
            worst = min(worst, (gs[:, kg - 1] - gs[:, kg]).min().item() / SIGMOID_MARGIN)
            keep = torch.zeros(n, g, dtype=torch.bool)
            keep.scatter_(1, grp.topk(kg, dim=-1).indices, True)
            keep = keep.unsqueeze(-1).expand(n, g, e // g).reshape(n, e)
            scores = scores.masked_fill(~keep, float("-inf"))
        s = scores.sort(dim=-1, descending=True).values
        worst = min(worst, (s[:, k - 1] - s[:, k]).min().item() / SIGMOID_MARGIN)
    return worst


def build(name, arch, kwargs, seed, out, attempts=200):
    d = os.path.join(out, name)
    cls = getattr(transformers, arch)
    for attempt in range(attempts):
        s = seed + 1000 * attempt
        torch.manual_seed(s)
        cfg = cls.config_class(**kwargs)
        cfg._attn_implementation = "eager"
        cfg._experts_implementation = "eager"
        model = cls(cfg).eval()
        mf.reinit(model, s)
        g = torch.Generator().manual_seed(s + 3)
        for bname, b in model.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.5)
        model = model.double()
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                p.copy_(p.float().double())  # the reference is exactly the f32 checkpoint
        g = torch.Generator().manual_seed(s + 7)
        prompts = [torch.cat([torch.tensor([0]), torch.randint(5, mf.VOCAB, (n - 1,), generator=g)]).unsqueeze(0)
                   for n in PROMPT_LENS]
        refs, margin, greedy_gap = {}, float("inf"), float("inf")
        for i, ids in enumerate(prompts):
            out_full = model(ids, output_hidden_states=True)
            gen = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, eos_token_id=None,
                                 pad_token_id=1)
            scores = torch.stack(gen.scores, 0)[:, 0, :]
            top2 = scores.topk(2, dim=-1).values
            greedy_gap = min(greedy_gap, (top2[:, 0] - top2[:, 1]).min().item())
            # every token the router sees while hearth prefills and then decodes this prompt
            margin = min(margin, router_margin(model, cfg, gen.sequences))
            refs[f"prompt{i}.input_ids"] = ids[0].to(torch.int64)
            refs[f"prompt{i}.prefill_logits"] = out_full.logits[0].float()
            refs[f"prompt{i}.hidden_states"] = torch.stack(out_full.hidden_states, 0)[:, 0].float()
            refs[f"prompt{i}.greedy_ids"] = gen.sequences[0, ids.shape[1]:].to(torch.int64)
            refs[f"prompt{i}.greedy_step_logits"] = scores.float()
        if margin >= 1.0 and greedy_gap >= GREEDY_MARGIN:
            break
        print(f"  {name}: seed {s} rejected (router margin {margin:.3g}x threshold, greedy gap {greedy_gap:.3g})",
              file=sys.stderr)
    else:
        raise SystemExit(f"{name}: no seed with decisive router/greedy choices in {attempts} attempts")

    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model.to(torch.float32).save_pretrained(d, safe_serialization=True)
    cfg_path = os.path.join(d, "config.json")
    cj = mf.legacy_rope(json.load(open(cfg_path)))
    for key in ("_attn_implementation", "_experts_implementation", "attn_implementation", "experts_implementation",
                "dtype"):
        cj.pop(key, None)
    cj["torch_dtype"] = "float32"
    json.dump(cj, open(cfg_path, "w"), indent=2, sort_keys=True)
    shutil.copy(TOKENIZER, os.path.join(d, "tokenizer.json"))
    json.dump(mf.tokenizer_config(), open(os.path.join(d, "tokenizer_config.json"), "w"), indent=2)
    save_file({k: v.contiguous() for k, v in refs.items()}, os.path.join(d, "reference.safetensors"))
    meta = dict(architecture=arch, weights_dtype="float32", seed=s,
                reference="transformers %s, torch %s, float64 eager attention" % (transformers.__version__,
                                                                                  torch.__version__),
                prompts=list(PROMPT_LENS), greedy_new_tokens=NEW_TOKENS, min_router_margin_over_threshold=margin,
                min_greedy_gap=greedy_gap, params=sum(p.numel() for p in model.parameters()))
    json.dump(meta, open(os.path.join(d, "meta.json"), "w"), indent=2)
    size = os.path.getsize(os.path.join(d, "model.safetensors"))
    print(f"{name}: seed {s}, {size / 1e6:.2f} MB, router margin {margin:.3g}x, greedy gap {greedy_gap:.3g}")
    assert size <= 1_500_000, f"{name}: model.safetensors is {size} bytes"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    only = sys.argv[2:]
    for name, (arch, kw, seed) in UNSEEN.items():
        if not only or name in only:
            build(name, arch, kw, seed, out)


if __name__ == "__main__":
    main()

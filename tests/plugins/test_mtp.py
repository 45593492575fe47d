"""Multi-token prediction (DeepSeek-V3, arXiv 2412.19437 §2.2) against the paper's equations written
out here, and against transformers' own MTP layer (``MtpModel``) built tiny on a Llama."""

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import IGNORE, AttentionContext, ConfigError
from gptzoo.recipes.training import costs
from gptzoo.testing import build, check_component, tiny_config

MTP = {"name": "sequential", "depth": 2, "loss_weight": 0.3}
LLAMA = dict(positional="rope", norm="rmsnorm", feed_forward="swiglu", attn_out_bias=False, n_layers=2)


def rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def paper_losses(model, idx, targets, chain_normed=False):
    """L_k of eqs. 21-25, position by position in the window: depth k at i combines RMSNorm(h_i^{k-1})
    and RMSNorm(Emb(t_{i+k})) as M_k [h; e] (the paper's order: the checkpoints' eh_proj reads [e; h],
    so M_k is its two column blocks swapped), runs TRM_k over positions 0..T-k-1 alone, and the shared
    head predicts t_{i+k+1}, the target k after position i's own. ``chain_normed``: depth k + 1 reads
    RMSNorm_k(h^k) (transformers' MtpModel); the tokens ahead are embedded by the module's own table where it has one."""
    B, T = idx.shape
    C = model.config.d_model
    eps = model.final_norm.params.eps
    h = model.hidden_states(idx)  # h^0: the main model's final hidden states
    losses = []
    for k, module in enumerate(model.mtp.layers, start=1):
        n = T - k
        M = torch.cat([module.eh_proj.weight[:, C:], module.eh_proj.weight[:, :C]], dim=1)
        table = model.mtp.token_embedding or model.token_embedding
        e = table(idx[:, k:])  # Emb(t_{i+k}) for i < T - k
        merged = torch.cat([rms(h[:, :n], module.hnorm.weight, eps), rms(e, module.enorm.weight, eps)], -1) @ M.T
        positions = torch.arange(n).unsqueeze(0)
        h = module.block(merged, AttentionContext(model.positional, positions, positions))  # h^k
        logits = model.head(rms(h, module.norm.weight, eps))
        h = rms(h, module.norm.weight, eps) if chain_normed else h
        losses.append(F.cross_entropy(logits.flatten(0, 1), targets[:, k:].flatten(), ignore_index=IGNORE))
    return losses


def test_each_depth_loss_is_the_papers(registry):
    model = build(tiny_config(registry, mtp=MTP, **LLAMA)).train()
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    targets[0, 5] = IGNORE
    model(idx)
    got = model.auxiliary_losses(targets)
    expected = paper_losses(model, idx, targets)
    assert set(got) == {"mtp_1", "mtp_2"}
    for k, loss in enumerate(expected, start=1):
        torch.testing.assert_close(got[f"mtp_{k}"].value, loss, rtol=1e-5, atol=1e-6)
        assert got[f"mtp_{k}"].weight == pytest.approx(0.3 / 2)  # λ / D


def test_chained_by_normed_outputs_with_its_own_embedding_each_depth_loss_is_the_papers_so_changed(registry):
    mtp = MTP | {"chain_normed": True, "own_embedding": True}
    model = build(tiny_config(registry, mtp=mtp, **LLAMA)).train()
    assert model.mtp.token_embedding.weight.data_ptr() != model.token_embedding.weight.data_ptr()
    with torch.no_grad():  # norms of weight 1 would make RMSNorm(RMSNorm_k(h)) RMSNorm(h), hiding the chaining
        for module in model.mtp.layers:
            module.norm.weight.copy_(1 + 0.5 * torch.randn_like(module.norm.weight))
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    model(idx)
    got = model.auxiliary_losses(targets)
    for k, loss in enumerate(paper_losses(model, idx, targets, chain_normed=True), start=1):
        torch.testing.assert_close(got[f"mtp_{k}"].value, loss, rtol=1e-5, atol=1e-6)
    unchained = paper_losses(model, idx, targets)[1]
    assert not torch.allclose(got["mtp_2"].value, unchained)  # the chaining shows at depth 2


def test_the_blocks_are_built_as_the_layer_kind_named(registry):
    kinds = {"windowed": {"attention": {"name": "sliding_window", "window": 3}}}
    model = build(tiny_config(registry, mtp=MTP | {"layer_kind": "windowed"}, layer_kinds=kinds, **LLAMA))
    assert all(getattr(b.attention.params, "window", None) == 3 for b in model.mtp.blocks)
    assert not any(hasattr(b.attention.params, "window") for b in model.blocks)  # the model's layers stay full
    with pytest.raises(ConfigError, match="mtp.layer_kind 'nowhere' is not in layer_kinds"):
        tiny_config(registry, mtp=MTP | {"layer_kind": "nowhere"}, layer_kinds=kinds, **LLAMA)


def test_the_main_model_is_unchanged_and_evaluation_runs_no_mtp(registry):
    with_mtp = build(tiny_config(registry, mtp=MTP, **LLAMA))
    without = build(tiny_config(registry, **LLAMA))
    missing, unexpected = without.load_state_dict(with_mtp.state_dict(), strict=False)
    assert not missing and unexpected and all(name.startswith("mtp.layers.") for name in unexpected)
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(with_mtp(idx), without(idx), rtol=0, atol=0)
    assert with_mtp.auxiliary_losses(idx) == {}  # eval mode: the MTP modules did not run


def test_training_moves_the_mtp_weights_and_they_count_under_mtp(registry):
    model = build(tiny_config(registry, mtp=MTP, **LLAMA)).train()
    idx = torch.randint(0, 50, (2, 12))
    logits = model(idx)
    aux = model.auxiliary_losses(idx.roll(-1, 1))
    (
        F.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten()) + sum(a.weight * a.value for a in aux.values())
    ).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mtp.parameters())
    per_depth = sum(p.numel() for p in model.mtp.layers[0].parameters())
    C = model.config.d_model
    block = sum(p.numel() for p in model.blocks[-1].parameters())
    assert per_depth == block + 2 * C * C + 3 * C  # the block, M_k and three RMSNorm weights
    assert costs.param_counts(model)["mtp"] == 2 * per_depth


def test_flops_count_each_depths_projection_block_and_shared_head(registry):
    model, plain = build(tiny_config(registry, mtp=MTP, **LLAMA)), build(tiny_config(registry, **LLAMA))
    C, V, T = model.config.d_model, model.config.vocab_size, model.config.context_length
    flops = costs.flops_per_token(plain, T)
    block = (flops["attention"] + flops["feed_forward"]) // 2  # one of the two layers, alike
    # per depth: M_k (C x 2C), the block, and the shared head's (V x C) matmul, 2 FLOPs per weight
    assert costs.flops_per_token(model, T)["mtp"] == 2 * (2 * 2 * C * C + block + 2 * C * V)


def test_inference_flops_leave_out_the_mtp_modules_and_training_flops_count_them(registry):
    ffn = {"name": "swiglu", "hidden": 64}
    model = build(tiny_config(registry, mtp=MTP, **{**LLAMA, "feed_forward": ffn}))
    C, H, V, T, L, D = 32, 64, 50, 16, 2, 2  # tiny_config's dims: 4 heads of 8, 2 key/value heads
    attention = 2 * (C * C + 2 * C * (2 * 8) + C * C) + 4 * C * T  # q, k, v, o; QK^T and AV over T keys
    block = attention + 2 * 3 * C * H  # and SwiGLU's gate, up and down
    head = 2 * V * C
    forward = L * block + head  # inference runs no MTP module
    mtp = D * (2 * 2 * C * C + block + head)  # per depth: M_k (C x 2C), the block, the shared head again
    flops = costs.flops_per_token(model)
    assert (flops["forward"], flops["mtp"]) == (forward, mtp) == (44_160, 55_552)
    assert flops["training"] == 3 * (forward + mtp) == 299_136


def test_describe_counts_the_cache_speculative_decoding_adds():
    from pathlib import Path

    from gptzoo.recipes.cli.describe import describe
    from gptzoo.recipes.config.schema import load_run_config

    style = Path(__file__).resolve().parents[2] / "configs" / "deepseek-v3-mtp-style.toml"
    info = describe(load_run_config(style, ["model.vocab_size=512"]))
    # one depth whose latent-attention block caches its latent (32) and rotary key (16), fp32, at 64 tokens
    assert info["kv_cache"]["mtp_bytes_per_sequence"] == (32 + 16) * 4 * 64


def test_conformance_kit(registry):
    check_component("mtp", "sequential", registry, depth=2)


def test_matches_transformers_mtp_layer_on_a_llama(registry):
    """transformers' MtpModel (its speculative decoding's MTP layers, the same enorm / hnorm / eh_proj /
    block / post-norm as DeepSeek-V3's checkpoints) built on a tiny Llama, our weights copied in. It
    chains depths through the normalised hidden state where the paper chains the block's output, so
    one depth is compared (DeepSeek-V3 and GLM-4.5 ship one); it places the MTP block at the positions
    of the tokens it reads, one after ours, which rotary attention cannot tell apart."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_layers import MtpModel

    config = tiny_config(registry, mtp={"name": "sequential", "depth": 1}, n_kv_heads=2, **LLAMA)
    ours = build(config)
    C, nh, nkv, hs = config.d_model, config.n_heads, 2, config.d_model // config.n_heads
    hf_config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=C,
        intermediate_size=ours.blocks[0].feed_forward.gate_proj.out_features,
        num_hidden_layers=2,
        num_attention_heads=nh,
        num_key_value_heads=nkv,
        max_position_embeddings=64,
        rms_norm_eps=ours.final_norm.params.eps,
        tie_word_embeddings=config.tied_head,
        rope_theta=10000.0,
    )
    hf_config.num_mtp_layers = 1
    main = transformers.LlamaForCausalLM(hf_config).eval()
    mtp = MtpModel(main, 1).eval()

    def copy_block(theirs, block):
        q, k, v = block.attention.qkv.weight.split([nh * hs, nkv * hs, nkv * hs])
        attention, mlp = theirs.self_attn, theirs.mlp
        pairs = [
            (theirs.input_layernorm.weight, block.attn_norm.weight),
            (attention.q_proj.weight, q),
            (attention.k_proj.weight, k),
            (attention.v_proj.weight, v),
            (attention.o_proj.weight, block.attention.out_proj.weight),
            (theirs.post_attention_layernorm.weight, block.ffn_norm.weight),
            (mlp.gate_proj.weight, block.feed_forward.gate_proj.weight),
            (mlp.up_proj.weight, block.feed_forward.up_proj.weight),
            (mlp.down_proj.weight, block.feed_forward.out_proj.weight),
        ]
        for target, source in pairs:
            target.copy_(source)

    with torch.no_grad():
        main.model.embed_tokens.weight.copy_(ours.token_embedding.weight)
        main.model.norm.weight.copy_(ours.final_norm.weight)
        main.lm_head.weight.copy_(ours.head.weight)
        for theirs, block in zip(main.model.layers, ours.blocks, strict=True):
            copy_block(theirs, block)
        layer, module = mtp.layers[0], ours.mtp.layers[0]
        layer.enorm.weight.copy_(module.enorm.weight)
        layer.hnorm.weight.copy_(module.hnorm.weight)
        layer.eh_proj.weight.copy_(module.eh_proj.weight)
        layer.post_norm.weight.copy_(module.norm.weight)
        copy_block(layer.mtp_block, module.block)

        idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
        hidden = main(idx, output_hidden_states=True).hidden_states[-1]
        theirs = mtp.forward_layer(0, hidden, torch.arange(1, 13).expand(2, 12), None, input_ids=idx.roll(-1, 1))
        h = ours.hidden_states(idx)
        torch.testing.assert_close(h, hidden, rtol=1e-5, atol=1e-5)
        got = ours.predict_ahead(h, idx.roll(-1, 1).unsqueeze(-1))[0]
    torch.testing.assert_close(got, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.head(got), mtp._project_to_logits(theirs), rtol=1e-4, atol=1e-5)


def test_training_logs_each_depth_and_set_reaches_the_section(registry, tmp_path, shared_data):
    import json

    from gptzoo.recipes.config.schema import load_run_config, validate_run_config
    from gptzoo.recipes.training.loop import train

    data = {
        "model": {
            "context_length": 16,
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "tokenizer": "char",
            "mtp": "sequential",
        },
        "data": {"source": str(shared_data("the-verdict.txt")), "cache_dir": str(tmp_path / "cache")},
        "train": {"max_steps": 2, "batch_size": 4, "eval_interval": 2, "eval_batches": 1, "sample_tokens": 0},
    }
    train(validate_run_config(data, "test", registry), tmp_path / "run", registry=registry, progress=False)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["aux_mtp_1"] > 0 and "aux_mtp_2" not in record

    path = tmp_path / "plain.toml"
    path.write_text('[model]\ncontext_length = 16\nd_model = 32\nn_layers = 2\nn_heads = 4\ntokenizer = "char"\n')
    sweep_like = load_run_config(path, ["model.mtp.name=sequential", "model.mtp.depth=2", "model.mtp.loss_weight=0.1"])
    assert (sweep_like.model.mtp.params.depth, sweep_like.model.mtp.params.loss_weight) == (2, 0.1)


def test_compiles_whole_with_its_training_forward(registry):
    model = build(tiny_config(registry, mtp=MTP, **LLAMA)).train()
    idx = torch.randint(0, 50, (2, 12))
    compiled_logits = torch.compile(model, fullgraph=True)(idx)
    got = {k: a.value for k, a in model.auxiliary_losses(idx).items()}
    torch.testing.assert_close(compiled_logits, model(idx), rtol=1e-5, atol=1e-5)
    expected = {k: a.value for k, a in model.auxiliary_losses(idx).items()}
    assert set(got) == {"mtp_1", "mtp_2"}
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_an_ablation_sweeps_the_depth_and_the_weight(tmp_path):
    from pathlib import Path

    from gptzoo.recipes.research.sweep.plan import load_sweep

    base = Path(__file__).resolve().parents[2] / "configs" / "deepseek-v3-mtp-style.toml"
    sweep = tmp_path / "mtp.toml"
    sweep.write_text(
        f'base = "{base}"\nseeds = [0]\n[set]\n"model.vocab_size" = 512\n'
        '[axes]\n"model.mtp.depth" = [1, 2]\n"model.mtp.loss_weight" = [0.1, 0.3]\n'
    )
    configs = [v.config.model.mtp.params for v in load_sweep(sweep).variants]
    assert {(p.depth, p.loss_weight) for p in configs} == {(1, 0.1), (1, 0.3), (2, 0.1), (2, 0.3)}

"""Native batch-1 decode step (models.decode_step, csrc/decode_step) against the eager lean forward
(its reference) and Hugging Face generate: logits within tolerance, greedy tokens equal."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

transformers = pytest.importorskip("transformers")

import slimrt  # noqa: E402
from slimrt import _native  # noqa: E402
from slimrt.models import KernelPolicy  # noqa: E402
from slimrt.models._common import Batch  # noqa: E402
from slimrt.recipe import Recipe  # noqa: E402
from slimrt.runner import Runner  # noqa: E402

from test_runner import PROMPTS, hf_greedy, tiny_gpt2, tiny_llama, to_int8  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.available(), reason="needs the native extension")
transformers.logging.set_verbosity_error()
NEW = 12


def w8(model):
    slimrt.compress(model, Recipe.preset("w8", ignore=[]), progress=False)
    return model


def w4(model, **params):
    """w4 body with the preset's int8 head (a mixed plan), or every linear w4 (head="w4")."""
    slimrt.compress(model, Recipe(methods=("w4",), params={"w4": params}, ignore=()), progress=False)
    return model


def variant(arch: str, **kw):
    """A tiny Llama-family model of ``arch`` (GQA, head_dim 16), every linear w8 (lm_head included)."""
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{arch}Config")(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=300, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
        pad_token_id=None, **kw)
    return w8(getattr(transformers, f"{arch}ForCausalLM")(cfg).eval())


def smoothquant(model, calib_seed: int = 1):
    """w8a8-sq on every linear (lm_head weight-only), calibrated on random token ids: q/k/v and gate/up
    get one shared smoothing vector each, o_proj and down_proj their own; decodes at M = 1 with w8."""
    g = torch.Generator().manual_seed(calib_seed)
    calib = [torch.randint(0, model.config.vocab_size, (2, 24), generator=g) for _ in range(2)]
    slimrt.compress(model, Recipe.preset("w8a8-sq", ignore=[]), calibration=calib, progress=False)
    return model


MODELS = {
    "llama": lambda: w8(tiny_llama()),
    "llama-w8a8-sq": lambda: smoothquant(tiny_llama()),
    "gpt2-w8a8-sq": lambda: smoothquant(tiny_gpt2()),
    "llama-mha-w8a8-modules": lambda: to_int8(tiny_llama(2, num_key_value_heads=4)),  # w8 kernel at M = 1
    "mistral": lambda: variant("Mistral"),
    "qwen2-bias": lambda: variant("Qwen2"),
    "qwen3-qk-norm": lambda: variant("Qwen3"),
    # odd sizes: head_dim 12 and hidden 36 (vector tails), MLP width 37, vocab 257, 3 heads on 1 KV head
    "llama-odd-sizes": lambda: w8(tiny_llama(4, hidden_size=36, intermediate_size=37, num_attention_heads=3,
                                             num_key_value_heads=1, vocab_size=257)),
    # RoPE over the first half of each head only (rot_dim 8 of head_dim 16): the lean forward's reading
    "llama-partial-rotary": lambda: w8(tiny_llama(6, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    "gpt2": lambda: w8(tiny_gpt2()),
    "gpt2-odd-sizes": lambda: w8(tiny_gpt2(5, n_embd=36, n_head=3, n_inner=37, vocab_size=257)),
    "gpt2-gelu-erf-inverse-layer-scale": lambda: w8(tiny_gpt2(3, activation_function="gelu",
                                                                scale_attn_by_inverse_layer_idx=True)),
    "llama-w4": lambda: w4(tiny_llama()),
    "llama-w4-odd-sizes-g32-symmetric-w4-head": lambda: w4(
        tiny_llama(4, hidden_size=36, intermediate_size=37, num_attention_heads=3, num_key_value_heads=1,
                   vocab_size=257), group_size=32, zero_point=False, head="w4"),
    "gpt2-w4": lambda: w4(tiny_gpt2(), group_size=128),
}


# llama-partial-rotary: HF's Llama and the lean forward already disagree on partial_rotary_factor
# (greedy tokens differ on 2 of 4 prompts with the eager step too); the native step follows the lean
# forward and is compared with it only (test_native_step_logits_and_cache_match_the_eager_forward).
@pytest.mark.parametrize("name", [n for n in MODELS if n != "llama-partial-rotary"])
def test_native_greedy_equals_eager_and_hf(name):
    model = MODELS[name]()
    rt, eager = Runner(model), Runner(model, native=False)
    assert rt.native is not None, rt.native_reason
    assert eager.native is None
    for p in PROMPTS:
        got = rt.generate_ids([p], NEW, eos=False)[0]
        assert got == eager.generate_ids([p], NEW, eos=False)[0], f"{name} prompt {p}: native != eager"
        if "w8a8" not in name:  # HF runs those modules' own w8a8 kernel at M = 1, the runner w8
            assert got == hf_greedy(model, p, NEW), f"{name} prompt {p}: native != HF generate"


def _logits_both(rt: Runner, prompt: list[int], steps: int):
    """The prefill, then per step: (native logits, eager logits, native cache, eager cache, last slot),
    each side on its own cache, both fed the eager forward's greedy tokens."""
    lean = rt.lean
    max_len = len(prompt) + steps + 1
    batch = Batch.left_padded([len(prompt)], max_len, torch.device("cpu"))
    pos = lean.prepare(batch)
    ids = torch.tensor([prompt])
    out = []
    with torch.inference_mode():
        c_nat, c_eag = lean.new_cache(1, max_len), lean.new_cache(1, max_len)
        sess = rt.native.session(c_nat, pos, max_len)
        if sess.max_prefill >= len(prompt):
            got = sess.prefill(ids[0]).clone()
            assert sess.greedy().item() == got.argmax(-1).item()
            logits = lean.forward(ids, pos, c_eag, 0, None, True)
        else:  # w8a8 models prefill with the w8a8 kernel: feed the prompt one token at a time on both sides
            for slot, t in enumerate(prompt):
                tok = torch.tensor([t])
                got = sess.step(tok, slot).clone()
                logits = lean.forward(tok.unsqueeze(1), pos, c_eag, slot, None, False)
        out.append((got, logits, c_nat, c_eag, len(prompt) - 1))
        for s in range(steps):
            tok = logits.argmax(-1)
            slot = len(prompt) + s
            got = sess.step(tok, slot).clone()
            assert sess.greedy().item() == got.argmax(-1).item()
            logits = lean.forward(tok.unsqueeze(1), pos, c_eag, slot, None, False)
            out.append((got, logits, c_nat, c_eag, slot))
    return out


@pytest.fixture(params=["avx512", "avx2"])
def isa(request):
    """The AVX-512 and the portable small kernels (the avx2 ISA runs the portable ones)."""
    ext = _native.load()
    if request.param not in ext.available_isas():
        pytest.skip(f"this CPU has no {request.param}")
    before = ext.active_isa()
    ext.set_isa(request.param)
    yield request.param
    ext.set_isa(before)


@pytest.mark.parametrize("name", ["llama", "llama-odd-sizes", "llama-partial-rotary", "qwen3-qk-norm", "gpt2",
                                  "gpt2-odd-sizes", "gpt2-gelu-erf-inverse-layer-scale", "llama-w4", "gpt2-w4",
                                  "llama-w8a8-sq", "gpt2-w8a8-sq"])
def test_native_step_logits_and_cache_match_the_eager_forward(name, isa):
    rt = Runner(MODELS[name]())
    # w4 quantizes activations to int8 per group: a last-bit difference of a norm's output (the small
    # ops' fp32 order) can move one x_q by one step, which moves a logit by ~scale * x_scale * K / G;
    # measured on gpt2-w4: 0.0325 of a largest logit of 5.0 (0.65%). w8 keeps fp32 activations.
    rel, cache_tol = (2e-2, 1e-1) if "w4" in name else (1e-5, 1e-5)  # cache: measured 0.04 on gpt2-w4
    for got, want, c_nat, c_eag, slot in _logits_both(rt, PROMPTS[0], 6):
        err = (got - want).abs().max().item()
        tol = rel * want.abs().max().item()  # w8 measured: <= 5e-7 relative (fp32 op order only)
        worst = (got - want).abs().argmax().item()
        assert err <= tol, f"{name} {isa} slot {slot}: max |native - eager| = {err:.3g} > {tol:.3g} at vocab {worst}"
        for layer in range(len(c_nat.k)):
            for kind in ("k", "v"):
                a = getattr(c_nat, kind)[layer][:, :, :slot + 1]
                b = getattr(c_eag, kind)[layer][:, :, :slot + 1]
                torch.testing.assert_close(a, b, rtol=cache_tol, atol=cache_tol,
                                           msg=lambda m: f"{name} layer {layer} {kind} cache: {m}")


def test_native_greedy_token_is_torch_argmax_on_ties_and_nan(isa):
    """The step's own argmax (used for greedy decoding) follows torch.argmax: the first maximum, and
    NaN counts as the maximum. lm_head rows 3 and 7 are made identical, every other row's scale 0."""
    model = MODELS["llama"]()
    head = model.lm_head
    with torch.no_grad():
        head.w_q[7] = head.w_q[3]
        head.w_scale.zero_()
        head.w_scale[3] = head.w_scale[7] = 1.0
    head.repack()
    rt = Runner(model)
    lean = rt.lean
    pos = lean.prepare(Batch.left_padded([3], 8, torch.device("cpu")))

    def greedy():
        sess = rt.native.session(lean.new_cache(1, 8), pos, 8)
        logits = sess.prefill(torch.tensor([1, 2, 3]))
        assert logits[0, 3] == logits[0, 7] or logits[0, 7].isnan()
        return sess.greedy().item(), logits.argmax(-1).item(), logits[0, 3].item()

    got, want, tied = greedy()
    if tied < 0:  # make the tied pair the maximum
        with torch.no_grad():
            head.w_scale[3] = head.w_scale[7] = -1.0
        rt = Runner(model)
        got, want, tied = greedy()
    assert tied > 0 and got == want == 3
    with torch.no_grad():
        head.w_scale[7] = float("nan")
    rt = Runner(model)
    got, want, _ = greedy()
    assert got == want == 7


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_nan_in_the_model_shows_as_nan_logits(name, isa):
    """RELIABILITY 26: a NaN embedding row reaches the logits as NaN on both paths, never hidden."""
    model = MODELS[name]()
    embed = model.model.embed_tokens.weight if name == "llama" else model.transformer.wte.weight
    with torch.no_grad():
        embed[4] = float("nan")
    rt = Runner(model)
    for got, want, *_ in _logits_both(rt, [1, 2, 4], 1)[:1]:
        assert bool(want.isnan().all()) and bool(got.isnan().all())


def test_many_sessions_and_steps_keep_memory_flat():
    """RELIABILITY 35: sessions (per generate call) and steps allocate nothing that outlives them."""
    from test_leaks import _growth

    rt = Runner(MODELS["llama"]())
    lean = rt.lean
    pos = lean.prepare(Batch.left_padded([3], 16, torch.device("cpu")))
    tok = torch.tensor([1])

    def cycle():
        sess = rt.native.session(lean.new_cache(1, 16), pos, 16)
        sess.prefill(torch.tensor([1, 2, 3]))
        for slot in range(3, 16):
            sess.step(tok, slot)

    grown = _growth(cycle, warmup=50, cycles=1500)
    assert grown < 8, f"RSS grew {grown:.1f} MB over 1500 sessions of 13 steps"


def test_checkpoint_round_trip_runs_native(tmp_path):
    model = MODELS["qwen3-qk-norm"]()
    slimrt.save(model, tmp_path / "ck")
    rt = slimrt.load(tmp_path / "ck")
    assert rt.native is not None, rt.native_reason
    for p in PROMPTS[:2]:
        assert rt.generate_ids([p], NEW, eos=False)[0] == hf_greedy(model, p, NEW)


def test_prefill_runs_natively_only_where_every_linear_runs_w8():
    assert Runner(MODELS["llama"]()).native.max_prefill == float("inf")
    rt = Runner(MODELS["llama-mha-w8a8-modules"]())  # w8a8 modules: M >= 2 runs w8a8, so an eager prefill
    assert rt.native.max_prefill == 1
    assert Runner(rt.model, policy=KernelPolicy(mode="auto", w8a8_min_m=5)).native.max_prefill == 4


def test_head_and_ffn_pruned_w8_model_runs_native():
    from test_prune import IDS, recipe, tiny_llama as prunable_llama

    model = prunable_llama()
    r = recipe(0.5, 0.25)
    slimrt.compress(model, Recipe(methods=(*r.methods, "w8"), params=r.params, ignore=()), calibration=[IDS],
                    progress=False)
    rt = Runner(model)
    assert rt.native is not None, rt.native_reason
    prompt = IDS[0, :6].tolist()
    assert rt.generate_ids([prompt], 8, eos=False)[0] == hf_greedy(model, prompt, 8)


def test_smoothquant_linears_that_read_one_input_share_one_vector_and_run_native():
    model = smoothquant(tiny_llama())
    for layer in model.model.layers:
        at, mlp = layer.self_attn, layer.mlp
        assert at.q_proj.smooth is not None and mlp.down_proj.smooth is not None
        assert torch.equal(at.q_proj.smooth, at.k_proj.smooth) and torch.equal(at.q_proj.smooth, at.v_proj.smooth)
        assert torch.equal(mlp.gate_proj.smooth, mlp.up_proj.smooth)
        assert not torch.equal(at.o_proj.smooth, at.q_proj.smooth)  # a different input, its own vector
    assert model.lm_head.smooth is None and model.lm_head.mode == "w8"  # the head is weight-only
    rows = {r["name"]: r for r in model.slimrt_meta["layers"] if r.get("smoothquant")}
    assert rows["model.layers.0.self_attn.q_proj"]["smoothquant"].endswith("joint with 2 more")
    assert rows["model.layers.0.mlp.up_proj"]["smoothquant"].endswith("joint with 1 more")
    assert rows["model.layers.0.mlp.down_proj"]["smoothquant"] == "alpha=0.5"
    rt = Runner(model)
    assert rt.native is not None, rt.native_reason


def test_fused_linears_with_different_smoothing_vectors_keep_the_eager_step():
    model = smoothquant(tiny_llama())
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.smooth.mul_(2.0)  # no longer shared with q/v
    rt = Runner(model)
    assert rt.native is None and "layer 1 q/k/v" in rt.native_reason and "smoothing" in rt.native_reason


def test_ineligible_models_keep_the_eager_step_and_say_why():
    dense = tiny_llama()
    rt = Runner(dense)
    assert rt.native is None and "Linear" in rt.native_reason
    bf16 = w8(tiny_llama()).to(torch.bfloat16)
    rt = Runner(bf16)
    assert rt.native is None and "bfloat16" in rt.native_reason
    assert Runner(dense, native=False).native_reason.startswith("disabled")
    window = tiny_llama()
    slimrt.compress(window, Recipe(methods=("sparse_attention", "w8"), ignore=(),
                                   params={"sparse_attention": {"window": 8, "num_global": 2, "block_size": 4}}),
                    progress=False)
    rt = Runner(window)
    assert rt.native is None and "sliding-window" in rt.native_reason
    assert rt.generate_ids([PROMPTS[0]], NEW, eos=False) == Runner(window, native=False).generate_ids(
        [PROMPTS[0]], NEW, eos=False)


def test_reference_backend_keeps_the_eager_step():
    """SLIMRT_BACKEND=reference: the ops run PyTorch, so the native step (which stands in for the
    native kernels) must not run either."""
    code = ("import torch, slimrt\n"
            "from test_runner import tiny_llama\n"
            "m = tiny_llama()\n"
            "slimrt.compress(m, slimrt.Recipe.preset('w8', ignore=[]), progress=False)\n"
            "rt = slimrt.Runner(m)\n"
            "print(rt.native is None, rt.native_reason)\n")
    env = {**os.environ, "SLIMRT_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("True") and "SLIMRT_BACKEND=reference" in out.stdout, out.stdout


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_left_padded_decode_runs_native_and_equals_eager(family):
    """A batch decodes natively (every linear at M = B is w8; the padded prefill stays eager): the
    same tokens as the eager batched loop, and as each prompt alone."""
    model = MODELS[family]()
    rt, eager = Runner(model), Runner(model, native=False)
    assert rt.native.max_batch == float("inf")
    together = rt.generate_ids(PROMPTS, NEW, eos=False)
    assert together == eager.generate_ids(PROMPTS, NEW, eos=False)
    assert together == [rt.generate_ids([p], NEW, eos=False)[0] for p in PROMPTS]


@pytest.mark.parametrize("family", ["llama", "qwen3-qk-norm", "gpt2"])
def test_batched_native_step_logits_match_the_eager_forward(family, isa):
    """Left-padded rows: each row's RoPE / position row and key range [pad, slot] as the eager mask has it."""
    rt = Runner(MODELS[family]())
    lean = rt.lean
    lengths = [len(p) for p in PROMPTS]
    plen, steps = max(lengths), 5
    max_len = plen + steps
    batch = Batch.left_padded(lengths, max_len, torch.device("cpu"))
    pos = lean.prepare(batch)
    ids = torch.zeros(len(PROMPTS), plen, dtype=torch.long)
    for r, p in enumerate(PROMPTS):
        ids[r, plen - len(p):] = torch.tensor(p)
    with torch.inference_mode():
        c_nat, c_eag = lean.new_cache(len(PROMPTS), max_len), lean.new_cache(len(PROMPTS), max_len)
        lean.forward(ids, pos, c_nat, 0, batch.prefill_mask(), False)
        logits = lean.forward(ids, pos, c_eag, 0, batch.prefill_mask(), False)
        sess = rt.native.session(c_nat, pos, max_len, [plen - n for n in lengths])
        assert sess.max_prefill == 0  # a padded batch prefills eagerly
        for s in range(steps):
            tok = logits.argmax(-1)
            slot = plen + s
            got = sess.step(tok, slot).clone()
            assert torch.equal(sess.greedy(), got.argmax(-1))
            logits = lean.forward(tok.unsqueeze(1), pos, c_eag, slot, batch.decode_mask()[..., :slot + 1], False)
            err = (got - logits).abs().max().item()
            assert err <= 1e-5 * logits.abs().max().item(), f"{family} {isa} slot {slot}: max error {err:.3g}"


def test_batched_decode_keeps_the_eager_step_where_w8a8_serves_m_above_1():
    rt = Runner(MODELS["llama-mha-w8a8-modules"]())
    assert rt.native.max_batch == 1
    cache = rt.lean.new_cache(2, 8)
    pos = rt.lean.prepare(Batch.left_padded([3, 3], 8, torch.device("cpu")))
    assert rt.native.session(cache, pos, 8) is None


@pytest.mark.parametrize("family", ["llama", "gpt2", "llama-w4", "gpt2-w4"])
def test_every_isa_path_gives_the_eager_tokens(family):
    """Forced ISAs: llama's fused int8 q/k/v exists only packed, so on the scalar ISA its session is None
    (the eager step runs); GPT-2's unfused weights and w4 weights (fused ones kept row-major too) run
    natively on every path."""
    model = MODELS[family]()
    rt, eager = Runner(model), Runner(model, native=False)
    ext = _native.load()
    before = ext.active_isa()
    try:
        for isa in ext.available_isas():
            ext.set_isa(isa)
            for p in PROMPTS[:2]:
                assert rt.generate_ids([p], NEW, eos=False) == eager.generate_ids([p], NEW, eos=False), isa
            cache = rt.lean.new_cache(1, 8)
            pos = rt.lean.prepare(Batch.left_padded([4], 8, torch.device("cpu")))
            opened = rt.native.session(cache, pos, 8)
            assert (opened is None) == (isa == "scalar" and family == "llama"), isa
            if family.endswith("w4"):
                assert opened is not None
    finally:
        ext.set_isa(before)


def test_concurrent_native_generates_match_serial():
    rt = Runner(MODELS["llama"]())
    want = [rt.generate_ids([p], NEW, eos=False)[0] for p in PROMPTS]
    got: dict[int, list[int]] = {}

    def run(i: int) -> None:
        got[i] = rt.generate_ids([PROMPTS[i]], NEW, eos=False)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(PROMPTS))] == want


def test_bad_input_is_a_clear_error():
    rt = Runner(MODELS["llama"]())
    lean = rt.lean
    cache = lean.new_cache(1, 8)
    pos = lean.prepare(Batch.left_padded([4], 8, torch.device("cpu")))
    sess = rt.native.session(cache, pos, 8)
    with pytest.raises(ValueError, match="token 300 is outside"):
        sess.step(torch.tensor([300]), 4)
    with pytest.raises(ValueError, match="token -1 is outside"):
        sess.step(torch.tensor([-1]), 4)
    with pytest.raises(ValueError, match="slot 8 is outside"):
        sess.step(torch.tensor([3]), 8)
    with pytest.raises(ValueError, match="one int64 token per row"):
        sess.step(torch.tensor([3.0]), 4)
    with pytest.raises(ValueError, match="one int64 token per row"):
        sess.step(torch.tensor([3, 4]), 4)
    with pytest.raises(ValueError, match="ids must be a 1-D int64"):
        sess.prefill(torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match="0 tokens"):
        sess.prefill(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="token 300 is outside"):
        sess.prefill(torch.tensor([3, 300, 4]))
    with pytest.raises(ValueError, match="slot 8 is outside"):
        sess.prefill(torch.arange(9))
    ext = _native.load()
    with pytest.raises(ValueError, match="caches for"):
        ext.DecodeSession(rt.native.plan, [t.data_ptr() for t in cache.k[:1]], [t.data_ptr() for t in cache.v],
                          8, pos[0].data_ptr(), pos[1].data_ptr(), 0, [0])
    with pytest.raises(ValueError, match="rope cos/sin"):
        ext.DecodeSession(rt.native.plan, [t.data_ptr() for t in cache.k], [t.data_ptr() for t in cache.v],
                          8, 0, 0, 0, [0])
    with pytest.raises(ValueError, match="left padding 8 is outside"):
        ext.DecodeSession(rt.native.plan, [t.data_ptr() for t in cache.k], [t.data_ptr() for t in cache.v],
                          8, pos[0].data_ptr(), pos[1].data_ptr(), 0, [8])
    padded = rt.native.session(cache, pos, 8, [5])
    with pytest.raises(ValueError, match="inside row 0's left padding"):
        padded.step(torch.tensor([3]), 4)
    with pytest.raises(ValueError, match="one unpadded row only"):
        padded.prefill(torch.tensor([3]))
    with pytest.raises(ValueError, match="2 paddings for a cache of 1 rows"):
        rt.native.session(cache, pos, 8, [0, 0])
    # A cache or position tables smaller than max_len promises: refused before any native write.
    small = lean.new_cache(1, 4)
    with pytest.raises(ValueError, match=r"layer 0's cache is k \(1, \d+, 4, \d+\)"):
        rt.native.session(small, pos, 8)
    with pytest.raises(ValueError, match="a cache of 1 layers"):
        cut = lean.new_cache(1, 8)
        cut.k, cut.v = cut.k[:1], cut.v[:1]
        rt.native.session(cut, pos, 8)
    with pytest.raises(ValueError, match="position tables must be float32 with last dim"):
        rt.native.session(cache, (pos[0][..., :2], pos[1][..., :2]), 8)
    plan = ext.DecodePlan(64, 16, 16, 300, 0, 0, 1e-6)
    w = torch.zeros(7, 64, dtype=torch.int8)
    s = torch.ones(7)
    lin = (w.data_ptr(), 0, s.data_ptr(), 0, 7, 64, 0)  # (w, packed, scale, bias, N, K, smooth)
    ln = torch.ones(64)
    with pytest.raises(ValueError, match=r"qkv is \(7, 64\), expected \(128, 64\)"):
        plan.add_layer(ln.data_ptr(), 0, lin, 4, 2, 0, 0, 0.25, lin, ln.data_ptr(), 0, lin, lin)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        plan.add_layer(ln.data_ptr(), 0, lin, 4, 3, 0, 0, 0.25, lin, ln.data_ptr(), 0, lin, lin)
    with pytest.raises(ValueError, match="rot_dim=3"):
        ext.DecodePlan(64, 16, 3, 300, 0, 0, 1e-6)
    with pytest.raises(ValueError, match="no layers or no head"):
        ext.DecodeSession(plan, [], [], 8, pos[0].data_ptr(), pos[1].data_ptr(), 0, [0])


def test_with_w8_at_m1_pins_only_m1():
    from slimrt.models.policy import with_w8_at_m1

    pol = KernelPolicy(per_shape={(8, 4): ((1, "w8a8"),), (4, 4): ((1, "w8a8"), (4, "w8")),
                                  (2, 4): ((1, "w8"), (16, "w8a8")), (6, 4): ((1, "dense"), (2, "w8a8"))})
    got = with_w8_at_m1(pol).per_shape
    assert got[(8, 4)] == ((1, "w8"), (2, "w8a8"))
    assert got[(4, 4)] == ((1, "w8"), (2, "w8a8"), (4, "w8"))
    assert got[(2, 4)] == ((1, "w8"), (16, "w8a8"))
    assert got[(6, 4)] == ((1, "w8"), (2, "w8a8"))


def test_tuned_policy_keeps_the_native_step(monkeypatch):
    """policy="tune" times each layer alone; where it picks w8a8 at M = 1 the runner pins w8 at M = 1
    so the model still decodes natively."""
    from slimrt.models import policy as policy_mod

    model = to_int8(tiny_llama())  # w8a8 modules: the tuned w8a8 at M = 1 applies to them
    shapes = {(m.out_features, m.in_features) for m in model.modules() if isinstance(m, slimrt.nn.Int8Linear)}
    monkeypatch.setattr(policy_mod, "tune", lambda mdl, **kw: KernelPolicy(per_shape={s: ((1, "w8a8"),) for s in shapes}))
    monkeypatch.setattr(slimrt.models, "tune", policy_mod.tune)
    assert Runner(model, policy=KernelPolicy(per_shape={s: ((1, "w8a8"),) for s in shapes})).native is None
    rt = Runner(model, policy="tune")
    assert rt.native is not None, rt.native_reason
    assert all(r[0] == (1, "w8") for r in rt.policy.per_shape.values())
    # pinned rules ((1, w8), (2, w8a8)) are the default policy's: the same tokens as the default runner
    assert rt.generate_ids(PROMPTS, 6) == Runner(model).generate_ids(PROMPTS, 6)


# ----- run_rows: independent sequences per cache row (the server's continuous batching) -----------
def _row_session(rt: Runner, rows: int, max_len: int):
    """A session over ``rows`` cache rows of ``max_len`` slots, each row its own sequence from slot 0."""
    lean = rt.lean
    pos = lean.prepare(Batch.left_padded([max_len] * rows, max_len, torch.device("cpu")))
    cache = lean.new_cache(rows, max_len)
    return rt.native.session(cache, pos, max_len, any_batch=True), cache, pos


def _alone(rt: Runner, prompt: list[int], steps: int, max_len: int):
    """Batch-1 native prefill + greedy steps on a session of its own: [(logits, token)], and its cache."""
    lean = rt.lean
    pos = lean.prepare(Batch.left_padded([len(prompt)], max_len, torch.device("cpu")))
    cache = lean.new_cache(1, max_len)
    sess = rt.native.session(cache, pos, max_len)
    ids = torch.tensor(prompt)
    if len(prompt) <= sess.max_prefill:
        logits = sess.prefill(ids).clone()
    else:  # a model whose M = T calls run w8a8 eagerly: the native prefill all the same (w8 at M = T)
        sess._sess.forward(ids.data_ptr(), len(prompt), 0, sess._out, sess._greedy_ptr, torch.get_num_threads())
        logits = sess.logits[:1].clone()
    out = [(logits, int(logits.argmax()))]
    for s in range(steps):
        logits = sess.step(torch.tensor([out[-1][1]]), len(prompt) + s).clone()
        out.append((logits, int(logits.argmax())))
    return out, cache


@pytest.mark.parametrize("family", ["llama", "qwen3-qk-norm", "gpt2", "llama-mha-w8a8-modules", "llama-w8a8-sq"])
def test_run_rows_gives_each_row_its_batch1_bits(family, isa):
    """Rows prefilled whole, in chunks and in calls shared with other rows' decode steps, then decoded
    together at their own slots: each row's logits and cache equal its own batch-1 prefill + steps
    bit for bit (the w8 kernel's row results do not depend on M)."""
    rt = Runner(MODELS[family]())
    prompts, steps, max_len = PROMPTS[:3], 5, 40
    want = [_alone(rt, p, steps, max_len) for p in prompts]

    def tok(i: int, s: int) -> int:  # prompt i's greedy token after s steps, alone
        return want[i][0][s][1]

    sess, cache, _ = _row_session(rt, 4, max_len)  # row 3 stays unused; rows 2, 0, 1 hold prompts 0, 1, 2
    where = [2, 0, 1]
    got: list[list[torch.Tensor]] = [[], [], []]
    p0, p1, p2 = prompts
    with torch.inference_mode():
        got[0].append(sess.prefill_row(2, torch.tensor(p0))[0].clone())  # prompt 0 whole
        # One call: prompt 0's first step, prompt 1 whole, and the first chunk of prompt 2 (no logits).
        toks = [tok(0, 0)] + p1 + p2[:5]
        rows = [2] + [0] * len(p1) + [1] * 5
        slots = [len(p0)] + list(range(len(p1))) + list(range(5))
        logits, greedy = sess.run_rows(torch.tensor(toks), torch.tensor(rows), torch.tensor(slots),
                                       torch.tensor([0, len(p1)]))
        assert torch.equal(greedy, logits.argmax(-1))
        got[0].append(logits[0].clone())
        got[1].append(logits[1].clone())
        # Next call: prompts 0 and 1 step, the rest of prompt 2 completes its prefill.
        toks = [tok(0, 1), tok(1, 0)] + p2[5:]
        rows = [2, 0] + [1] * (len(p2) - 5)
        slots = [len(p0) + 1, len(p1)] + list(range(5, len(p2)))
        logits, _ = sess.run_rows(torch.tensor(toks), torch.tensor(rows), torch.tensor(slots),
                                  torch.tensor([0, 1, len(toks) - 1]))
        for i in range(3):
            got[i].append(logits[i].clone())
        # Then every unfinished row one token a step at its own slot (rows listed out of order).
        while any(len(g) < steps + 1 for g in got):
            live = [i for i in (2, 1, 0) if len(got[i]) < steps + 1]
            toks = [tok(i, len(got[i]) - 1) for i in live]
            slots = [len(prompts[i]) + len(got[i]) - 1 for i in live]
            logits = sess.step_rows(torch.tensor(toks), torch.tensor([where[i] for i in live]), torch.tensor(slots))
            for j, i in enumerate(live):
                got[i].append(logits[j].clone())
    for i in range(3):
        assert len(got[i]) == steps + 1
        for s, (lg, (w, _)) in enumerate(zip(got[i], want[i][0])):
            assert torch.equal(lg.view(-1), w.view(-1)), f"{family} {isa} prompt {i} step {s}: logits differ"
        n = len(prompts[i]) + steps
        for layer in range(len(cache.k)):
            assert torch.equal(cache.k[layer][where[i], :, :n], want[i][1].k[layer][0, :, :n])
            assert torch.equal(cache.v[layer][where[i], :, :n], want[i][1].v[layer][0, :, :n])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_run_rows_matches_the_eager_forward(family):
    """The eager lean forward (its reference) on one sequence, against that sequence in row 1 of 2."""
    rt = Runner(MODELS[family]())
    lean, prompt, max_len = rt.lean, PROMPTS[0], 24
    sess, _, _ = _row_session(rt, 2, max_len)
    pos = lean.prepare(Batch.left_padded([len(prompt)], max_len, torch.device("cpu")))
    cache = lean.new_cache(1, max_len)
    with torch.inference_mode():
        sess.prefill_row(0, torch.tensor([3, 4, 5]))  # another sequence in row 0
        got = sess.prefill_row(1, torch.tensor(prompt)).clone()
        want = lean.forward(torch.tensor([prompt]), pos, cache, 0, None, True)
        for s in range(4):
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), f"{family} step {s}"
            tok = want.argmax(-1)
            slot = len(prompt) + s
            got = sess.step_rows(torch.cat([tok, torch.tensor([7])]), torch.tensor([1, 0]),
                                 torch.tensor([slot, 3 + s]))[:1].clone()
            want = lean.forward(tok.unsqueeze(1), pos, cache, slot, None, False)


def test_run_rows_bad_input_is_a_clear_error():
    rt = Runner(MODELS["llama"]())
    sess, _, _ = _row_session(rt, 2, 8)
    t = torch.tensor

    def run(tokens, rows, slots, out=(0,)):
        return sess.run_rows(t(tokens), t(rows), t(slots), t(list(out), dtype=torch.long))

    with pytest.raises(ValueError, match=r"rows\[1\]=2 is outside \[0, 2\)"):
        run([3, 4], [0, 2], [0, 0])
    with pytest.raises(ValueError, match=r"rows\[0\]=-1 is outside"):
        run([3], [-1], [0])
    with pytest.raises(ValueError, match=r"slots\[0\]=8 is outside \[0, 8\)"):
        run([3], [0], [8])
    with pytest.raises(ValueError, match="token 300 is outside"):
        run([300], [0], [0])
    with pytest.raises(ValueError, match="row 1 slot 2 appears twice"):
        run([3, 4], [1, 1], [2, 2])
    with pytest.raises(ValueError, match=r"out\[0\]=2 is outside \[0, n=2\)"):
        run([3, 4], [0, 1], [0, 0], out=[2])
    with pytest.raises(ValueError, match="n_out=3"):
        run([3, 4], [0, 1], [0, 0], out=[0, 1, 1])
    with pytest.raises(ValueError, match="one row and one slot per token"):
        run([3, 4], [0], [0, 1])
    with pytest.raises(ValueError, match="rows must be a 1-D int64"):
        sess.run_rows(t([3]), t([0.0]), t([0]), t([0]))
    with pytest.raises(ValueError, match="tokens must be a 1-D int64"):
        sess.prefill_row(0, t([[3, 4]]))
    with pytest.raises(ValueError, match="got 0 tokens"):
        sess.prefill_row(0, t([], dtype=torch.long))
    logits, _ = run([3], [0], [0], out=[])  # a prefill chunk that ends no prompt: no logits
    assert logits.shape == (0, 300)
    padded = rt.native.session(rt.lean.new_cache(1, 8), rt.lean.prepare(Batch.left_padded([8], 8,
                               torch.device("cpu"))), 8, [2])
    with pytest.raises(ValueError, match=r"slots\[0\]=1 is inside row 0's left padding"):
        padded.run_rows(t([3]), t([0]), t([1]), t([0]))

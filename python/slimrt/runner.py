"""Runner: embed with encoders, generate and stream with decoders, on a lean loop of its own.

Decoding is gpt-fast shaped: one prefill pass over the left-padded prompts writes a static KV
cache (B, Hkv, max_len, D) per layer, then ``decode_one_token`` steps feed one token per row.
No Hugging Face forward or generate runs in the loop; each linear submodule is called directly
(nn.Linear, Conv1D or a slimrt module), with the Int8Linear kernel chosen per call shape.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimrt import models
from slimrt.models._common import Batch
from slimrt.models.policy import KernelPolicy, with_w8_at_m1
from slimrt.models.bert import pool
from slimrt.models.decode_step import NativeDecoder
from slimrt.errors import CheckpointError

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


def read_pooling(path: str | os.PathLike) -> str | None:
    """The pooling mode of a sentence-transformers dir (``1_Pooling/config.json``), or None."""
    cfg_path = os.path.join(os.fspath(path), "1_Pooling", "config.json")
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    for mode in POOLING_MODES:
        if cfg.get(f"pooling_mode_{mode}_tokens" if mode != "cls" else "pooling_mode_cls_token"):
            return mode
    raise ValueError(f"{cfg_path}: no supported pooling mode is set; supported: {', '.join(POOLING_MODES)}")


def read_max_seq_length(path: str | os.PathLike) -> int | None:
    """``max_seq_length`` of a sentence-transformers dir (sentence_bert_config.json), or None."""
    cfg_path = os.path.join(os.fspath(path), "sentence_bert_config.json")
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path, encoding="utf-8") as f:
        value = json.load(f).get("max_seq_length")
    return int(value) if isinstance(value, int) and value > 0 else None


def read_normalize(path: str | os.PathLike) -> bool | None:
    """Whether a sentence-transformers dir ends in a Normalize module (modules.json), or None if not one."""
    cfg_path = os.path.join(os.fspath(path), "modules.json")
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path, encoding="utf-8") as f:
        modules = json.load(f)
    return any(isinstance(m, dict) and str(m.get("type", "")).endswith(".Normalize") for m in modules)


def read_embedding_settings(path: str | os.PathLike) -> dict[str, Any]:
    """What a sentence-transformers model directory says about embedding with it: ``pooling``,
    ``max_seq_length`` (its truncation, often below the model's position limit: 256 for
    all-MiniLM-L6-v2 against 512) and ``normalize``; only the keys the directory sets. A checkpoint
    stores them (compression metadata) so the Runner embeds as sentence-transformers does."""
    found = {"pooling": read_pooling(path), "max_seq_length": read_max_seq_length(path),
             "normalize": read_normalize(path)}
    return {k: v for k, v in found.items() if v is not None}


class Detokenizer:
    """Incremental detokenization: text pieces as tokens arrive, never a split multi-byte character.

    Decodes a short window (from ``prefix`` to the end) and emits what the newest tokens add to it;
    a piece ending in U+FFFD is held back until the bytes that complete the character arrive.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: context that fixes leading-space handling
        self.read = 0  # tokens before this are already emitted
        self.emitted = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        seen = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(seen) and not text.endswith("\ufffd"):
            piece = text[len(seen):]
            self.prefix, self.read = self.read, len(self.ids)
            self.emitted += piece
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is still held back, so that the pieces add up to the full decode."""
        full = self._decode(self.ids)
        piece = full[len(self.emitted):] if full.startswith(self.emitted) else ""
        self.emitted += piece
        return piece


def sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
           generator: torch.Generator | None) -> Tensor:
    """logits (B, V) float32 -> next tokens (B,) long: argmax at temperature 0, else top-k/top-p sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature={temperature!r} must be >= 0 (0 = greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1 or None")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] or None")


class Runner:
    """Runs an HF model object (any family, dense or with slimrt modules swapped in; README: which path).

    ``policy`` picks the Int8Linear kernel per call shape (see models.policy): a KernelPolicy, None
    for the default threshold rule, or "tune" to measure this model's shapes on this machine first
    (a few seconds; ``rt.policy.to_dict()`` keeps the result). ``pooling``
    (mean, cls, max, mean_sqrt_len) and ``max_seq_length`` apply to ``embed``.
    ``native``: batch-1 decode steps run as one native call each (models.decode_step) where the
    model allows it (``rt.native_reason`` says why not otherwise); False keeps the eager step.
    A model no lean forward covers runs on the generic path (its own forward, slimrt modules inside;
    models/generic.py); ``generic=True`` asks for it anyway. ``rt.path`` / ``rt.path_reason`` say which.
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None, *, policy: KernelPolicy | str | None = None,
                 pooling: str | None = None, max_seq_length: int | None = None, native: bool = True,
                 normalize: bool = True, generic: bool = False) -> None:
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(f"Runner: pooling={pooling!r} is not one of {', '.join(POOLING_MODES)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = getattr(model, "config", None)
        tuned = isinstance(policy, str) and policy == "tune"
        if tuned:
            policy = models.tune(model)
        elif policy is not None and not isinstance(policy, KernelPolicy):
            raise ValueError(f"Runner: policy={policy!r} must be a KernelPolicy, 'tune' or None")
        self.policy = policy or KernelPolicy()
        self.lean, self._forward_reason = models.select(model, self.policy, generic_only=generic)
        self.kind: str = self.lean.kind  # "encoder", "decoder", "seq2seq" or "module"
        self.native: NativeDecoder | None = None
        self.native_reason = "disabled (native=False)" if not native else "not a decoder"
        if getattr(self.lean, "family", None) == "generic":
            self.native_reason = "the generic path runs the model's own forward"
        elif native and self.kind == "decoder":
            self.native, self.native_reason = NativeDecoder.build(model, self.policy, self.lean.family)
            if self.native is None and tuned:
                # The tuner times each layer alone and may pick w8a8 at M = 1, which rules out the native
                # step; one native call per token is far faster (450 vs 175 tokens/s on the Llama-style
                # benchmark model), so a tuned decoder keeps w8 at M = 1 where that makes it eligible.
                pinned = with_w8_at_m1(self.policy)
                native_step, reason = NativeDecoder.build(model, pinned, self.lean.family)
                if native_step is not None:
                    self.policy, self.native, self.native_reason = pinned, native_step, reason
                    self.lean = models.build(model, pinned)
        self.pooling = pooling or "mean"
        self.normalize = bool(normalize)
        self.max_seq_length = min(max_seq_length or self.lean.max_positions, self.lean.max_positions)

    @property
    def path(self) -> str:
        """Which forward runs: "native" (one C++ call per decode step), "lean" (slimrt's own forward of
        the family) or "generic" (the model's own forward, slimrt modules inside); ``path_reason`` says why."""
        if self.native is not None:
            return "native"
        return "generic" if getattr(self.lean, "family", None) in ("generic", "module") else "lean"

    @property
    def path_reason(self) -> str:
        """Why this path runs (and, for a decoder off the native step, why not native)."""
        if self.native is not None:
            return f"the native decode step ({self._forward_reason} for the prefill)"
        if self.kind == "decoder" and self.path == "lean":
            return f"{self._forward_reason}; not native: {self.native_reason}"
        return self._forward_reason

    def __repr__(self) -> str:
        meta = getattr(self.model, "slimrt_meta", None) or {}
        recipe = meta.get("recipe") or (meta.get("compression") or {}).get("recipe") or {}
        methods = "+".join(recipe.get("methods", [])) or "none (dense)"
        seen = {t.data_ptr(): t.numel() * t.element_size() for t in self.model.state_dict().values()}  # tied: once
        n_bytes = sum(seen.values())
        why = "" if self.native is not None or self.kind != "decoder" else f" ({self.native_reason})"
        family = getattr(self.config, "model_type", None) or type(self.model).__name__
        if self.path != "generic":
            family = getattr(self.lean, "family", family)
        return (f"Runner(family={family}, kind={self.kind}, path={self.path}{why}, recipe={methods}, "
                f"weights={n_bytes / 1e6:.1f} MB, threads={torch.get_num_threads()})")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, thin: bool = True, model: nn.Module | None = None,
                        **kwargs: Any) -> "Runner":
        """Loads a slimrt checkpoint (slimrt.checkpoint.load_model) and wraps it.

        ``thin`` (default): where the lean forward covers the model (BERT, Llama family, GPT-2), only
        what it reads is built, without importing transformers (checkpoint/thin.py): a load in well
        under a second. ``rt.model`` is then slimrt's weights-only module tree; thin=False gives the
        Hugging Face model (its forward and generate), at the cost of importing its modeling code.
        Any other model loads with its Hugging Face skeleton and runs on the generic path.
        ``model``: the skeleton for a checkpoint of kind "custom" (a class slimrt cannot rebuild)."""
        from slimrt import checkpoint

        loaded = checkpoint.load_model(path, thin=thin and model is None, model=model)
        # Pooling and max_seq_length: a sentence-transformers layout in the directory, else the
        # compression metadata (model.slimrt_meta, stored verbatim as slimrt.json "compression").
        meta = getattr(loaded, "meta", None) or {}
        extra = meta.get("compression") if isinstance(meta, dict) else None
        extra = extra if isinstance(extra, dict) else {}
        pooling = read_pooling(path) or extra.get("pooling")
        max_len = read_max_seq_length(path) or extra.get("max_seq_length")
        normalize = read_normalize(path)
        normalize = extra.get("normalize") if normalize is None else normalize
        kwargs.setdefault("pooling", pooling if isinstance(pooling, str) else None)
        kwargs.setdefault("max_seq_length", max_len if isinstance(max_len, int) and max_len > 0 else None)
        if isinstance(normalize, bool):
            kwargs.setdefault("normalize", normalize)
        try:
            try:
                return cls(loaded.model, loaded.tokenizer, **kwargs)
            except models.NeedsModelForward:  # a thin skeleton the lean forward refuses: the HF model instead
                loaded = checkpoint.load_model(path, thin=False)
                return cls(loaded.model, loaded.tokenizer, **kwargs)
        except CheckpointError:
            raise
        except ValueError as e:  # a valid checkpoint the runner cannot run (an unsupported config value)
            raise ValueError(f"{os.path.abspath(os.fspath(path))}: {e}") from e

    # ----- encoders -------------------------------------------------------------------------
    def embed(self, texts: str | Sequence[str], batch_size: int = 32, normalize: bool | None = None) -> Tensor:
        """Sentence embeddings (N, C) float32 with the model's pooling; unit length if ``normalize``
        (default: the model's own setting, e.g. a sentence-transformers Normalize module; else True)."""
        normalize = self.normalize if normalize is None else normalize
        if self.kind != "encoder":
            raise ValueError(f"embed needs an encoder; this is a {self._what()}" +
                             (": use generate" if self.kind in ("decoder", "seq2seq") else ""))
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("embed: texts is empty; pass at least one string")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("embed: texts must be strings")
        if batch_size < 1:
            raise ValueError(f"embed: batch_size={batch_size} must be >= 1")
        tok = self._need_tokenizer("embed")
        # Longest first (as sentence-transformers does): similar lengths share a batch, less padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: Tensor | None = None
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                idx = order[s:s + batch_size]
                rows = tok([texts[i] for i in idx], truncation=True, max_length=self.max_seq_length)["input_ids"]
                # Right padding done here: any id works under the mask, so no pad token is required.
                ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, row in enumerate(rows):
                    ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
                    mask[r, :len(row)] = 1
                emb = self.embed_ids(ids, mask, normalize).cpu()
                if out is None:  # (N, C): C from the model's output (the generic path has no fixed name for it)
                    out = torch.empty(len(texts), emb.shape[1], dtype=torch.float32)
                out[idx] = emb
        assert out is not None
        return out

    def embed_ids(self, input_ids: Tensor, attention_mask: Tensor, normalize: bool = True) -> Tensor:
        """input_ids, attention_mask (B, T) -> pooled (B, C) float32."""
        with torch.inference_mode():
            input_ids, attention_mask = input_ids.to(self.lean.device), attention_mask.to(self.lean.device)
            emb = pool(self.lean.forward(input_ids, attention_mask), attention_mask, self.pooling)
            return F.normalize(emb, dim=-1) if normalize else emb

    # ----- decoders -------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos: bool = True, stats: dict | None = None) -> str | list[str]:
        """Generated text for one prompt (str) or each of a list (list[str]), prompt not included.

        ``stats``: a dict to receive timings (prompt_tokens, new_tokens, prefill_s, decode_s).
        """
        single = isinstance(prompt, str)
        prompts = self._encode_prompts([prompt] if single else prompt)
        out = self.generate_ids(prompts, max_new_tokens, temperature, top_k, top_p, seed, eos, stats)
        eos_ids = self._eos_ids() if eos else set()
        texts = [self.tokenizer.decode(ids[:-1] if ids and ids[-1] in eos_ids else ids, skip_special_tokens=True,
                                       clean_up_tokenization_spaces=False) for ids in out]
        return texts[0] if single else texts

    def stream(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, eos: bool = True,
               stats: dict | None = None) -> Iterator[str]:
        """Text pieces of one prompt's continuation as they are decoded; they add up to ``generate``'s text.

        Arguments are checked on the call, not on the first ``next()``.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"stream takes one prompt string, got {type(prompt).__name__}; use generate for a list")
        prompts = self._encode_prompts([prompt])
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        self._check_prompts(prompts, max_new_tokens)
        return self._stream(prompts, max_new_tokens, temperature, top_k, top_p, seed, eos, stats)

    def _stream(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None, seed: int | None, eos: bool, stats: dict | None,
                stop_ids: Collection[int] | None = None) -> Iterator[str]:
        detok = Detokenizer(self.tokenizer)
        eos_ids = self._stop_set(eos, stop_ids)
        for tokens in self._token_loop(prompts, max_new_tokens, temperature, top_k, top_p, seed, eos, stats,
                                       stop_ids):
            token = int(tokens[0])
            if token in eos_ids:
                break
            piece = detok.push(token)
            if piece:
                yield piece
        tail = detok.flush()
        if tail:
            yield tail

    def chat(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stats: dict | None = None) -> str:
        """The assistant's reply to a conversation [{"role": "system"|"user"|"assistant", "content": str}, ...].

        The conversation is rendered with the tokenizer's chat template (an error if it has none) and
        the reply ends at the model's end-of-turn token (not included) or after ``max_new_tokens``,
        which is lowered to what is left of the model's context.
        """
        return "".join(self.chat_stream(messages, max_new_tokens, temperature, top_k, top_p, seed, stats))

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 256,
                    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                    seed: int | None = None, stats: dict | None = None) -> Iterator[str]:
        """``chat``'s reply as text pieces while it is decoded; arguments are checked on the call."""
        from slimrt import chat

        lean = self._need_decoder("chat")
        ids = chat.prompt_ids(self._need_tokenizer("chat"), messages)
        room = lean.max_positions - len(ids)
        if room < 1:
            raise ValueError(f"chat: the conversation is {len(ids)} tokens, which fills the model's context of "
                             f"{lean.max_positions}; start a new one or drop old turns")
        max_new_tokens = min(max_new_tokens, room)
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        self._check_prompts([ids], max_new_tokens)
        stop = chat.end_of_turn_ids(self.tokenizer, lean.vocab_size, self._eos_ids())
        return self._stream([ids], max_new_tokens, temperature, top_k, top_p, seed, True, stats, stop)

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                     eos: bool = True, stats: dict | None = None,
                     stop_ids: Collection[int] | None = None) -> list[list[int]]:
        """New token ids per prompt (an EOS that stopped a row is included, as in HF generate).

        ``stop_ids``: the token ids that end a row, instead of the model's EOS ids (with ``eos``)."""
        out: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        eos_ids = self._stop_set(eos, stop_ids)
        for tokens in self._token_loop(prompts, max_new_tokens, temperature, top_k, top_p, seed, eos, stats,
                                       stop_ids):
            for row, t in enumerate(tokens.tolist()):
                if not done[row]:
                    out[row].append(t)
                    done[row] = t in eos_ids
        return out

    def _token_loop(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None, seed: int | None, eos: bool,
                    stats: dict | None = None, stop_ids: Collection[int] | None = None) -> Iterator[Tensor]:
        """Yields the next token of every row (B,) per step; rows that hit EOS keep yielding padding.

        ``stats`` (if given) receives prompt_tokens, new_tokens (steps), prefill_s and decode_s; the
        time spent by the consumer between steps is not counted.
        """
        lean = self._need_decoder("generate")
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        prompts = self._check_prompts(prompts, max_new_tokens)
        if self.kind == "seq2seq":
            yield from self._seq2seq_loop(prompts, max_new_tokens, temperature, top_k, top_p, seed, stats)
            return
        device = lean.device
        lengths = [len(p) for p in prompts]
        plen, b = max(lengths), len(prompts)
        max_len = plen + max_new_tokens
        known_eos = sorted(self._stop_set(eos, stop_ids))
        eos_ids = torch.tensor(known_eos, dtype=torch.long, device=device) if known_eos else None
        pad_id = known_eos[0] if known_eos else 0
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        if stats is not None:
            stats.update(prompt_tokens=sum(lengths), new_tokens=0, prefill_s=0.0, decode_s=0.0)
        if max_new_tokens == 0:
            return
        t0 = time.perf_counter()
        with torch.inference_mode():
            batch = Batch.left_padded(lengths, max_len, device)
            ids = torch.full((b, plen), pad_id, dtype=torch.long, device=device)
            for row, p in enumerate(prompts):
                ids[row, plen - len(p):] = torch.tensor(p, dtype=torch.long)
            pos = lean.prepare(batch)
            cache = lean.new_cache(b, max_len)
            if hasattr(cache, "set_padding"):  # sliding-window ring cache: per-row true positions
                cache.set_padding(batch)
            step_mask = batch.decode_mask()
            # The prefill (one prompt) and each decode step (any batch the w8 kernel serves) are one
            # native call each (models.decode_step) where the model allows it, else the eager forward.
            native = None
            if self.native is not None:
                native = self.native.session(cache, pos, max_len, [plen - n for n in lengths])
            if native is not None and plen <= native.max_prefill:
                logits = native.prefill(ids[0])
            else:
                logits = lean.forward(ids, pos, cache, 0, batch.prefill_mask(), not batch.padded)  # prefill
            finished = torch.zeros(b, dtype=torch.bool, device=device)
        t1 = time.perf_counter()
        if stats is not None:
            stats["prefill_s"] = t1 - t0
        decode_s = 0.0
        for step in range(max_new_tokens):
            t0 = time.perf_counter()
            with torch.inference_mode():
                if temperature == 0 and native is not None and logits is native.logits:
                    tok = native.greedy()  # the native call's own argmax of these logits
                else:
                    tok = sample(logits, temperature, top_k, top_p, generator)
                if eos_ids is not None:
                    tok = tok.masked_fill(finished, pad_id)
                    finished |= torch.isin(tok, eos_ids)
            decode_s += time.perf_counter() - t0
            if stats is not None:
                stats.update(new_tokens=step + 1, decode_s=decode_s)
            yield tok
            if step + 1 == max_new_tokens or (eos_ids is not None and bool(finished.all())):
                return
            t0 = time.perf_counter()
            with torch.inference_mode():  # decode_one_token: slot plen + step, attends to [0, plen + step]
                slot = plen + step
                mask = None if step_mask is None else step_mask[..., :slot + 1]
                if native is not None:
                    logits = native.step(tok, slot)
                else:
                    logits = lean.forward(tok.unsqueeze(1), pos, cache, slot, mask, False)
            decode_s += time.perf_counter() - t0

    def _seq2seq_loop(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int | None,
                      top_p: float | None, seed: int | None, stats: dict | None) -> Iterator[Tensor]:
        """An encoder-decoder model's generate (the model's own), yielded one column of tokens at a time."""
        lengths = [len(p) for p in prompts]
        if stats is not None:
            stats.update(prompt_tokens=sum(lengths), new_tokens=0, prefill_s=0.0, decode_s=0.0)
        if max_new_tokens == 0:
            return
        pad = getattr(self.config, "pad_token_id", None) or 0
        ids = torch.full((len(prompts), max(lengths)), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # right padding: the encoder is not causal
            ids[row, :len(p)] = torch.tensor(p, dtype=torch.long)
            mask[row, :len(p)] = 1
        if seed is not None:
            torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = self.lean.generate(ids.to(self.lean.device), mask.to(self.lean.device), max_new_tokens, temperature,
                                 top_k, top_p).cpu()
        if stats is not None:
            stats.update(new_tokens=out.shape[1], decode_s=time.perf_counter() - t0)
        for step in range(out.shape[1]):
            yield out[:, step]

    # ----- checks ---------------------------------------------------------------------------
    def _what(self) -> str:
        name = getattr(self.config, "model_type", None) or type(self.model).__name__
        return {"module": f"{name} module (not a Hugging Face model): call rt.model(...)"}.get(
            self.kind, f"{name} {self.kind}")

    def _need_decoder(self, what: str):
        if self.kind not in ("decoder", "seq2seq"):  # seq2seq: the model's own generate
            raise ValueError(f"{what} needs a decoder; this is a {self._what()}" +
                             (": use embed" if self.kind == "encoder" else ""))
        return self.lean

    def _need_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise ValueError(f"{what} needs a tokenizer: pass Runner(model, tokenizer) or use the *_ids method")
        return self.tokenizer

    def _encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        self._need_decoder("generate")
        tok = self._need_tokenizer("generate")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("generate: the prompt list is empty; pass at least one prompt")
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("generate: prompts must be strings")
        return [list(tok(p)["input_ids"]) for p in prompts]

    def _check_prompts(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        prompts = [list(map(int, p)) for p in prompts]
        if not prompts:
            raise ValueError("generate: the prompt list is empty; pass at least one prompt")
        ctx, vocab = self.lean.max_positions, self.lean.vocab_size
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"generate: prompt {i} has no tokens")
            if len(p) > ctx:
                raise ValueError(f"generate: prompt {i} has {len(p)} tokens, longer than the model's context of {ctx}")
            if len(p) + max_new_tokens > ctx and self.kind == "decoder":  # seq2seq: the decoder has its own
                raise ValueError(f"generate: prompt {i} has {len(p)} tokens and max_new_tokens={max_new_tokens} "
                                 f"would run past the model's context of {ctx}")
            if min(p) < 0 or max(p) >= vocab:
                raise ValueError(f"generate: prompt {i} has a token id outside the vocabulary [0, {vocab})")
        return prompts

    def _stop_set(self, eos: bool, stop_ids: Collection[int] | None) -> set[int]:
        if stop_ids is not None:
            return {int(i) for i in stop_ids}
        return self._eos_ids() if eos else set()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for src in (getattr(gen, "eos_token_id", None), getattr(self.config, "eos_token_id", None),
                    getattr(self.tokenizer, "eos_token_id", None)):
            if src is not None:
                ids.update([src] if isinstance(src, int) else src)
                break
        return {i for i in ids if 0 <= i < self.lean.vocab_size}


def load(path: str | os.PathLike, **kwargs: Any) -> Runner:
    """``slimrt.load(path)``: a Runner over the checkpoint at ``path``."""
    return Runner.from_checkpoint(path, **kwargs)

"""Autoencoder evaluation: exact reconstruction rate and code sizes.

These are *reconstruction* figures (the decoder reads the codes of the text it regenerates): they
measure compression, never language modelling. Not part of the model's remote-code closure.
"""

from __future__ import annotations

import math

import torch

from ..configuration_hier_ae import EOS_ID
from ..corrections import correction_bits, correction_token_bits
from ..data.batching import frame_document, pad_rows
from ..tokenization_hier_ae import HierAEByteTokenizer


def shares_entropy(shares: list[float]) -> float:
    """Entropy in bits of a distribution given by its shares: [0.5, 0.5] -> 1.0; [0.8, 0.1, 0.1] -> 0.922."""
    return -sum(q * math.log2(q) for q in shares if 0.0 < q < 1.0)


def escape_counts(level, escapes: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """The valid segments `encode` escaped and, of those, the ones with a second digit
    (`HierLevel.two_digit`): escapes (B, S) escape ids (-1 = none), mask (B, S). Example: escapes
    [[-1, 3, 20]] with K_e = 16, all valid -> (2, 1)."""
    m = mask.bool()
    return int(((escapes >= 0) & m).sum()), int((level.two_digit(escapes) & m).sum())


def escape_rates(
    segments: int, escaped: int, n_bytes: int, K: int, K_e: int, deep: int = 0, depth: int = 1
) -> dict:
    """Code bits per byte of a variable-rate code: log2 K a segment, a flag a segment (1 bit, or its
    entropy H(f) at the escaped share f, what an entropy coder spends), log2 K_e an escape. With
    `escape_depth` 2 (`depth`), `deep` of the escaped segments read a second escape digit: log2 K_e
    more each, and the flag has three values (none / one digit / two: H of the three shares, or one
    bit a segment plus one bit an escaped segment).

    Worked example: 10 segments over 20 bytes, 2 escaped, K = 256, K_e = 16: codes alone 10 x 8 / 20 =
    4.0; 1-bit flags 4.0 + (10 + 2 x 4) / 20 = 4.9; f = 0.2, H(f) = 0.722, ideal 4.0 + (7.22 + 8) / 20
    = 4.761. The same with depth 2 and 1 of the 2 deep: 1-bit flags 4.0 + (10 + 2 + 3 x 4) / 20 = 5.2;
    shares (0.8, 0.1, 0.1), H = 0.922, ideal 4.0 + (9.22 + 12) / 20 = 5.061."""
    shares = [
        (segments - escaped) / max(segments, 1),
        (escaped - deep) / max(segments, 1),
        deep / max(segments, 1),
    ]
    h = shares_entropy(shares)
    base = segments * math.log2(K) / n_bytes
    flags_1bit = segments + (escaped if depth > 1 else 0)
    escapes = (escaped + deep) * math.log2(K_e)
    return {
        "escaped_segments": escaped / max(segments, 1),
        "deep_escaped_segments": deep / max(segments, 1),
        "code_bits_per_byte_no_escape": base,
        "code_bits_per_byte_flag_1bit": base + (flags_1bit + escapes) / n_bytes,
        "code_bits_per_byte_flag_ideal": base + (segments * h + escapes) / n_bytes,
    }


def level_escape_rates(model, segments: list[int], escaped: list, n_bytes: int) -> list:
    """`escape_rates` of each level: segments (per level), escaped (per level: escaped segments, those with
    a second digit) -> per level the rates, or None for a level without escape codes."""
    return [
        None
        if not lv.cfg.escape_codebook_size
        else escape_rates(
            s, e, n_bytes, lv.cfg.num_codes, lv.cfg.escape_codebook_size, d, lv.cfg.escape_depth
        )
        for lv, s, (e, d) in zip(model.levels, segments, escaped)
    ]


def cut_at_eos(ids: list[int]) -> list[int]:
    """A decoded row up to and including its first `</s>`: [2, 9, 1, 5] -> [2, 9, 1]."""
    return ids[: ids.index(EOS_ID) + 1] if EOS_ID in ids else ids


def decoded_ids(out) -> list[list[int]]:
    """`model.decode`'s output as ids per row, each cut at its first `</s>`."""
    return [cut_at_eos(seq[keep.bool()].tolist()) for seq, keep in zip(out.sequences, out.attention_mask)]


@torch.no_grad()
def correction_batch(model, enc, refs: list[list[int]], starts: list[int] | None = None) -> dict:
    """With `encode(..., corrections=True)`'s output: per level k, each valid segment's number of token
    corrections, whether it is escaped and its corrections' token bits (`correction_token_bits`), as
    `correction_bits` reads them; per start level l in `starts` (default: every level), the rows
    `decode` gives back exactly from level l's codes with every level's escape codes and corrections
    (the tuples, as `encode` gives them).
    Returns {"stats": [per level {"counts", "escaped", "token_bits"} (N_k,) each], "exact": {l: rows}}."""
    stats = []
    for k, level in enumerate(model.levels):
        mask, fix = enc.code_mask[k], enc.corrections[k]  # (B, S), (B, S, max_segment_len)
        esc = enc.escape_codes[k] if level.escape_quantizer is not None else None  # (B, S) or None
        bits = correction_token_bits(level, enc.codes[k], mask, esc, fix)  # (B, S, max_segment_len)
        m = mask.bool()
        escaped = (esc >= 0)[m] if esc is not None else torch.zeros(int(m.sum()), dtype=torch.bool)
        stats.append(
            {
                "counts": (fix >= 0).sum(-1)[m].cpu(),
                "escaped": escaped.cpu(),
                "token_bits": bits.sum(-1)[m].cpu(),
            }
        )
    exact = {}
    for lv in range(model.num_levels) if starts is None else starts:
        out = model.decode(
            enc.codes[lv],
            enc.code_mask[lv],
            level=lv,
            escape_codes=enc.escape_codes,
            corrections=enc.corrections,
        )
        exact[lv] = sum(d == r for d, r in zip(decoded_ids(out), refs))
    return {"stats": stats, "exact": exact}


def correction_figures(
    model,
    start: int,
    code_bits: float,
    rates: list,
    stats: list[dict],
    exact: int,
    n_texts: int,
    n_bytes: int,
) -> dict:
    """Decoding from level `start` with every level's escape codes and corrections: the exact share, the
    corrections a text (levels 0..start), and the code rate with everything `decode` reads: level
    `start`'s codes (`code_bits` a byte), the escape flags and codes of levels 0..start (`rates[k]`,
    `escape_rates` of level k, None without escape codes) and the corrections of levels 0..start
    (`correction_bits`, each level's counts at this sample's own shares: the ideal cost). stats: per
    level, as `correction_batch` gathers them over the sample (concatenated).

    Worked example, one level without escape codes, 100 bytes, codes 3.0 bits/byte, 4 corrections
    costing 40 bits in all: code_bits_per_byte = 3.0 + 0 + 40 / 100 = 3.4."""
    side = sum(
        r["code_bits_per_byte_flag_ideal"] - r["code_bits_per_byte_no_escape"]
        for r in rates[: start + 1]
        if r
    )
    priced = [
        correction_bits(s["counts"], s["escaped"], s["token_bits"], model.levels[k].cfg.max_segment_len)
        for k, s in enumerate(stats[: start + 1])
    ]
    corr_bits = sum(c["correction_bits"] for c in priced) / n_bytes
    return {
        "exact_match": exact / n_texts,
        "corrections_per_text": sum(c["corrections"] for c in priced) / n_texts,
        "corrected_segments": [
            c["corrected_segments"] / max(len(s["counts"]), 1) for c, s in zip(priced, stats)
        ],
        "escape_bits_per_byte": side,
        "correction_bits_per_byte": corr_bits,
        "code_bits_per_byte": code_bits + side + corr_bits,
    }


@torch.no_grad()
def reconstruction_report(model, docs: list[bytes], batch_size: int = 32, corrections: bool = False) -> dict:
    """Encode each document as `<s>` + bytes + `</s>`, decode from the top-level codes only.

    A document is exact only if `decode` returns exactly its ids up to and including EOS.
    `teacher_forced_accuracy`: level 0's reconstruct-mode argmax on the true previous bytes (what
    decoding would get right if every earlier byte were right); `samples`: the first three lines
    beside their free decodes.
    Returns the exact-match rate, the edit-distance byte accuracy and where the first error falls
    (the `reconstruction` evaluate metric, `hier_ae.metrics`), tokens per segment per level, and code
    bits per byte: top-level codes x log2(K_top^R) / bytes, the fixed-length size of what `decode` needs.
    A top level with escape codes (`escape_codebook_size`) adds the variable-rate figures: the lines
    decoded from the codes plus the escape codes `encode` chose (`escape_exact_match`,
    `escape_byte_accuracy`), the share of segments escaped, and what the flags and escapes cost
    (`escape_code_bits_per_byte` with each segment's flag at its entropy, `..._flag_1bit` with one bit;
    `escape_rates`); the figures above stay those of the codes alone.
    With `corrections`, `encode` also chooses every level's token corrections (`hier_ae.corrections`) and
    the report adds the lines decoded from the top codes with every level's escape codes and corrections
    (`corrected_exact_match`), the corrections a line, and the code rate with all of them
    (`corrected_code_bits_per_byte` = top codes + escape flags and codes + corrections, ideal lengths;
    `correction_figures`).
    """
    from ..metrics import load

    tok = HierAEByteTokenizer()
    predictions, references = [], []
    tf_right = tf_total = 0
    model.eval()  # no statistic moves: forward in eval mode adapts no threshold and no codebook
    device = next(model.parameters()).device
    n_bytes = 0
    segs = [0] * model.num_levels
    toks = [0] * model.num_levels
    top_level = model.levels[-1]
    escaping = top_level.escape_quantizer is not None
    esc_predictions = []
    esc_lv = [[0, 0] for _ in model.levels]  # per level: escaped segments and those with a second digit
    corr_exact, corr_stats = 0, [{"counts": [], "escaped": [], "token_bits": []} for _ in model.levels]
    for i in range(0, len(docs), batch_size):
        framed = [frame_document(d) for d in docs[i : i + batch_size]]
        ids, mask = (t.to(device) for t in pad_rows(framed))  # (B, T) each
        enc = model.encode(ids, mask, corrections=corrections)
        if corrections:  # decoded from the top codes with every level's escape codes and corrections
            top = model.num_levels - 1
            cb = correction_batch(model, enc, [r.tolist() for r in framed], starts=[top])
            corr_exact += cb["exact"][top]
            for lv, st in enumerate(cb["stats"]):
                for key, v in st.items():
                    corr_stats[lv][key].append(v)
        for lv, level in enumerate(model.levels):
            if level.escape_quantizer is not None:
                n_esc, n_deep = escape_counts(level, enc.escape_codes[lv], enc.code_mask[lv])
                esc_lv[lv][0] += n_esc
                esc_lv[lv][1] += n_deep
        # teacher-forced level 0: the decoder reads the true previous bytes and the level's codes
        tf = model(ids, mask, num_levels=1, reconstruct_levels=(0,), run_top_lm=False)
        real = mask.bool()  # (B, T)
        tf_right += int((tf.reconstruct_logits[0].argmax(-1) == ids)[real].sum())
        tf_total += int(real.sum())
        for lv in range(model.num_levels):
            segs[lv] += int(enc.code_mask[lv].sum())
            toks[lv] += int(enc.level_mask[lv].sum())
        top_codes, top_mask = enc.top_codes, enc.top_mask
        esc = enc.escape_codes[-1] if escaping else None  # (B, S): escape code or -1
        del enc  # decode must work from the top-level codes (and escape codes) alone
        predictions += decoded_ids(model.decode(top_codes, top_mask))
        references += [ref.tolist() for ref in framed]
        if escaping:
            esc_predictions += decoded_ids(model.decode(top_codes, top_mask, escape_codes=esc))
        n_bytes += sum(len(d) for d in docs[i : i + batch_size])
    code_bits = [math.log2(lv.cfg.num_codes) for lv in model.levels]
    metric = load("reconstruction")
    scores = metric.compute(predictions=predictions, references=references) if docs else {}
    report = {
        "documents": len(docs),
        "exact_match": scores.get("exact_match", 0.0),
        "teacher_forced_accuracy": tf_right / max(tf_total, 1),
        "byte_accuracy": scores.get("byte_accuracy"),
        "samples": [
            {
                "line": tok.decode(r, skip_special_tokens=True),
                "decoded": tok.decode(p, skip_special_tokens=True),
            }
            for r, p in zip(references[:3], predictions[:3])
        ],
        "first_error_median": scores.get("first_error_median"),
        "tokens_per_segment": [t / max(s, 1) for t, s in zip(toks, segs)],
        "bytes_per_code": [n_bytes / max(s, 1) for s in segs],
        "code_bits_per_byte": segs[-1] * code_bits[-1] / max(n_bytes, 1),
        "code_bits_per_byte_per_level": [s * b / max(n_bytes, 1) for s, b in zip(segs, code_bits)],
    }
    rates = level_escape_rates(model, segs, esc_lv, n_bytes)  # per level, None without escape codes
    if escaping and docs:
        esc_scores = metric.compute(predictions=esc_predictions, references=references)
        top = rates[-1]
        report.update(
            escape_exact_match=esc_scores["exact_match"],
            escape_byte_accuracy=esc_scores["byte_accuracy"],
            escaped_segments=top["escaped_segments"],
            deep_escaped_segments=top["deep_escaped_segments"],
            escape_code_bits_per_byte=top["code_bits_per_byte_flag_ideal"],
            escape_code_bits_per_byte_flag_1bit=top["code_bits_per_byte_flag_1bit"],
        )
    if corrections and docs:
        stats = [{k: torch.cat(v) for k, v in st.items()} for st in corr_stats]
        c = correction_figures(
            model,
            model.num_levels - 1,
            report["code_bits_per_byte"],
            rates,
            stats,
            corr_exact,
            len(docs),
            n_bytes,
        )
        report.update(
            corrected_exact_match=c["exact_match"],
            corrections_per_line=c["corrections_per_text"],
            corrected_escape_bits_per_byte=c["escape_bits_per_byte"],
            correction_bits_per_byte=c["correction_bits_per_byte"],
            corrected_code_bits_per_byte=c["code_bits_per_byte"],
        )
    return report


def codec_report(model, docs: list[bytes]) -> dict | None:
    """The lossless codec (`hier_ae.codes.codec`) on `docs` joined by newlines as one text: the top
    codes priced by the top LM plus the bytes range-coded under the decoder's predictions, so the text
    comes back exactly whatever the codes alone decode to; beside it xz -9e on the same text.
    Reconstruction figures (the decoder reads the codes), not a language-model score.

    Returns `codec_bytes` (the text), `codec_bits_per_byte` (the blob as written, header included),
    its ideal parts `codec_code_bits_per_byte` / `codec_residual_bits_per_byte`, `codec_exact`
    (decompress gave the text back), `xz_bits_per_byte`; None without the range coder (the `codec`
    extra).
    """
    import importlib.util
    import lzma

    if importlib.util.find_spec("constriction") is None:
        return None
    from ..codes.codec import Codec

    text = b"\n".join(docs)
    codec = Codec(model)
    packed = codec.compress(text)
    n = max(len(text), 1)
    xz = lzma.compress(text, preset=9 | lzma.PRESET_EXTREME)
    return {
        "codec_bytes": len(text),
        "codec_bits_per_byte": packed.bits_per_byte,
        "codec_code_bits_per_byte": packed.code_bits / n,
        "codec_residual_bits_per_byte": packed.residual_bits / n,
        "codec_exact": codec.decompress(packed.blob) == text,
        "xz_bits_per_byte": 8.0 * len(xz) / n,
    }


# ---- prediction (the causal LM) ----------------------------------------------------------------
def rolling_windows(n: int, window: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows that score every byte of a document once: `(lo, a, b)` triples.

    The document is `f = [<s>] + bytes` (n bytes, f has n + 1 ids). A window feeds `f[lo:b]` (at most
    `window` ids) to the model and scores the targets `f[a + 1 : b + 1]` from logits `a - lo .. b - 1 - lo`.
    Windows advance by `stride` (default `window`). With `stride == window` these are exactly
    lm-eval's `loglikelihood_rolling` windows (`get_rolling_token_windows(..., context_len=1)` +
    `make_disjoint_window`): the first reads `<s>` + bytes[:window-1]; every later one reads the
    `window` ids before its last target, so only the first starts with `<s>`.

    n = 300, window = 128: [(0, 0, 128), (128, 128, 256), (172, 256, 300)].
    """
    if window < 1 or n < 0:
        raise ValueError(f"window={window} must be >= 1 and n={n} >= 0.")
    stride = window if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"stride={stride} must be in [1, window={window}].")
    out = []
    for a in range(0, n, stride):
        b = min(a + stride, n)
        out.append((max(0, b - window), a, b))
    return out


def _causal_core(model):
    """The `HierAEModel` inside a `HierAEForCausalLM` (or the model itself)."""
    return model if hasattr(model, "predict") else model.model


@torch.no_grad()
def predict_loglikelihoods(
    model,
    docs: list[bytes],
    window: int | None = None,
    stride: int | None = None,
    zero_context: bool = False,
    batch_size: int = 8,
) -> list[float]:
    """Predict-mode log-likelihood (nats) of every byte of each document, given `<s>` and the bytes before.

    Uses `rolling_windows` (default window: `config.max_position_embeddings`, lm-eval's max_length);
    EOS is not scored. Windows are right-padded into batches with a mask (prefix invariance makes the
    padding irrelevant). `model` is a `HierAEModel` or a `HierAEForCausalLM`.
    """
    core = _causal_core(model)
    core.eval()
    device = next(core.parameters()).device
    window = window or core.config.max_position_embeddings
    jobs = []  # (doc index, input ids, first scored logit, targets)
    for i, doc in enumerate(docs):
        f = frame_document(doc)[:-1]  # <s> + bytes, no </s>
        for lo, a, b in rolling_windows(len(doc), window, stride):
            jobs.append((i, f[lo:b], a - lo, f[a + 1 : b + 1]))
    total = [0.0] * len(docs)
    for k in range(0, len(jobs), batch_size):
        chunk = jobs[k : k + batch_size]
        ids, mask = pad_rows([j[1] for j in chunk])
        logits = core.predict(ids.to(device), mask.to(device), zero_context=zero_context).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, V)
        for row, (i, _, first, targets) in enumerate(chunk):
            picked = logp[row, first : first + len(targets)].gather(1, targets[:, None])
            total[i] += float(picked.double().sum())
    return total


def bits_per_byte(loglikelihoods: list[float], docs: list[bytes]) -> float:
    """Bits per byte of text, lm-eval's corpus-level bits_per_byte: -sum(log-likelihood) / (sum(bytes)
    * ln 2), computed by the `bits_per_byte` evaluate metric (`hier_ae.metrics`); 0.0 for no bytes.

    The one computation of bits per byte (`predict_loglikelihoods` here, `examples/train.py`,
    `bench/scoring.py`): `loglikelihoods[i]` (nats) scores the bytes of `docs[i]`, each given `<s>`
    and the bytes before it; `<s>` is context only and `</s>` is neither scored nor counted.
    Worked example: log-likelihoods -6.931 and -13.863 nats (10 and 20 bits) for documents of 8 and
    12 bytes -> 30 bits / 20 bytes = 1.5 bits per byte.
    """
    from ..metrics import load

    if not sum(len(d) for d in docs):
        return 0.0
    nll = [-ll for ll in loglikelihoods]
    return load("bits_per_byte").compute(nll=nll, num_bytes=[len(d) for d in docs])["bits_per_byte"]


# ---- codebooks and segmentation --------------------------------------------------------------
@torch.no_grad()
def codebook_usage(model, docs: list[bytes], batch_size: int = 32) -> list[dict]:
    """Per level: how the codebook is used on these documents (framed `<s>` + bytes + `</s>`).

    `usage_perplexity`: exp(entropy) of the histogram of the level's codes (K^R composite ids);
    `used_codes` / `unused_codes`: distinct codes seen / not seen, per depth r of the residual
    codebook (K each); `dead_codes`: depth-0 codes the quantiser's training state counts as dead
    (unused for `dead_after_steps` optimizer steps; that is about training, not about these documents).
    """
    core = _causal_core(model)
    per_level = [[] for _ in core.levels]
    for i in range(0, len(docs), batch_size):
        ids, mask = pad_rows([frame_document(d) for d in docs[i : i + batch_size]])
        enc = core.encode(ids.to(next(core.parameters()).device), mask.to(ids.device))
        for lv in range(core.num_levels):
            per_level[lv].append(enc.codes[lv][enc.code_mask[lv]].cpu())
    out = []
    for level, chunks in zip(core.levels, per_level):
        q = level.quantizer
        codes = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)
        hist = torch.bincount(codes, minlength=q.num_codes).double()
        p = hist / hist.sum().clamp(min=1)
        digits = q.split_codes(codes) if codes.numel() else torch.zeros(0, q.depth, dtype=torch.long)
        used = [int(torch.unique(digits[:, r]).numel()) for r in range(q.depth)]
        out.append(
            {
                "codebook_size": q.codebook_size,
                "depth": q.depth,
                "codes_seen": int(codes.numel()),
                "distinct_codes": int((hist > 0).sum()),
                "usage_perplexity": float(torch.exp(-torch.special.xlogy(p, p).sum()))
                if codes.numel()
                else 0.0,
                "used_codes_per_depth": used,
                "unused_codes_per_depth": [q.codebook_size - u for u in used],
                "dead_codes": int(q.dead_code_count()),
            }
        )
    return out


@torch.no_grad()
def segmentation(model, doc: bytes) -> dict:
    """How `encode` segments one document (`<s>` + bytes + `</s>`), in byte coordinates.

    Returns `ids` (the framed ids), `entropy` (level-0 H[t] in bits: the uncertainty about id t + 1),
    `threshold` (level 0's boundary value; in delta mode a rise, not a level), `boundary_mode`, and
    per level `starts` (id positions where a segment of that level begins) and `codes` (one per
    segment, in order). A segment of level l + 1 covers the ids of the level-l segments whose codes
    it holds; framing tokens (bos / eos) of the upper streams cover no ids.
    """
    core = _causal_core(model)
    ids = frame_document(doc)
    enc = core.encode(ids[None].to(next(core.parameters()).device))
    n = len(ids)
    spans = [(t, t + 1) for t in range(n)]  # per token of the current level: covered id range or None
    levels = []
    for lv, level in enumerate(core.levels):
        seg = enc.segment_ids[lv][0].cpu()
        valid = enc.level_mask[lv][0].cpu().bool()
        codes = enc.codes[lv][0][enc.code_mask[lv][0]].cpu().tolist()
        seg_span: dict[int, tuple[int, int]] = {}
        for t in range(int(valid.sum())):
            s, sp = int(seg[t]), spans[t]
            if s < 0 or sp is None:
                continue
            lo, hi = seg_span.get(s, sp)
            seg_span[s] = (min(lo, sp[0]), max(hi, sp[1]))
        levels.append(
            {"starts": sorted(lo for lo, _ in seg_span.values()), "codes": codes, "segments": len(codes)}
        )
        if lv + 1 < core.num_levels:  # spans of the next level's tokens: codes map to these segments
            up_tokens = enc.level_tokens[lv + 1][0].cpu()
            up_valid = enc.level_mask[lv + 1][0].cpu().bool()
            k, spans = 0, []
            for t in range(len(up_tokens)):
                if up_valid[t] and int(up_tokens[t]) < level.cfg.num_codes:
                    spans.append(seg_span.get(k))
                    k += 1
                else:
                    spans.append(None)
    return {
        "ids": ids.tolist(),
        "entropy": enc.entropy[0][0].cpu().float().tolist(),
        "threshold": float(core.levels[0].boundary_value),
        "boundary_mode": core.levels[0].cfg.boundary_mode,
        "levels": levels,
    }

"""The autoencoder peer: a plain fixed-chunk FSQ autoencoder, hier_ae's autoencoder's yardstick (issue 21).

    python -m bench.ae_peer train --data tinyshakespeare --rate 4.0 --minutes 4 --out /tmp/peer/ts40
    python -m bench.ae_peer score --model /tmp/peer/ts40 --text /work/shared/data/tinyshakespeare/val.txt \
        --lines 256 --windows 200 --out /tmp/peer/ts40/score.json

What hier_ae's level 0 does with learned boundaries, this does with fixed ones, so that at equal code rate
and budget the two can be compared (as the byte Llama is the causal LM's peer):

- **chunks**: the bytes are cut into chunks of C bytes; a text whose length is not a multiple of C has its
  last chunk padded with PAD (256);
- **encoder**: chunk-local, an MLP over the chunk's C byte embeddings plus chunk-position embeddings ->
  one vector of d dims per chunk; it sees nothing outside its chunk;
- **FSQ** (Mentzer et al. 2023, "Finite Scalar Quantization"): each of the d dims is bounded with tanh
  and rounded to L_i levels (straight-through gradient); the code of a chunk costs sum(log2 L_i) bits, so
  the code rate is sum(log2 L_i) / C bits per byte (`fsq_levels_for_rate` picks the L_i);
- **decoder**: a causal byte transformer; its input at position t is the previous symbol (BOS at t = 0)
  + the absolute position + the position inside the chunk + the projected code of t's chunk. Position t
  thus sees the codes of chunks 0..t//C and the bytes before t: a streaming decoder that needs a chunk's
  code only once the chunk starts.

The decoder predicts 257 symbols: the 256 bytes and PAD. Predicting the PADs of the last chunk is how it
tells where a text ends, so a free decode (codes alone, greedy) produces n_chunks * C symbols and is cut
at its first PAD; nothing else (no length) is passed beside the codes.

Scoring uses `bench/recon.py`'s samples (`held_out_lines`, `document_windows`, seeded) and the shipped
`evaluate` metrics (`reconstruction`, `bits_per_byte`), with recon.py's definitions: teacher-forced
accuracy (argmax == target over the scored positions: the bytes and the PADs of the last chunk, the
peer's `</s>`; `teacher_forced_byte_accuracy` counts the bytes only), reconstruct CE (the summed nats of
the scored positions, charged to the text's bytes), code bits/byte (chunks x code bits / bytes: short
lines pay for their padding), total bits/byte = code bits + CE, and the free decode's exact-match and
edit-distance byte accuracy. On 128-byte windows nothing is padded, as in
`/work/shared/notes/recon-diagnosis.md`'s reference table.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.recon import DATA_ROOT, document_windows, held_out_lines, load_text
from hier_ae import metrics
from hier_ae.fsq import FSQGrid

PAD, BOS = 256, 257  # PAD: encoder input and decoder target; BOS: decoder input at t = 0 only
N_OUT = 257  # decoder output symbols: 256 bytes + PAD
N_IN = 258  # decoder input symbols: + BOS
WINDOW = 128  # training and scoring window (bytes)


# ---- rate ----------------------------------------------------------------------------------------
def code_bits(levels) -> float:
    """Bits of one FSQ code: sum(log2 L_i). (8, 5, 5, 5) -> 3 + 3 * 2.32 = 9.97."""
    return sum(math.log2(n) for n in levels)


def fsq_levels_for_rate(bits_per_byte: float, chunk: int) -> tuple[int, ...]:
    """FSQ levels whose code carries about `bits_per_byte * chunk` bits (the FSQ paper's 8s and 5s).

    Searches n8 eights, n5 fives and at most one 3, 4, 6 or 7 (the paper prefers L >= 5; a small level
    only fills the rest), nearest to the target; ties go to fewer dims.
    fsq_levels_for_rate(2.5, 4) -> (8, 5, 5, 5) (9.97 bits: 2.49 bits/byte);
    fsq_levels_for_rate(4.0, 4) -> (8, 8, 8, 5, 5, 5) (15.97 bits: 3.99 bits/byte).
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1.")
    target = bits_per_byte * chunk
    if not 2.0 <= target <= 96.0:
        raise ValueError(
            f"rate {bits_per_byte} bits/byte x chunk {chunk} = {target:.2f} bits per code; "
            "expected 2-96 bits (one FSQ dim of 5 levels up to 32 dims of 8)."
        )
    best = None
    for n8, n5, extra in itertools.product(range(33), range(42), ((), (3,), (4,), (6,), (7,))):
        levels = (8,) * n8 + tuple(extra) + (5,) * n5
        if not levels:
            continue
        key = (round(abs(code_bits(levels) - target), 9), len(levels))
        if best is None or key < best[0]:
            best = (key, levels)
    return best[1]


# ---- FSQ -----------------------------------------------------------------------------------------
class FSQ(nn.Module):
    """Finite scalar quantisation of d dims to `levels` (Mentzer et al. 2023), the package's rounding
    (`hier_ae.fsq.FSQGrid`: bounded, rounded straight-through, scaled by 1 / (L//2); a code's index is
    the mixed-radix number of its digits (q + L//2)). The peer's encoder outputs the d dims itself.
    """

    def __init__(self, levels):
        super().__init__()
        self.grid = FSQGrid([int(n) for n in levels], max_codes=None)  # its codes feed no level above
        self.register_buffer("levels", torch.tensor(self.grid.levels), persistent=False)
        self.codebook_size = self.grid.num_codes

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (..., d) -> (quantised z scaled to about [-1, 1] (..., d), code indices (...))."""
        return self.grid.round(z)

    def indices(self, q: torch.Tensor) -> torch.Tensor:
        """Integer (unscaled) codes (..., d) -> indices (...) in [0, prod L)."""
        return self.grid.index(q)

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (...) -> scaled codes (..., d), what `forward` returns for them."""
        return self.grid.scaled(indices)


# ---- chunking ------------------------------------------------------------------------------------
def chunk_rows(texts: list[bytes], chunk: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Byte strings -> (ids (B, N*C), scored (B, N*C) bool, bytes per row); N: the most chunks of a row.

    Worked example, C = 4, the 10-byte text b"abcdefghij" (ids 97..106):
        ids          a  b  c  d | e  f  g  h | i  j  P  P      P = PAD (256): the last chunk is padded
        t            0  1  2  3   4  5  6  7   8  9 10 11
        chunk t//C   0  0  0  0   1  1  1  1   2  2  2  2      3 chunks = ceil(10 / 4) codes
        in chunk t%C 0  1  2  3   0  1  2  3   0  1  2  3
        dec. input   B  a  b  c   d  e  f  g   h  i  j  P      B = BOS: targets shifted right by one
        scored       1  1  1  1   1  1  1  1   1  1  1  1      the two PADs tell where the text ends
    A second, 3-byte row b"xyz" in the same batch: ids x y z P | P ... P, scored 1 1 1 1 | 0 ... 0 (its
    one chunk is scored, the chunks after it are batch padding). Free decode of row 0 generates 12
    symbols and cuts at the first PAD: 10 bytes.
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1.")
    if not texts or any(len(t) == 0 for t in texts):
        raise ValueError("chunk_rows needs at least one text, and no empty text.")
    n_chunks = [math.ceil(len(t) / chunk) for t in texts]
    T = max(n_chunks) * chunk
    ids = torch.full((len(texts), T), PAD, dtype=torch.long)  # (B, T)
    scored = torch.zeros(len(texts), T, dtype=torch.bool)  # (B, T)
    for r, (t, n) in enumerate(zip(texts, n_chunks)):
        ids[r, : len(t)] = torch.tensor(list(t))
        scored[r, : n * chunk] = True
    return ids, scored, [len(t) for t in texts]


def shift_right(ids: torch.Tensor) -> torch.Tensor:
    """Decoder input: BOS then the targets but the last. [[97, 98, 256]] -> [[257, 97, 98]]."""
    bos = torch.full_like(ids[:, :1], BOS)  # (B, 1)
    return torch.cat([bos, ids[:, :-1]], dim=1)  # (B, T)


# ---- model ---------------------------------------------------------------------------------------
@dataclass
class PeerConfig:
    chunk: int = 4
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    width: int = 128  # decoder width
    layers: int = 3  # decoder layers
    heads: int = 4
    enc_embed: int = 64  # encoder byte embedding per chunk position
    enc_hidden: int = 512  # encoder MLP width
    max_len: int = WINDOW

    def __post_init__(self):
        if self.chunk < 1 or self.max_len % self.chunk:
            raise ValueError(f"chunk={self.chunk} must be >= 1 and divide max_len={self.max_len}.")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be a multiple of heads={self.heads}.")
        if not self.levels or min(self.levels) < 2:
            raise ValueError(f"levels={self.levels}: a non-empty list of integers >= 2.")

    @property
    def bits_per_byte(self) -> float:
        return code_bits(self.levels) / self.chunk


class ChunkEncoder(nn.Module):
    """Each chunk's C bytes (+ position in the chunk) -> one d-dim vector; sees only its own chunk."""

    def __init__(self, cfg: PeerConfig):
        super().__init__()
        self.chunk = cfg.chunk
        self.byte_emb = nn.Embedding(N_OUT, cfg.enc_embed)  # bytes + PAD
        self.pos_emb = nn.Embedding(cfg.chunk, cfg.enc_embed)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.chunk * cfg.enc_embed, cfg.enc_hidden),
            nn.GELU(),
            nn.Linear(cfg.enc_hidden, cfg.enc_hidden),
            nn.GELU(),
            nn.Linear(cfg.enc_hidden, len(cfg.levels)),
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        x = ids.view(B, T // self.chunk, self.chunk)  # (B, N, C)
        x = self.byte_emb(x) + self.pos_emb.weight  # (B, N, C, E)
        return self.mlp(x.flatten(2))  # (B, N, d)


class Block(nn.Module):
    """Pre-norm causal self-attention + MLP (nanoGPT's block)."""

    def __init__(self, cfg: PeerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.ln1, self.ln2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)  # 3 x (B, T, D)
        q, k, v = (
            y.view(B, T, self.heads, D // self.heads).transpose(1, 2) for y in (q, k, v)
        )  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
        return x + self.mlp(self.ln2(x))


@dataclass
class PeerOutput:
    logits: torch.Tensor  # (B, T, 257)
    indices: torch.Tensor  # (B, N) code indices
    loss: torch.Tensor | None = None  # mean CE (nats) over the scored positions


class AEPeer(nn.Module):
    """Fixed-chunk autoencoder: `encode` (ids -> codes), `decode_logits` (codes, bytes -> logits)."""

    def __init__(self, cfg: PeerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ChunkEncoder(cfg)
        self.fsq = FSQ(cfg.levels)
        self.code_proj = nn.Linear(len(cfg.levels), cfg.width)
        self.tok_emb = nn.Embedding(N_IN, cfg.width)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.width)
        self.in_chunk_emb = nn.Embedding(cfg.chunk, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, N_OUT, bias=False)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
            for lin in (block.proj, block.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init_weights(m: nn.Module):
        """Every Linear and Embedding N(0, 0.02), biases 0; LayerNorms keep (1, 0)."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def _check(self, ids: torch.Tensor):
        T = ids.shape[1]
        if T % self.cfg.chunk or not 0 < T <= self.cfg.max_len:
            raise ValueError(
                f"sequence length {T}: expected a multiple of chunk={self.cfg.chunk} "
                f"in 1..{self.cfg.max_len}."
            )

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) -> (scaled codes (B, N, d), indices (B, N)), N = T / C."""
        self._check(ids)
        return self.fsq(self.encoder(ids))

    def decode_logits(self, codes: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """codes (B, N, d), decoder inputs (B, t), t <= N*C (BOS + previous symbols) -> logits (B, t, 257)."""
        B, t = inputs.shape
        C = self.cfg.chunk
        pos = torch.arange(t, device=inputs.device)  # (t,)
        ctx = self.code_proj(codes).repeat_interleave(C, dim=1)[:, :t]  # (B, t, D): each position's chunk
        x = self.tok_emb(inputs) + self.pos_emb(pos) + self.in_chunk_emb(pos % C) + ctx  # (B, t, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, t, 257)

    def forward(self, ids: torch.Tensor, scored: torch.Tensor | None = None) -> PeerOutput:
        """ids (B, T) -> teacher-forced logits; loss = mean CE over `scored` (all positions if None)."""
        codes, indices = self.encode(ids)
        logits = self.decode_logits(codes, shift_right(ids))  # (B, T, 257)
        nats = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")  # (B, T)
        scored = torch.ones_like(ids, dtype=torch.bool) if scored is None else scored
        loss = (nats * scored).sum() / scored.sum().clamp(min=1)
        return PeerOutput(logits=logits, indices=indices, loss=loss)

    @torch.no_grad()
    def generate(self, codes: torch.Tensor) -> torch.Tensor:
        """Greedy decode from the codes alone: (B, N, d) -> symbols (B, N*C) (bytes, PAD)."""
        B, N, _ = codes.shape
        inputs = torch.full((B, 1), BOS, dtype=torch.long, device=codes.device)  # (B, 1)
        for _ in range(N * self.cfg.chunk):
            nxt = self.decode_logits(codes, inputs)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            inputs = torch.cat([inputs, nxt], dim=1)  # (B, t+1)
        return inputs[:, 1:]


def save(model: AEPeer, out: Path, state: dict):
    """model.safetensors + config.json (the config and the training loop's state)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"config": asdict(model.cfg), "state": state}, indent=1))


def load(folder) -> tuple[AEPeer, dict]:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (a folder written by `ae_peer train`).")
    meta = json.loads((folder / "config.json").read_text())
    model = AEPeer(PeerConfig(**meta["config"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), meta["state"]


# ---- training ------------------------------------------------------------------------------------
def corpus_file(spec: str, split: str) -> Path:
    """'tinyshakespeare' -> /work/shared/data/tinyshakespeare/<split>.txt; a path is taken as is."""
    path = Path(spec) if Path(spec).is_file() else DATA_ROOT / spec / f"{split}.txt"
    if not path.is_file():
        names = sorted(p.name for p in DATA_ROOT.iterdir()) if DATA_ROOT.is_dir() else []
        raise FileNotFoundError(f"{spec!r}: neither a file nor a corpus in {DATA_ROOT} ({names}).")
    return path


def sample_batch(
    data: torch.Tensor,
    batch: int,
    chunk: int,
    p_cut: float,
    gen: torch.Generator,
    line_starts: torch.Tensor | None = None,
    p_line: float = 0.0,
):
    """Random 128-byte windows; a fraction `p_cut` is cut at a random length and padded as a text would be.

    A fraction `p_line` starts at a line start (an index of `line_starts`) instead of anywhere: a held-out
    line is decoded with no byte before it, and only there does the decoder meet a line's first byte
    without the newline that tells it, say, that the byte is a capital. Returns ids (B, 128) and scored
    (B, 128): a cut row scores its bytes and the PADs of its last chunk.
    """
    starts = torch.randint(0, len(data) - WINDOW, (batch,), generator=gen)  # (B,)
    if p_line > 0:  # drawn only then: with p_line = 0 the random stream is the plain peer's
        at_line = torch.rand(batch, generator=gen) < p_line  # (B,)
        pick = torch.randint(0, len(line_starts), (int(at_line.sum()),), generator=gen)
        starts[at_line] = line_starts[pick]
    ids = torch.stack([data[s : s + WINDOW] for s in starts.tolist()])  # (B, T)
    lengths = torch.full((batch,), WINDOW)  # (B,)
    cut = torch.rand(batch, generator=gen) < p_cut  # (B,)
    lengths[cut] = torch.randint(1, WINDOW + 1, (int(cut.sum()),), generator=gen)
    pos = torch.arange(WINDOW)  # (T,)
    ids = ids.masked_fill(pos >= lengths[:, None], PAD)  # (B, T)
    scored = pos < ((lengths + chunk - 1) // chunk * chunk)[:, None]  # (B, T)
    return ids, scored


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    path = corpus_file(args.data, "train")
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long()  # (n,)
    line_starts = (data[: len(data) - WINDOW] == ord("\n")).nonzero().squeeze(1) + 1  # (lines,)
    levels = args.levels or list(fsq_levels_for_rate(args.rate, args.chunk))
    cfg = PeerConfig(chunk=args.chunk, levels=levels, width=args.width, layers=args.layers)
    model = AEPeer(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    print(
        f"[ae_peer] {path}: chunk {cfg.chunk}, levels {levels} ({cfg.bits_per_byte:.3f} bits/byte), "
        f"{n_params:,} parameters, budget {args.minutes} min / {args.steps} steps",
        flush=True,
    )
    budget_s = args.minutes * 60 if args.minutes else math.inf
    t0, step, progress, losses = time.perf_counter(), 0, 0.0, []
    while progress < 1.0:
        # ---- cosine LR over the budget (time or steps, whichever ends first), linear warmup
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, scored = sample_batch(
            data, args.batch_size, cfg.chunk, args.p_cut, gen, line_starts, args.p_line_start
        )
        loss = model(ids, scored).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item() / math.log(2))
        elapsed = time.perf_counter() - t0
        progress = max(elapsed / budget_s, step / args.steps if args.steps else 0.0)
        if step % args.log_every == 0:
            recent = sum(losses[-args.log_every :]) / len(losses[-args.log_every :])
            print(
                f"[ae_peer] step {step} {elapsed:.0f}s loss {recent:.3f} bits/symbol lr {lr:.2e}", flush=True
            )
    state = {
        "data": str(path),
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 1),
        "batch_size": args.batch_size,
        "window": WINDOW,
        "p_cut": args.p_cut,
        "p_line_start": args.p_line_start,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "parameters": n_params,
        "final_loss_bits": sum(losses[-50:]) / len(losses[-50:]),
        "command": "python -m bench.ae_peer " + " ".join(sys.argv[1:]),
    }
    save(model, Path(args.out), state)
    print(f"[ae_peer] saved {args.out}: {step} steps in {state['seconds']} s", flush=True)
    return state


# ---- scoring -------------------------------------------------------------------------------------
@torch.no_grad()
def score_sample(model: AEPeer, texts: list[bytes], batch_size: int = 64, recon=None, bpb=None) -> dict:
    """Teacher-forced and free-decode figures of `texts` (each its bytes, the last chunk padded)."""
    recon = recon or metrics.load("reconstruction", keep_in_memory=True)
    bpb = bpb or metrics.load("bits_per_byte", keep_in_memory=True)
    nats, hits, scored_n, byte_hits, n_chunks, decoded, used = [], 0, 0, 0, 0, [], set()
    for i in range(0, len(texts), batch_size):
        ids, scored, _ = chunk_rows(texts[i : i + batch_size], model.cfg.chunk)  # (B, T)
        out = model(ids, scored)
        ce = F.cross_entropy(out.logits.transpose(1, 2), ids, reduction="none")  # (B, T)
        hit = out.logits.argmax(dim=-1) == ids  # (B, T)
        nats += (ce * scored).sum(dim=1).tolist()
        hits += int((hit & scored).sum())
        scored_n += int(scored.sum())
        byte_hits += int((hit & (ids != PAD)).sum())
        row_chunks = scored[:, :: model.cfg.chunk]  # (B, N) the chunks each row owns
        n_chunks += int(row_chunks.sum())
        used.update(out.indices[row_chunks].tolist())
        codes, _ = model.encode(ids)
        for row in model.generate(codes).tolist():
            decoded.append(bytes(row[: row.index(PAD)] if PAD in row else row))
    n_bytes = sum(len(t) for t in texts)
    ce_bpb = bpb.compute(nll=nats, num_bytes=[len(t) for t in texts])["bits_per_byte"]
    cbpb = n_chunks * code_bits(model.cfg.levels) / n_bytes
    fd = recon.compute(predictions=decoded, references=texts)
    return {
        "texts": len(texts),
        "bytes": n_bytes,
        "code_bits_per_byte": cbpb,
        "teacher_forced_accuracy": hits / scored_n,
        "teacher_forced_byte_accuracy": byte_hits / n_bytes,
        "reconstruct_ce_bits_per_byte": ce_bpb,
        "total_bits_per_byte": cbpb + ce_bpb,
        "exact_match": fd["exact_match"],
        "free_decode": fd,
        "codes_used": len(used),
        "codebook_size": model.fsq.codebook_size,
        "example": {
            "reference": texts[0].decode("utf-8", "replace"),
            "decode": decoded[0].decode("utf-8", "replace"),
        },
    }


def score(args) -> dict:
    torch.set_num_threads(args.threads)
    model, state = load(args.model)
    name, docs = load_text(str(corpus_file(args.text, "val")))
    recon = metrics.load("reconstruction", keep_in_memory=True)
    bpb = metrics.load("bits_per_byte", keep_in_memory=True)
    t0 = time.perf_counter()
    res = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, cpu",
        "command": "python -m bench.ae_peer " + " ".join(sys.argv[1:]),
        "model": str(args.model),
        "text": name,
        "config": asdict(model.cfg),
        "nominal_bits_per_byte": model.cfg.bits_per_byte,
        "training": state,
        "settings": {"lines": args.lines, "windows": args.windows, "seed": args.seed},
    }
    lines = held_out_lines(docs, args.lines, seed=args.seed)
    windows = document_windows(docs, args.windows, size=WINDOW, seed=args.seed)
    if lines:
        res["lines"] = score_sample(model, lines, args.batch_size, recon, bpb)
    if windows:
        res["windows"] = score_sample(model, windows, args.batch_size, recon, bpb)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return res


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ae_peer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a peer on a corpus' train.txt")
    g = t.add_argument_group("data and rate")
    g.add_argument("--data", required=True, help=f"a corpus name in {DATA_ROOT} or a text file")
    g.add_argument("--rate", type=float, default=4.0, help="code bits per byte (default 4.0)")
    g.add_argument("--chunk", type=int, default=4, help="bytes per chunk (default 4)")
    g.add_argument("--levels", type=int, nargs="+", default=None, help="FSQ levels (overrides --rate)")
    g = t.add_argument_group("model")
    g.add_argument("--width", type=int, default=128)
    g.add_argument("--layers", type=int, default=3)
    g = t.add_argument_group("budget and optimiser")
    g.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    g.add_argument("--steps", type=int, default=None, help="step budget (the first one reached ends)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--p-cut", type=float, default=0.25, help="fraction of windows cut short and padded")
    g.add_argument(
        "--p-line-start", type=float, default=0.0, help="fraction of windows that start at a line start"
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--log-every", type=int, default=200)
    g.add_argument("--out", required=True, help="checkpoint folder")
    s = sub.add_parser("score", help="score a trained peer on held-out text (JSON)")
    s.add_argument("--model", required=True, help="a folder written by `train`")
    s.add_argument("--text", required=True, help=f"a val file or a corpus name in {DATA_ROOT}")
    s.add_argument("--lines", type=int, default=200, help="held-out lines of 20-120 bytes (recon.py's)")
    s.add_argument("--windows", type=int, default=200, help="128-byte windows")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.cmd == "train" and not (args.minutes or args.steps):
        p.error("train needs --minutes or --steps.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    return train(args) if args.cmd == "train" else score(args)


if __name__ == "__main__":
    from hier_ae.cli import run

    run(main, prog="python -m bench.ae_peer")

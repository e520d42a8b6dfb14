"""Residual vector quantiser with an EMA codebook, dead-code restarts and padding masks (DESIGN §3.5).

Each valid segment vector `x (D,)` is quantised by `R` nearest-neighbour look-ups (squared L2): digit
`d_0` is the code nearest to `x`, digit `d_r` the code of depth `r` nearest to the residual left by
digits `< r`. The id passed to the level above is the mixed-radix composite `sum_r d_r * K**r`.
Worked example, K = 4, R = 2:

    digits (d_0, d_1) = (3, 1)  ->  code = 3 + 1 * 4 = 7
    code 7                      ->  digits (7 % 4, 7 // 4 % 4) = (3, 1)
    quantised vector q          =  codebook[0, 3] + codebook[1, 1]

The codebook is a persistent fp32 buffer moved only by EMA (van den Oord et al. 2017, appendix A.1;
Razavi et al. 2019): `forward` in training mode adds per-code counts and sums of the (detached)
inputs of valid segments to accumulators, and `apply_ema_update()`, called once per optimizer step,
all-reduces them across processes and folds them into the codebook. No gradient ever reaches the
codebook; the loss is `beta * commitment` and `x` receives the straight-through gradient.
Everything a resumed run needs (EMA state, accumulators, pool of recent inputs, usage counters,
restart seed counter) is a persistent buffer, so it travels in the state_dict.

The module depends only on torch: it is shipped as Hub remote code. Shape letters: B batch,
S segments, D width, K codebook size, R depth, P pool size, N flattened segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

MAX_COMPOSITE_CODES = 65536
_RESTART_SEED = 0x5EED  # base seed of the restart generator; the step counter is added to it
_CHUNK_ELEMENTS = 1 << 24  # at most this many (N, K) distances in memory at once


@dataclass
class QuantizerOutput:
    """What `VectorQuantizer.forward` returns. Padded segments hold zeros in `z`, `codes`, `digits`.

    z: (B, S, D) fp32 quantised vectors, straight-through: `x + (q - x).detach()`.
    codes: (B, S) long composite ids `sum_r digits[..., r] * K**r`.
    digits: (B, S, R) long per-depth code indices.
    commitment: scalar, `beta` * mean over valid segments of `mean_D (x - sg(q))**2` (0 if none valid).
    usage_perplexity: scalar, `exp(entropy)` of the depth-0 code histogram of this call's valid
        segments (0 if none valid).
    dead_codes: scalar long, depth-0 codes that count as dead (`VectorQuantizer.dead_mask`).
    """

    z: torch.Tensor
    codes: torch.Tensor
    digits: torch.Tensor
    commitment: torch.Tensor
    usage_perplexity: torch.Tensor
    dead_codes: torch.Tensor


def _world_size() -> int:
    """Processes that share the EMA statistics (1 when torch.distributed is not in use)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _is_rank0() -> bool:
    """True on rank 0 of a process group, and when torch.distributed is not in use."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for every vector. (N, D), (K, D) -> (N,).

    `||v - c||^2 = ||v||^2 - 2 v.c + ||c||^2`; the `||v||^2` term is the same for every code, so the
    argmin uses `||c||^2 - 2 v.c`. Rows are processed in chunks so that (N, K) never gets too large.
    Ties go to the lowest index.
    """
    c2 = codebook.pow(2).sum(-1)  # (K,)
    chunk = max(1, _CHUNK_ELEMENTS // codebook.shape[0])
    out = [(c2 - 2.0 * part @ codebook.T).argmin(-1) for part in vectors.split(chunk)]  # [(n, )]
    if not out:
        return torch.zeros(0, dtype=torch.long, device=vectors.device)  # (0,)
    return torch.cat(out)  # (N,)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour residual VQ over segment vectors, codebook moved by EMA only.

    Args:
        dim: width D of the vectors.
        codebook_size: codes per depth K (>= 2).
        depth: residual depth R (>= 1); composite ids live in [0, K**R), and K**R <= 65536.
        beta: weight of the commitment loss (>= 0).
        ema_decay: EMA decay in (0, 1).
        eps: Laplace smoothing of the EMA counts (> 0).
        restart_dead_codes: replace codes unused for `dead_after_steps` steps by recent inputs.
        dead_after_steps: optimizer steps without use after which a code counts as dead (>= 1).
        new_code_dead_after_steps: a code not used once since it was set (the data-dependent init
            or a restart) counts as dead after this many steps (>= 1); None: `dead_after_steps` for
            every code. A short count here with a long `dead_after_steps` recycles the codes that
            never catch an input quickly (at init, a pool smaller than K leaves duplicate rows
            that no input picks) while the codes of rare inputs keep their place.
        pool_size: rows P of the ring buffer of recent inputs (per depth) that restarts draw from.

    Usage, once per optimizer step (gradient accumulation sums the statistics of the micro-batches):

        out = vq(x, mask)                  # training mode: gathers EMA statistics
        (task_loss + out.commitment).backward()
        optimizer.step()
        vq.apply_ema_update()              # folds the statistics in, restarts dead codes
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        depth: int = 1,
        beta: float = 0.25,
        ema_decay: float = 0.99,
        eps: float = 1e-5,
        restart_dead_codes: bool = True,
        dead_after_steps: int = 50,
        pool_size: int = 1024,
        new_code_dead_after_steps: int | None = None,
    ):
        super().__init__()
        _check_args(
            dim,
            codebook_size,
            depth,
            beta,
            ema_decay,
            eps,
            dead_after_steps,
            pool_size,
            new_code_dead_after_steps,
        )
        self.dim = dim
        self.codebook_size = codebook_size
        self.depth = depth
        self.num_codes = codebook_size**depth
        self.beta = float(beta)
        self.ema_decay = float(ema_decay)
        self.eps = float(eps)
        self.restart_dead_codes = bool(restart_dead_codes)
        self.dead_after_steps = dead_after_steps
        self.new_code_dead_after_steps = new_code_dead_after_steps
        self.pool_size = pool_size
        R, K, D, P = depth, codebook_size, dim, pool_size
        self.register_buffer("codebook", torch.empty(R, K, D))  # (R, K, D)
        self.register_buffer("ema_count", torch.empty(R, K))  # (R, K)
        self.register_buffer("ema_sum", torch.empty(R, K, D))  # (R, K, D)
        self.register_buffer("acc_count", torch.empty(R, K))  # (R, K) counts of this optimizer step
        self.register_buffer("acc_sum", torch.empty(R, K, D))  # (R, K, D) sums of this optimizer step
        self.register_buffer("steps_since_used", torch.empty(R, K, dtype=torch.long))  # (R, K)
        self.register_buffer("pool", torch.empty(R, P, D))  # (R, P, D) recent residuals per depth
        self.register_buffer("pool_ptr", torch.empty((), dtype=torch.long))  # next slot to write
        self.register_buffer("pool_fill", torch.empty((), dtype=torch.long))  # valid rows: pool[:, :fill]
        self.register_buffer("restart_step", torch.empty((), dtype=torch.long))  # seeds the restart RNG
        self.register_buffer("initialized", torch.empty((), dtype=torch.bool))  # data-dependent init done
        if new_code_dead_after_steps is not None:  # only then: other settings keep their state_dict
            self.register_buffer("used_since_set", torch.empty(R, K, dtype=torch.bool))  # (R, K)
        self.reset_state()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, depth={self.depth}, beta={self.beta}, "
            f"ema_decay={self.ema_decay}, restart_dead_codes={self.restart_dead_codes}, "
            f"dead_after_steps={self.dead_after_steps}, pool_size={self.pool_size}"
            + (
                ""
                if self.new_code_dead_after_steps is None
                else f", new_code_dead_after_steps={self.new_code_dead_after_steps}"
            )
        )

    @torch.no_grad()
    def reset_state(self) -> None:
        """(Re)initialise every buffer in place: a random N(0, 1) codebook, empty statistics and pool.

        The random codebook is replaced from the pool on the first `apply_ema_update` that has data.
        """
        self.codebook.normal_()
        self.ema_count.zero_()
        self.ema_sum.zero_()
        self.acc_count.zero_()
        self.acc_sum.zero_()
        self.steps_since_used.zero_()
        self.pool.zero_()
        self.pool_ptr.zero_()
        self.pool_fill.zero_()
        self.restart_step.zero_()
        self.initialized.fill_(False)
        if self.new_code_dead_after_steps is not None:
            self.used_since_set.fill_(False)

    @torch.no_grad()
    def set_codebook(self, codebook: torch.Tensor) -> None:
        """Set the codebook (R, K, D) and restart its EMA state from it (each row counts once).

        Marks the quantiser initialised, so no data-dependent init overwrites it.
        """
        want = (self.depth, self.codebook_size, self.dim)
        if tuple(codebook.shape) != want:
            raise ValueError(f"codebook must have shape (R, K, D) = {want}, got {tuple(codebook.shape)}")
        self.codebook.copy_(codebook)
        self.ema_sum.copy_(codebook)
        self.ema_count.fill_(1.0)
        self.steps_since_used.zero_()
        if self.new_code_dead_after_steps is not None:
            self.used_since_set.fill_(False)  # every row is new
        self.initialized.fill_(True)

    # ---- ids ------------------------------------------------------------------------------
    def split_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Composite ids (...) -> digits (..., R), `d_r = code // K**r % K`. K=4, R=2: 7 -> (3, 1)."""
        self._check_codes(codes)
        radix = self.codebook_size ** torch.arange(self.depth, device=codes.device)  # (R,)
        return codes.long()[..., None] // radix % self.codebook_size  # (..., R)

    def join_digits(self, digits: torch.Tensor) -> torch.Tensor:
        """Digits (..., R) -> composite ids (...), `sum_r d_r * K**r`. K=4, R=2: (3, 1) -> 3 + 1*4 = 7."""
        if digits.dtype.is_floating_point or digits.dtype == torch.bool or digits.dtype.is_complex:
            raise ValueError(f"digits must be an integer tensor, got dtype {digits.dtype}")
        if digits.ndim == 0 or digits.shape[-1] != self.depth:
            raise ValueError(
                f"digits must have a last axis of size depth R={self.depth}, got {tuple(digits.shape)}"
            )
        if digits.numel() and (digits.min() < 0 or digits.max() >= self.codebook_size):
            raise ValueError(
                f"digits must lie in [0, K) = [0, {self.codebook_size}), "
                f"got values in [{int(digits.min())}, {int(digits.max())}]"
            )
        radix = self.codebook_size ** torch.arange(self.depth, device=digits.device)  # (R,)
        return (digits.long() * radix).sum(-1)  # (...)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Composite ids (B, S) -> fp32 vectors (B, S, D): the sum of the codebook rows of the digits.

        K=4, R=2: code 7 -> codebook[0, 3] + codebook[1, 1]. Equals `forward(...).z` on valid segments
        (up to rounding of the straight-through sum), so `decode(codes)` sees what training saw.
        """
        digits = self.split_codes(codes)  # (B, S, R)
        cb = self.codebook.float()  # (R, K, D)
        out = cb[0][digits[..., 0]]  # (B, S, D)
        for r in range(1, self.depth):
            out = out + cb[r][digits[..., r]]  # (B, S, D)
        return out

    # ---- forward --------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor | None = None
    ) -> QuantizerOutput:
        """Quantise `x (B, S, D)` (any float dtype) where `mask (B, S)` is True (real segments).

        `codes (B, S)`, when given (depth 1 only), are the codes to take instead of the nearest ones
        (chosen by the decoder, `LevelConfig.code_choice_candidates`): z, the commitment loss and the
        EMA statistics then follow them. Runs in fp32 with autocast off, so bf16 autocast never
        changes a code. In training mode it also adds the EMA statistics and pool rows of the valid
        segments (see `apply_ema_update`).
        """
        valid = self._check_inputs(x, mask)  # (B, S)
        if codes is not None:
            if self.depth != 1:
                raise ValueError(f"codes can be given at depth 1 only, this quantiser has depth {self.depth}")
            if tuple(codes.shape) != tuple(valid.shape):
                raise ValueError(
                    f"codes must have shape (B, S) = {tuple(valid.shape)}, got {tuple(codes.shape)}"
                )
            self._check_codes(codes)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._quantize(x, valid, codes)

    def _quantize(
        self, x: torch.Tensor, valid: torch.Tensor, forced: torch.Tensor | None = None
    ) -> QuantizerOutput:
        B, S, D = x.shape
        R, K = self.depth, self.codebook_size
        cb = self.codebook.float()  # (R, K, D)
        # padded rows become zeros first, so garbage (inf, nan) there can reach nothing
        x32 = torch.where(valid[..., None], x.float(), 0.0)  # (B, S, D)
        flat_valid = valid.reshape(B * S)  # (N,)
        residual = x32.detach().reshape(B * S, D)  # (N, D)
        q = torch.zeros_like(residual)  # (N, D)
        digit_list, residual_list = [], []
        with torch.no_grad():
            for r in range(R):
                d = nearest_code(residual, cb[r]) if forced is None else forced.reshape(-1).long()  # (N,)
                chosen = cb[r][d]  # (N, D)
                digit_list.append(d)
                residual_list.append(residual)
                q = q + chosen  # (N, D)
                residual = residual - chosen  # (N, D)
        digits = torch.stack(digit_list, -1).view(B, S, R)  # (B, S, R)
        digits = torch.where(valid[..., None], digits, 0)  # (B, S, R)
        radix = K ** torch.arange(R, device=x.device)  # (R,)
        codes = (digits * radix).sum(-1)  # (B, S)
        q = q.view(B, S, D)  # (B, S, D)

        # loss and straight-through output; padded segments contribute nothing and get z = 0
        n_valid = valid.sum()
        per_seg = (x32 - q).pow(2).mean(-1)  # (B, S), q carries no gradient (buffer)
        commitment = self.beta * torch.where(valid, per_seg, 0.0).sum() / n_valid.clamp(min=1)
        z = torch.where(valid[..., None], x32 + (q - x32).detach(), 0.0)  # (B, S, D)

        with torch.no_grad():
            hist = torch.bincount(digits[..., 0][valid], minlength=K).float()  # (K,)
            p = hist / hist.sum().clamp(min=1)  # (K,)
            perplexity = torch.exp(-torch.special.xlogy(p, p).sum())
            perplexity = torch.where(n_valid > 0, perplexity, 0.0)
            dead = self.dead_code_count()
            if self.training:
                self._accumulate(digit_list, residual_list, flat_valid)
        return QuantizerOutput(
            z=z,
            codes=codes,
            digits=digits,
            commitment=commitment,
            usage_perplexity=perplexity,
            dead_codes=dead,
        )

    def dead_code_count(self) -> torch.Tensor:
        """Depth-0 codes that count as dead (see `dead_mask`; a training state)."""
        return self.dead_mask()[0].sum()

    def dead_mask(self) -> torch.Tensor:
        """(R, K) bool: codes unused for `dead_after_steps` steps, or, with `new_code_dead_after_steps`,
        codes not used once since they were set and unused for that many steps.

        Toy example, dead_after_steps=100, new_code_dead_after_steps=10: a code restarted 12 steps ago
        and never picked since is dead; a code last used 12 steps ago (or 99) is not; one last used
        100 steps ago is.
        """
        dead = self.steps_since_used >= self.dead_after_steps  # (R, K)
        if self.new_code_dead_after_steps is not None:
            dead |= ~self.used_since_set & (self.steps_since_used >= self.new_code_dead_after_steps)
        return dead

    def _accumulate(self, digit_list, residual_list, flat_valid) -> None:
        """Add this micro-batch's per-code counts and sums, and push its residuals into the pool."""
        K, P = self.codebook_size, self.pool_size
        n = int(flat_valid.sum())
        for r, (d, res) in enumerate(zip(digit_list, residual_list)):
            d, res = d[flat_valid], res[flat_valid]  # (n,), (n, D)
            self.acc_count[r] += torch.bincount(d, minlength=K).to(self.acc_count.dtype)
            self.acc_sum[r].index_add_(0, d, res.to(self.acc_sum.dtype))
            # ring buffer: row i of this call goes to slot (ptr + i) % P; with n > P new rows only the
            # last m = P survive, e.g. P=4, ptr=1, n=6: rows 2..5 go to slots 3, 0, 1, 2, next ptr = 3
            keep = res[n - min(n, P) :]  # (m, D)
            first = self.pool_ptr + (n - keep.shape[0])
            slots = (first + torch.arange(keep.shape[0], device=res.device)) % P  # (m,)
            self.pool[r, slots] = keep.to(self.pool.dtype)
        self.pool_ptr.copy_((self.pool_ptr + n) % P)
        self.pool_fill.copy_((self.pool_fill + n).clamp(max=P))

    # ---- EMA update -----------------------------------------------------------------------
    @torch.no_grad()
    def apply_ema_update(self) -> dict:
        """Fold this optimizer step's statistics into the codebook; call once per optimizer step.

        1. all-reduce (sum) the accumulators when torch.distributed runs more than one process;
        2. the first call that finds a non-empty pool sets the codebook from random pool rows
           (data-dependent init); that step's statistics were assigned against the random codebook
           and are dropped;
        3. otherwise, if any segment was seen: `ema = decay * ema + (1 - decay) * acc` for counts and
           sums, and `codebook = ema_sum / laplace_smoothed(ema_count)`;
        4. `steps_since_used` becomes 0 for codes used in this step and grows by 1 for the rest
           (also when no forward happened since the last call); with `new_code_dead_after_steps`,
           the codes used in this step are marked used since they were set;
        5. if restarts are on, every dead code (`dead_mask`) is replaced by a pool row (same depth)
           and its EMA state restarts from it with count 1 (and it is new again);
        6. the accumulators are zeroed and `restart_step` advances.

        Random choices (2, 5) are made on rank 0 with a generator seeded from `restart_step` and
        broadcast, so all processes hold the same codebook and a resumed run makes the same choices.
        Returns python numbers: `restarted`, `initialized` (this call), `dead_codes` (depth 0, after),
        `used_codes` (depth 0, this step).
        """
        world = _world_size()
        if world > 1:
            dist.all_reduce(self.acc_count, op=dist.ReduceOp.SUM)
            dist.all_reduce(self.acc_sum, op=dist.ReduceOp.SUM)
        generator = torch.Generator().manual_seed(_RESTART_SEED + int(self.restart_step))
        used = self.acc_count > 0  # (R, K)
        stats = {"restarted": 0, "initialized": False, "used_codes": int(used[0].sum())}

        if not bool(self.initialized) and self._rank0_flag(int(self.pool_fill) > 0, world):
            self._data_init(generator, world)
            stats["initialized"] = True
        else:
            if bool(self.acc_count.any()):
                self._ema_step()
            self.steps_since_used.copy_(torch.where(used, 0, self.steps_since_used + 1))
            if self.new_code_dead_after_steps is not None:
                self.used_since_set |= used
            if self.restart_dead_codes and bool(self.initialized):
                stats["restarted"] = self._restart(generator, world)

        self.acc_count.zero_()
        self.acc_sum.zero_()
        self.restart_step += 1
        stats["dead_codes"] = int(self.dead_code_count())
        return stats

    def _ema_step(self) -> None:
        decay, K = self.ema_decay, self.codebook_size
        self.ema_count.mul_(decay).add_(self.acc_count, alpha=1.0 - decay)
        self.ema_sum.mul_(decay).add_(self.acc_sum, alpha=1.0 - decay)
        # Laplace smoothing keeps rarely used codes away from a division by ~0 (Sonnet's VQ-VAE-EMA)
        total = self.ema_count.sum(-1, keepdim=True)  # (R, 1)
        smoothed = (self.ema_count + self.eps) / (total + K * self.eps) * total  # (R, K)
        self.codebook.copy_(self.ema_sum / smoothed[..., None])

    def _draw(self, generator: torch.Generator, available: int, n: int) -> torch.Tensor:
        """n pool indices in [0, available): distinct when possible, else with replacement. (n,)"""
        if n <= available:
            return torch.randperm(available, generator=generator)[:n]  # (n,)
        return torch.randint(available, (n,), generator=generator)  # (n,)

    def _data_init(self, generator: torch.Generator, world: int) -> None:
        """Depth 0 from random pool inputs; depth r from the residuals of those inputs left by depths < r."""
        if _is_rank0():
            fill = int(self.pool_fill)
            residual = self.pool[0, :fill].float()  # (F, D) the raw inputs
            for r in range(self.depth):
                rows = residual[self._draw(generator, fill, self.codebook_size).to(residual.device)]  # (K, D)
                self.codebook[r] = rows
                residual = residual - rows[nearest_code(residual, rows)]  # (F, D)
        if world > 1:
            dist.broadcast(self.codebook, src=0)
        self.set_codebook(self.codebook.clone())

    def _restart(self, generator: torch.Generator, world: int) -> int:
        """Replace dead codes by pool rows of their depth (chosen on rank 0). Returns how many."""
        dead = self.dead_mask()  # (R, K), identical on every rank
        n_dead = int(dead.sum())
        if n_dead == 0 or not self._rank0_flag(int(self.pool_fill) > 0, world):
            return 0
        rows = torch.zeros(n_dead, self.dim, device=self.codebook.device, dtype=self.codebook.dtype)  # (n, D)
        if _is_rank0():
            fill, start = int(self.pool_fill), 0
            for r in range(self.depth):
                n_r = int(dead[r].sum())
                idx = self._draw(generator, fill, n_r).to(self.pool.device)  # (n_r,)
                rows[start : start + n_r] = self.pool[r, idx].to(rows.dtype)
                start += n_r
        if world > 1:
            dist.broadcast(rows, src=0)
        self.codebook[dead] = rows
        self.ema_sum[dead] = rows
        self.ema_count[dead] = 1.0
        self.steps_since_used[dead] = 0
        if self.new_code_dead_after_steps is not None:
            self.used_since_set[dead] = False
        return n_dead

    def _rank0_flag(self, value: bool, world: int) -> bool:
        """Rank 0's value of a boolean, on every rank (the pools, hence their fill, differ per rank)."""
        if world == 1:
            return value
        flag = torch.tensor([int(value)], device=self.codebook.device)  # (1,)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    # ---- validation -----------------------------------------------------------------------
    def _check_inputs(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.dtype.is_floating_point:
            raise ValueError(
                f"x must be a floating-point tensor (B, S, D), got {getattr(x, 'dtype', type(x))}"
            )
        if x.ndim != 3:
            raise ValueError(f"x must have 3 dims (B, S, D), got {x.ndim} dims with shape {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have last dim D = dim = {self.dim}, got shape {tuple(x.shape)}")
        if not torch.is_tensor(mask) or tuple(mask.shape) != tuple(x.shape[:2]):
            got = tuple(mask.shape) if torch.is_tensor(mask) else type(mask)
            raise ValueError(f"mask must have shape (B, S) = {tuple(x.shape[:2])} matching x, got {got}")
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise ValueError(
                f"mask must be bool (True = real segment) or integer 0/1, got dtype {mask.dtype}"
            )
        return mask.to(device=x.device, dtype=torch.bool)

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not torch.is_tensor(codes) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(
                f"codes must lie in [0, K**R) = [0, {self.num_codes}) "
                f"(K={self.codebook_size}, R={self.depth}), "
                f"got values in [{int(codes.min())}, {int(codes.max())}]"
            )


def _check_args(
    dim, codebook_size, depth, beta, ema_decay, eps, dead_after_steps, pool_size, new_code_dead_after_steps
) -> None:
    """ValueError naming the argument, its value and what is allowed."""
    if new_code_dead_after_steps is not None and (
        not _is_int(new_code_dead_after_steps) or new_code_dead_after_steps < 1
    ):
        raise ValueError(
            f"new_code_dead_after_steps must be None or an integer >= 1, got {new_code_dead_after_steps!r}"
        )
    for name, value, low in (
        ("dim", dim, 1),
        ("codebook_size", codebook_size, 2),
        ("depth", depth, 1),
        ("dead_after_steps", dead_after_steps, 1),
        ("pool_size", pool_size, 1),
    ):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if codebook_size**depth > MAX_COMPOSITE_CODES:
        raise ValueError(
            f"codebook_size**depth must be <= {MAX_COMPOSITE_CODES} (composite ids), got "
            f"{codebook_size}**{depth} = {codebook_size**depth}"
        )
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0.0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if not isinstance(ema_decay, (int, float)) or isinstance(ema_decay, bool) or not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be a number in the open interval (0, 1), got {ema_decay!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0.0 < eps < float("inf"):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")

"""Point-to-point transfers between pipeline ranks: every message tagged, every receive posted up front.

A pipeline step sends two kinds of tensors: activations forward (F of stage s → F of stage s+1) and input
gradients backward (B of stage s → B of stage s−1). Each message gets its own tag from (kind, stage,
micro-batch), so a rank can post *all* the receives it will need before its first op (``Mailbox.expect``);
they complete in the background (gloo's threads, or NCCL streams on GPUs), and an op waits only for the
one message it needs (``fetch``). Sends are ``isend``s that never block; ``flush`` waits for them at the end.
Transfers between two stages held by the same rank (DualPipe's turnaround) never touch the network.

``latency`` injects a link delay: a message is not usable until ``latency`` seconds after it was sent
(the sender stamps the time in a companion message).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

_KINDS = {"act": 0, "grad": 1, "act_t": 2, "grad_t": 3}


def tag(kind: str, stage: int, mb: int, S: int, M: int) -> int:
    """A unique tag for message ``kind`` ("act"/"grad", or their "_t" time stamps) of (stage, micro-batch)."""
    return 1 + (_KINDS[kind] * S + stage) * M + mb


class Mailbox:
    """One rank's messages in one pipeline step. ``peer(q)`` maps a pipeline rank to its global rank."""

    def __init__(self, peer, shape: tuple[int, ...], num_stages: int, num_microbatches: int, latency: float = 0.0):
        self.peer, self.shape, self.S, self.M, self.latency = peer, shape, num_stages, num_microbatches, latency
        self.pending: dict[tuple[str, int, int], tuple] = {}  # posted receives
        self.local: dict[tuple[str, int, int], torch.Tensor] = {}  # transfers between two stages of this rank
        self.sends: list = []

    def expect(self, kind: str, stage: int, mb: int, src: int) -> None:
        """Post the receive of message (kind, stage, mb) from pipeline rank ``src``."""
        buf, stamp = torch.empty(self.shape), torch.zeros(1, dtype=torch.float64)
        work = dist.irecv(buf, self.peer(src), tag=tag(kind, stage, mb, self.S, self.M))
        work_t = dist.irecv(stamp, self.peer(src), tag=tag(kind + "_t", stage, mb, self.S, self.M))
        self.pending[(kind, stage, mb)] = (buf, work, stamp, work_t)

    def send(self, kind: str, stage: int, mb: int, tensor: torch.Tensor, dst: int, me: int) -> None:
        """Send to pipeline rank ``dst`` (kept in memory when ``dst`` is this rank, ``me``)."""
        if dst == me:
            self.local[(kind, stage, mb)] = tensor.detach()
            return
        t = tensor.detach().contiguous()
        stamp = torch.tensor([time.time()], dtype=torch.float64)
        self.sends.append((t, stamp, dist.isend(t, self.peer(dst), tag=tag(kind, stage, mb, self.S, self.M)),
                           dist.isend(stamp, self.peer(dst), tag=tag(kind + "_t", stage, mb, self.S, self.M))))

    def fetch(self, kind: str, stage: int, mb: int, waited: list[float]) -> torch.Tensor:
        """The message (kind, stage, mb); the seconds spent waiting for it are added to ``waited[0]``."""
        if (kind, stage, mb) in self.local:
            return self.local.pop((kind, stage, mb))
        t = time.time()
        buf, work, stamp, work_t = self.pending.pop((kind, stage, mb))
        work.wait()
        work_t.wait()
        if self.latency > 0:  # the link delay: usable `latency` after it was sent
            time.sleep(max(0.0, stamp.item() + self.latency - time.time()))
        waited[0] += time.time() - t
        return buf

    def flush(self) -> None:
        """Wait until every send has completed."""
        for _, _, w, w_t in self.sends:
            w.wait()
            w_t.wait()
        self.sends = []


def sum_with(grads: dict, partner: int) -> None:
    """Add a partner rank's gradients of the same parameters (in place; both ranks end bitwise equal)."""
    names = list(grads)
    flat = torch.cat([grads[n].flatten() for n in names])
    other = torch.empty_like(flat)
    works = [dist.isend(flat, partner, tag=999_999), dist.irecv(other, partner, tag=999_999)]
    for w in works:
        w.wait()
    unflatten(flat + other, names, grads)  # fp addition commutes: the same sum on both ranks


def unflatten(flat: torch.Tensor, names: list[str], into: dict) -> None:
    i = 0
    for n in names:
        into[n] = flat[i:i + into[n].numel()].view_as(into[n]).clone()
        i += into[n].numel()
